"""Prefect tasks: build the evaluation split, evaluate one model on it."""

from __future__ import annotations

from prefect import get_run_logger, task

from masters import data, evaluation, models, suites
from masters.config import from_public
from masters.tracking import Tracker
from tasks.common import PERSIST, flow_run_tags


# log_prints off: building the split may print through dill (see tasks.generate).
@task(name="evaluate-model", log_prints=False, **PERSIST)
def evaluate_model(
    cfg_json: dict, label: str, model_path: str, trust_remote_code: bool,
    split: str, parent_run_id: str | None, processor_kwargs: dict | None = None,
    spread: dict | None = None,
) -> dict:
    """Greedy-decode the split (or every task of the configured suite) with one model; log and
    return its accuracy by task type. With a suite, `split` only prefixes the metric names, so
    the promotion gate (test/accuracy) reads the suite's overall accuracy. `spread`: a
    teacher's `ModelRef.spread()` (device_map / max_memory)."""
    logger = get_run_logger()
    cfg = from_public(cfg_json)
    suite = suites.load(cfg.evaluation.suite) if cfg.evaluation.suite else None
    dataset = None if suite else data.load_split(cfg.data, split)  # bad data fails before load
    model, processor = models.load(model_path, trust_remote_code=trust_remote_code,
                                   processor_kwargs=processor_kwargs,
                                   **models.inference_placement(cfg), **(spread or {}))
    opts = {"batch_size": cfg.evaluation.batch_size,
            "max_new_tokens": cfg.evaluation.max_new_tokens, "progress": True}
    if suite:
        result = suites.evaluate(model, processor, suite, **opts)
        per_type = result.per_type
        by_task = {k: {"accuracy": r.accuracy, "abstain_rate": r.abstain_rate, "n": r.n,
                       "per_task": r.per_task} for k, r in result.tasks.items()}
    else:
        result = evaluation.evaluate_dataset(model, processor, dataset, **opts,
                                             **cfg.eval_scorer())
        per_type, by_task = result.per_task, None
    params = sum(p.numel() for p in model.parameters())
    tracker = Tracker(cfg.tracking)
    run_id = tracker.start_run(f"evaluate-{label}", parent_run_id=parent_run_id,
                               tags={**flow_run_tags(), "model_path": model_path})
    with tracker.ended(run_id):
        tracker.log_params(run_id, {"label": label, "model_path": model_path, "split": split,
                                    "suite": suite.name if suite else "",
                                    "fingerprint": models.fingerprint(model)})
        tracker.log_metrics(run_id, {**result.as_metrics(f"{split}/"), "params": params})
    logger.info("%s on %s: accuracy %.3f (n=%d)", label, suite.name if suite else split,
                result.accuracy, result.n)
    out = {"label": label, "path": model_path, "accuracy": result.accuracy,
           "per_task": per_type, "n": result.n, "params": params}
    if by_task is not None:
        out.update(suite=suite.name, suite_tasks=by_task)
    return out
