"""Prefect task: register the distilled student in MLflow and gate its promotion."""

from __future__ import annotations

from prefect import get_run_logger, task

from masters import data, evaluation, registry
from masters.config import from_public
from masters.schedule import build_schedule
from masters.tracking import Tracker
from tasks.common import PERSIST, flow_run_tags
from tasks.generate import RESIDENT

# Registry moves are serialised by masters.registry's lock (docs/registry.md); the tag lets a
# Prefect concurrency limit queue them too instead of having them wait on that lock.
REGISTRY_TAG = "masters-registry"


@task(name="register-promote", tags=[REGISTRY_TAG], log_prints=False, **PERSIST)
def register_and_promote(cfg_json: dict, trained: dict, results: list[dict],
                         manifests: list[dict], teachers: list[dict],
                         parent_run_id: str | None) -> dict:
    """A new model version with lineage tags; `challenger`, and `champion` if the gate passes.

    The flow calls this only after training and evaluation returned: a failure before it
    registers nothing and leaves every alias where it was.
    """
    logger = get_run_logger()
    cfg = from_public(cfg_json)
    public = cfg.public_dict()
    metrics = evaluation.summary_metrics(results)
    train_split = RESIDENT.split(cfg.data)  # already resident when training ran here
    test_split = data.load_split(cfg.data, "test")
    schedule = [{"teacher": s.teacher, "ratio": s.ratio, "start": s.start, "stop": s.stop}
                for s in build_schedule(cfg.teachers, len(train_split))]
    run_tags = flow_run_tags()
    lineage = registry.lineage_tags(
        public, schedule=schedule, manifests=manifests, teachers=teachers,
        split_fingerprints={"train": registry.split_fingerprint(train_split),
                            "test": registry.split_fingerprint(test_split)},
        extra={**run_tags, "masters.train_run_id": trained.get("mlflow_run_id"),
               "masters.train_key": trained.get("train_key"),
               "masters.parent_run_id": parent_run_id, "masters.run_name": cfg.run_name})
    name = cfg.tracking.registered_model
    tracker = Tracker(cfg.tracking)
    run_id = tracker.start_run("register", parent_run_id=parent_run_id, tags=run_tags)
    with tracker.ended(run_id):
        tracker.log_dict(run_id, {"lineage": lineage, "metrics": metrics}, "lineage.json")
        version = registry.register_student(
            tracker, run_id, trained["student_path"], name, lineage, metrics,
            model_config={"max_new_tokens": cfg.evaluation.max_new_tokens,
                          "batch_size": cfg.evaluation.batch_size,
                          "trust_remote_code": cfg.student.trust_remote_code,
                          "dtype": cfg.dtype})
        p = cfg.promotion
        baseline = None
        if p.first_must_beat_initial and p.gate_metric.endswith("/accuracy"):
            baseline = metrics.get(p.gate_metric.replace("/accuracy",
                                                         "/accuracy_initial_student"))
        decision = registry.promote(tracker.client, name, version, p.gate_metric, p.margin,
                                    p.greater_is_better, baseline)
        tracker.set_tags(run_id, {"registered_model": name, "model_version": version,
                                  "promotion.decision": decision["decision"]})
    logger.info("registered %s version %s: %s (%s)", name, version, decision["decision"],
                decision["reason"])
    return {"name": name, "version": version, "model_uri": registry.model_uri(name, version),
            "decision": decision, "register_run_id": run_id, "metrics": metrics,
            "tracking_uri": tracker.tracking_uri}
