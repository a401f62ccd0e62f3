"""Prefect task: supervised bootstrap of one embedded model, tracked in MLflow."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from masters import bootstrap
from masters.config import from_public
from masters.tracking import BufferedMetrics, Tracker
from tasks.common import flow_run_tags


@task(name="bootstrap-model", retries=0)
def bootstrap_model(
    cfg_json: dict, name: str, parent_run_id: str | None, progress: bool = True
) -> dict:
    """Train `name` from scratch, ship it as fp16 safetensors, return its manifest.

    Takes the config as JSON and returns paths and numbers only: Prefect tasks pass
    manifests, never models (they would break cache keys and memory).
    """
    logger = get_run_logger()
    cfg = from_public(cfg_json)
    bcfg = cfg.bootstrap
    m = bcfg.models[name]
    spec = bootstrap.BootstrapSpec(
        shape=m.shape,
        steps=m.steps,
        batch_size=m.batch_size,
        lr=m.lr,
        warmup=m.warmup,
        aux_fraction=m.aux_fraction,
        eval_every=m.eval_every,
        stop_at=m.stop_at,
        threads=m.threads,
        eval_size=bcfg.eval_size,
        seed=m.seed,
        data_seed=cfg.data.seed,
    )
    tracker = Tracker(cfg.tracking)
    run_id = tracker.start_run(
        f"bootstrap-{name}", parent_run_id=parent_run_id, tags=flow_run_tags()
    )
    tracker.log_params(run_id, {"model": name, **spec.__dict__})
    with tracker.ended(run_id):
        out = Path(bcfg.out_dir)
        metrics = BufferedMetrics(tracker, run_id)
        result = bootstrap.train(
            spec, out / f"{name}.state", log_metrics=metrics, progress=progress,
            device=cfg.device,
        )
        metrics.flush()
        record = bootstrap.finalize(result, spec, out / name, bcfg.test_size)
        tracker.log_metrics(
            run_id,
            {
                "test/accuracy": record["test_accuracy"],
                **{f"test/accuracy/{k}": v for k, v in record["test_accuracy_per_task"].items()},
                "params": record["params"],
                "wall_seconds": record["wall_seconds"],
            },
        )
        tracker.log_dict(run_id, record, "bootstrap_record.json")
        tracker.set_tags(run_id, {"checkpoint": str((out / name).resolve())})
        logger.info(
            "bootstrap %s: %d params, test accuracy %.3f in %.0f s -> %s",
            name, record["params"], record["test_accuracy"], record["wall_seconds"], out / name,
        )
        create_markdown_artifact(
            key=f"bootstrap-{name}".replace("_", "-").lower(),
            markdown=_record_markdown(name, record),
            description=f"bootstrap of {name}",
        )
        return {
            "name": name,
            "path": str((out / name).resolve()),
            "params": record["params"],
            "test_accuracy": record["test_accuracy"],
            "test_accuracy_per_task": record["test_accuracy_per_task"],
            "wall_seconds": record["wall_seconds"],
            "mlflow_run_id": run_id,
        }


def _record_markdown(name: str, record: dict) -> str:
    rows = "\n".join(
        f"| {k} | {v:.3f} |" for k, v in sorted(record["test_accuracy_per_task"].items())
    )
    return (
        f"# Bootstrap of `{name}`\n\n{record['params']:,} parameters, "
        f"{record['spec']['steps']} steps, {record['wall_seconds']:.0f} s\n\n"
        f"| task | test accuracy |\n|---|---|\n{rows}\n| **all** | "
        f"**{record['test_accuracy']:.3f}** |\n"
    )
