"""# masters-bootstrap: make the embedded teachers and the initial student

Real runs start from real checkpoints (a 14B and a 38B teacher, an 8B student). The embedded
default cannot download any, so it trains its own tiny LLaVA-style models on the synthetic
grid-scene VQA data, once, and ships them in `masters/checkpoints/`. This flow reproduces
them from scratch:

1. every model in `bootstrap.models` (student, mid, large by default) is trained with plain
   supervised next-token loss on the synthetic train split;
2. each is saved as fp16 safetensors, reloaded through the Auto classes and scored on the
   test split, and the numbers are written next to it (`bootstrap_record.json`);
3. everything is tracked in MLflow: one parent run, one child run per model with the
   per-step loss and validation accuracy curves.

Run it with `masters bootstrap` (all models) or `masters bootstrap --only student`.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.params import BootstrapParams
from masters.config import from_public
from masters.tracking import Tracker
from tasks.bootstrap import bootstrap_model
from tasks.common import flow_run_tags


@flow(name="masters-bootstrap", log_prints=True)
def bootstrap_flow(
    params: BootstrapParams = BootstrapParams(), config: dict | None = None,
    progress: bool = False,
) -> list[dict]:
    """`config`, a resolved `public_dict()`, replaces the preset when given (CLI, tests)."""
    cfg = from_public(config) if config is not None else params.to_config()
    names = params.only or list(cfg.bootstrap.models)
    unknown = sorted(set(names) - set(cfg.bootstrap.models))
    if unknown:
        raise ValueError(
            f"unknown bootstrap model(s) {unknown}; configured: {sorted(cfg.bootstrap.models)}"
        )
    tracker = Tracker(cfg.tracking)
    parent = tracker.start_run("bootstrap", tags=flow_run_tags())
    tracker.log_params(parent, {"bootstrap": cfg.public_dict()["bootstrap"], "models": names})
    with tracker.ended(parent):
        manifests = [
            bootstrap_model(cfg.public_dict(), name, parent, progress) for name in names
        ]
        for m in manifests:
            tracker.log_metrics(parent, {f"{m['name']}/test_accuracy": m["test_accuracy"]})
    logger = get_run_logger()
    for m in manifests:
        logger.info("%s: %.3f test accuracy at %s", m["name"], m["test_accuracy"], m["path"])
    return manifests
