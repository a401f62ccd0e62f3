"""Prefect tasks: build the evaluation split, evaluate one model on it."""

from __future__ import annotations

from prefect import get_run_logger, task

from masters import data, evaluation, models
from masters.config import from_public
from masters.tracking import Tracker
from tasks.common import flow_run_tags


@task(name="evaluate-model")
def evaluate_model(
    cfg_json: dict, label: str, model_path: str, trust_remote_code: bool,
    split: str, parent_run_id: str | None,
) -> dict:
    """Greedy-decode the split with one model; log and return its accuracy by task type."""
    logger = get_run_logger()
    cfg = from_public(cfg_json)
    dataset = data.load_split(cfg.data, split)
    model, processor = models.load(
        model_path, trust_remote_code=trust_remote_code, device=models.pick_device(cfg.device)
    )
    result = evaluation.evaluate_dataset(
        model, processor, dataset,
        batch_size=cfg.evaluation.batch_size, max_new_tokens=cfg.evaluation.max_new_tokens,
        progress=True,
    )
    tracker = Tracker(cfg.tracking)
    run_id = tracker.start_run(f"evaluate-{label}", parent_run_id=parent_run_id,
                               tags={**flow_run_tags(), "model_path": model_path})
    try:
        tracker.log_params(run_id, {"label": label, "model_path": model_path, "split": split,
                                    "fingerprint": models.fingerprint(model)})
        tracker.log_metrics(run_id, {**result.as_metrics(f"{split}/"),
                                     "params": sum(p.numel() for p in model.parameters())})
    finally:
        tracker.end_run(run_id)
    logger.info("%s on %s: accuracy %.3f (n=%d)", label, split, result.accuracy, result.n)
    return {
        "label": label,
        "path": model_path,
        "accuracy": result.accuracy,
        "per_task": result.per_task,
        "n": result.n,
        "params": sum(p.numel() for p in model.parameters()),
    }
