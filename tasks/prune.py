"""Prefect tasks: mask each teacher (fingerprint and per-ratio report) and the mask sweep."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from masters import bootstrap, data, evaluation, mask_sweep, models, pipeline, plots
from masters.config import from_public
from masters.masking import MaskedTeacher
from masters.tracking import Tracker
from tasks.common import PERSIST, flow_run_tags


def _teacher(cfg, name: str):
    for t in cfg.teachers:
        if t.name == name:
            return t
    raise ValueError(f"no teacher named {name!r}; configured: {[t.name for t in cfg.teachers]}")


@task(name="prune-teacher", **PERSIST)
def prune_teacher(cfg_json: dict, teacher: str, parent_run_id: str | None) -> dict:
    """Fingerprint one teacher and mask it through its ratios; log what each ratio zeroes.

    Nothing is stored: generation masks the teacher again where it runs. The fingerprint
    (of the weights in the dtype generation holds them in) goes into every shard key.
    """
    cfg = from_public(cfg_json)
    t = _teacher(cfg, teacher)
    scope = pipeline.mask_scope(cfg)
    ratios = sorted(set(t.ratios()) | set(cfg.masking.sweep_ratios) | {0.0})
    model, _ = models.load_ref(t, **models.inference_placement(cfg))
    fp = models.fingerprint(model)
    masked = MaskedTeacher(model, scope)
    by_ratio = {r: masked.set_ratio(r) for r in ratios}  # increasing: masks only grow
    total = sum(p.numel() for p in model.parameters())
    get_run_logger().info("teacher %s (%s): %d tensors masked at %d ratios", teacher, fp,
                          len(masked.tensors), len(ratios))
    tracker = Tracker(cfg.tracking)
    run_id = tracker.start_run(f"prune-{teacher}", parent_run_id=parent_run_id,
                               tags={**flow_run_tags(), "teacher_fingerprint": fp})
    with tracker.ended(run_id):
        tracker.log_params(run_id, {"teacher": teacher, "path": t.path, "fingerprint": fp,
                                    "ratios": ratios, "scope": scope.__dict__})
        rows = [{"tensor": name, "numel": m.numel, "ratio": r, "zeroed": m.zeros,
                 "sparsity": m.zeros / m.numel, "threshold": m.threshold}
                for r, stats in by_ratio.items() for name, m in stats.items()]
        tracker.log_table(run_id, rows, "sparsity_by_tensor.json")
        tracker.log_metrics(run_id, {"masked_fraction_of_params":
                                     sum(m.numel for m in masked.stats.values()) / total})
        for r, stats in by_ratio.items():
            tracker.log_metrics(run_id, {"sparsity_overall": sum(
                m.zeros for m in stats.values()) / total}, step=round(r * 100))
        fig = plots.thresholds_by_tensor(by_ratio, f"{teacher}: per-tensor magnitude thresholds")
        tracker.log_figure(run_id, fig, "thresholds_by_tensor.png")
        plots.close(fig)
    return {"teacher": teacher, "path": t.path, "fingerprint": fp, "ratios": ratios,
            "tensors": len(masked.tensors), "skipped": masked.skipped}


@task(name="mask-sweep")
def sweep_teacher(cfg_json: dict, manifest: dict, parent_run_id: str | None) -> dict:
    """Test accuracy of one teacher at every sweep ratio; a plot and a table in MLflow."""
    cfg = from_public(cfg_json)
    t = _teacher(cfg, manifest["teacher"])
    model, processor = models.load_ref(t, **models.inference_placement(cfg))
    scope = pipeline.mask_scope(cfg)
    eval_data = bootstrap.eval_arrays(cfg.data.seed, "test", cfg.data.test_size) \
        if cfg.data.source == "synthetic" else evaluation.dataset_arrays(
            data.load_split(cfg.data, "test"))
    rows = mask_sweep.accuracy_vs_ratio(
        model, processor, scope, cfg.masking.sweep_ratios, eval_data,
        batch_size=cfg.evaluation.batch_size, max_new_tokens=cfg.evaluation.max_new_tokens,
        **cfg.eval_scorer())
    text = mask_sweep.format_rows(rows)
    tracker = Tracker(cfg.tracking)
    run_id = tracker.start_run(f"mask-sweep-{t.name}", parent_run_id=parent_run_id,
                               tags=flow_run_tags())
    with tracker.ended(run_id):
        tracker.log_params(run_id, {"teacher": t.name, "ratios": cfg.masking.sweep_ratios,
                                    "fingerprint": manifest["fingerprint"]})
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

