"""Prefect tasks: per-teacher threshold tables (the masked teachers) and the mask sweep."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from masters import bootstrap, cache, data, evaluation, mask_sweep, models, plots
from masters.config import from_public
from masters.masking import MaskScope, ThresholdTable, compute_thresholds
from masters.tracking import Tracker
from tasks.common import PERSIST, TRANSIENT_RETRIES, flow_run_tags, retry_transient


def _teacher(cfg, name: str):
    for t in cfg.teachers:
        if t.name == name:
            return t
    raise ValueError(f"no teacher named {name!r}; configured: {[t.name for t in cfg.teachers]}")


def table_key(fingerprint: str, ratios: list[float], scope: MaskScope) -> str:
    """Content address of a table: same weights + ratios + scope -> same table."""
    parts = {"fingerprint": fingerprint, "ratios": ratios, "scope": scope.__dict__}
    return cache.content_key("tables", parts, ".json")


@task(name="prune-teacher", retries=TRANSIENT_RETRIES, retry_condition_fn=retry_transient,
      **PERSIST)
def prune_teacher(cfg_json: dict, teacher: str, parent_run_id: str | None) -> dict:
    """Compute (or find in the cache) the threshold table of one teacher; log its sparsity."""
    logger = get_run_logger()
    cfg = from_public(cfg_json)
    t = _teacher(cfg, teacher)
    scope = MaskScope(cfg.masking.include_embeddings, cfg.masking.include_lm_head)
    ratios = sorted(set(t.ratios()) | set(cfg.masking.sweep_ratios))
    # In the dtype generation and training will hold it in: the table's fingerprint is of those
    # bytes. On the CPU: thresholds need no accelerator.
    model, _ = models.load(t.path, trust_remote_code=t.trust_remote_code,
                           dtype=models.inference_placement(cfg)["dtype"])
    fp = models.fingerprint(model)
    store = cache.open_store(cfg.storage)
    key = table_key(fp, ratios, scope)
    cached = cache.get_json_or_none(store, key)
    if cached is not None:
        logger.info("threshold table of %s found in the cache: %s", teacher, store.uri(key))
        table = ThresholdTable.from_dict(cached)
    else:
        table = compute_thresholds(model, ratios, scope)
        cache.put_json(store, key, table.to_dict())
        logger.info("threshold table of %s (%d tensors, %d ratios) -> %s",
                    teacher, len(table.tensors), len(ratios), store.uri(key))
    tracker = Tracker(cfg.tracking)
    run_id = tracker.start_run(f"prune-{teacher}", parent_run_id=parent_run_id,
                               tags={**flow_run_tags(), "teacher_fingerprint": fp})
    with tracker.ended(run_id):
        tracker.log_params(run_id, {"teacher": teacher, "path": t.path, "fingerprint": fp,
                                    "ratios": ratios, "scope": scope.__dict__,
                                    "table_uri": store.uri(key)})
        rows = [{"tensor": name, "numel": tm.numel, "ratio": r,
                 "zeroed": max(tm.k[i], tm.zeros), "sparsity": table.sparsity(name, r),
                 "threshold": tm.thresholds[i]}
                for name, tm in table.tensors.items() for i, r in enumerate(table.ratios)]
        tracker.log_table(run_id, rows, "sparsity_by_tensor.json")
        masked = sum(tm.numel for tm in table.tensors.values())
        total = sum(p.numel() for p in model.parameters())
        tracker.log_metrics(run_id, {"masked_fraction_of_params": masked / total})
        for r in table.ratios:
            zeroed = sum(max(tm.k[table.index(r)], tm.zeros) for tm in table.tensors.values())
            tracker.log_metrics(run_id, {"sparsity_overall": zeroed / total},
                                step=round(r * 100))
        fig = plots.thresholds_by_tensor(table, f"{teacher}: per-tensor magnitude thresholds")
        tracker.log_figure(run_id, fig, "thresholds_by_tensor.png")
        plots.close(fig)
    return {"teacher": teacher, "path": t.path, "fingerprint": fp, "key": key,
            "table_uri": store.uri(key), "ratios": ratios, "tensors": len(table.tensors)}


@task(name="mask-sweep")
def sweep_teacher(cfg_json: dict, manifest: dict, parent_run_id: str | None) -> dict:
    """Test accuracy of one teacher at every sweep ratio; a plot and a table in MLflow."""
    cfg = from_public(cfg_json)
    t = _teacher(cfg, manifest["teacher"])
    model, processor = models.load(t.path, trust_remote_code=t.trust_remote_code,
                                   **models.inference_placement(cfg))
    table = ThresholdTable.from_dict(cache.get_json(cache.open_store(cfg.storage),
                                                    manifest["key"]))
    eval_data = bootstrap.eval_arrays(cfg.data.seed, "test", cfg.data.test_size) \
        if cfg.data.source == "synthetic" else evaluation.dataset_arrays(
            data.load_split(cfg.data, "test"))
    rows = mask_sweep.accuracy_vs_ratio(
        model, processor, table, cfg.masking.sweep_ratios, eval_data,
        batch_size=cfg.evaluation.batch_size, max_new_tokens=cfg.evaluation.max_new_tokens)
    text = mask_sweep.format_rows(rows)
    tracker = Tracker(cfg.tracking)
    run_id = tracker.start_run(f"mask-sweep-{t.name}", parent_run_id=parent_run_id,
                               tags=flow_run_tags())
    with tracker.ended(run_id):
        tracker.log_params(run_id, {"teacher": t.name, "ratios": cfg.masking.sweep_ratios,
                                    "table_uri": manifest["table_uri"]})
        for row in rows:
            tracker.log_metrics(run_id, {"test/accuracy": row["accuracy"],
                                         **{f"test/accuracy/{k}": v
                                            for k, v in row["per_task"].items()}},
                                step=round(row["ratio"] * 100))
        fig = plots.accuracy_vs_ratio(rows, f"teacher {t.name}: accuracy vs mask ratio")
        tracker.log_figure(run_id, fig, "accuracy_vs_ratio.png")
        plots.close(fig)
        tracker.log_text(run_id, text, "accuracy_vs_ratio.md")
    create_markdown_artifact(key=f"mask-sweep-{t.name}".lower().replace("_", "-"),
                             markdown=f"# Mask sweep of `{t.name}`\n\n{text}\n")
    return {"teacher": t.name, "rows": rows, "table": text}

