"""# masters-distill: distil the teacher chain into the student, end to end

This flow is the Masters method (docs/method.md) as a pipeline. Each step is a Prefect task
that reads and writes the cache (local folder or S3) and reports to one MLflow parent run;
steps pass cache keys and paths, never models.

1. **Mask the teachers** (`prune_teacher`): one threshold table per teacher, so a masked
   teacher at any ratio can be materialised in place without storing a copy.
2. **Generate** (`masters-generate` subflow): for every stage (teacher, ratio, slice of the
   training questions) the masked teacher answers each question 4 times and the student 4
   times. Cached and resumable: a re-run generates only what is missing.
3. **Score** (`score_stage`): the accuracy reward of every answer (rule-based scorer or LLM
   judge), cached beside the answers.
4. **Train** (`train_student`): stage by stage, GRPO with ratio 1 + beta KL + JSD against
   the masked teacher of the stage, whose one forward pass also gives the distillation
   reward. A checkpoint per stage; a killed run resumes after the last finished stage.
5. **Evaluate** (`evaluate_model`): the distilled student, the initial student and every
   teacher on the held-out split.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.evaluate import format_table
from flows.generate import generate_flow
from masters.config import from_public
from masters.tracking import Tracker
from tasks.common import flow_run_tags
from tasks.evaluate import evaluate_model
from tasks.generate import fingerprint_model
from tasks.prune import prune_teacher
from tasks.score import score_stage
from tasks.train import train_student


@flow(name="masters-distill", log_prints=True)
def distill_flow(config: dict | None = None, progress: bool = False) -> dict:
    cfg = from_public(config)
    public = cfg.public_dict()
    logger = get_run_logger()
    tracker = Tracker(cfg.tracking)
    parent = tracker.start_run(f"distill-{cfg.run_name}", tags=flow_run_tags())
    status = "FAILED"
    try:
        tracker.log_params(parent, public)
        tables, manifests, scores = [], [], []
        if cfg.training.objective == "masters":  # the supervised baseline needs none of 1-3
            # 1. Masked teachers: tables and fingerprints.
            tables = [prune_teacher(public, t.name, parent) for t in cfg.teachers]
            student_fp = fingerprint_model(cfg.student.path, cfg.student.trust_remote_code)
            # 2. Answers for every stage.
            manifests = generate_flow(public, tables=tables, student_fingerprint=student_fp,
                                      progress=progress)
            # 3. Accuracy rewards.
            scores = [score_stage(public, m, parent) for m in manifests]
        # 4. One training run over all stages.
        trained = train_student(public, manifests, scores, tables, parent)
        # 5. Held-out accuracy: distilled vs initial student vs teachers.
        targets = [("distilled", trained["student_path"], cfg.student.trust_remote_code),
                   ("student", cfg.student.path, cfg.student.trust_remote_code)]
        targets += [(f"teacher:{t.name}", t.path, t.trust_remote_code) for t in cfg.teachers]
        results = [evaluate_model(public, label, path, trc, "test", parent)
                   for label, path, trc in targets]
        table = format_table(results)
        by = {r["label"]: r for r in results}
        gain = by["distilled"]["accuracy"] - by["student"]["accuracy"]
        tracker.log_metrics(parent, {"test/accuracy": by["distilled"]["accuracy"],
                                     "test/accuracy_initial_student": by["student"]["accuracy"],
                                     "test/gain": gain})
        tracker.log_text(parent, table, "accuracy.md")
        logger.info("held-out accuracy:\n%s", table)
        status = "FINISHED"
    finally:
        tracker.end_run(parent, status)
    return {"table": table, "results": results, "trained": trained, "manifests": manifests,
            "scores": scores, "tables": tables, "mlflow_run_id": parent}
