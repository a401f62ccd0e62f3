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
6. **Register and promote** (`register_and_promote`): the distilled student becomes a new
   version of the registered model, tagged with its lineage and metrics; it takes the alias
   `challenger`, and `champion` only if it beats the current champion on the gate metric
   (docs/registry.md). Reached only when every step before it succeeded.

Evaluation results also go to Prefect as a table artifact and to MLflow as a grouped bar chart
(`plots/accuracy_by_task.png`); the train run holds the loss and reward curves.
The run ends with a markdown report in Prefect (and in MLflow as `report.md`): teacher,
student before and after, retention, the promotion decision, and where to find it all.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.evaluate import format_table
from flows.generate import generate_flow
from flows.params import DistillParams, flow_run_namer
from masters import evaluation, models, plots
from masters.config import from_public
from masters.tracking import Tracker
from tasks.check import check_inputs
from tasks.common import flow_run_tags
from tasks.evaluate import evaluate_model
from tasks.generate import fingerprint_model
from tasks.prune import prune_teacher
from tasks.register import register_and_promote
from tasks.score import score_stage
from tasks.train import train_student


@flow(name="masters-distill", flow_run_name=flow_run_namer("distill"), log_prints=True)
def distill_flow(params: DistillParams = DistillParams(), config: dict | None = None,
                 progress: bool = False) -> dict:
    """`params` is the deployment's form (a preset + typed settings); `config`, a resolved
    `public_dict()`, takes its place when given (the CLI and tests resolve their own)."""
    cfg = from_public(config) if config is not None else params.to_config()
    public = cfg.public_dict()
    logger = get_run_logger()
    tracker = Tracker(cfg.tracking)
    parent = tracker.start_run(f"distill-{cfg.run_name}", tags=flow_run_tags())
    with tracker.ended(parent):
        tracker.log_params(parent, public)
        # 0. Storage, checkpoints and data checked before any work (docs/reliability.md).
        check_inputs(public)
        teachers, manifests, scores = [], [], []
        if cfg.training.objective == "masters":  # the supervised baseline needs none of 1-3
            # 1. Masked teachers: fingerprints and mask reports.
            teachers = [prune_teacher(public, t.name, parent) for t in cfg.teachers]
            student_fp = fingerprint_model(cfg.student.path, cfg.student.trust_remote_code,
                                           models.dtype_name(cfg))
            # 2. Answers for every stage.
            manifests = generate_flow(public, teachers=teachers, student_fingerprint=student_fp,
                                      progress=progress)
            # 3. Accuracy rewards.
            scores = [score_stage(public, m, parent) for m in manifests]
            fig = plots.accuracy_by_stage(scores)
            tracker.log_figure(parent, fig, "plots/accuracy_by_stage.png")
            plots.close(fig)
        # 4. One training run over all stages.
        trained = train_student(public, manifests, scores, teachers, parent, progress=progress)
        # 5. Held-out accuracy: distilled vs initial student vs teachers.
        # The distilled student's folder holds its processor as configured (saved with it).
        targets = [("distilled", trained["student_path"], cfg.student.trust_remote_code, None),
                   ("student", cfg.student.path, cfg.student.trust_remote_code,
                    cfg.student.processor)]
        targets += [(f"teacher:{t.name}", t.path, t.trust_remote_code, t.processor, t.spread())
                    for t in cfg.teachers]
        results = [evaluate_model(public, label, path, trc, "test", parent, proc, *spread)
                   for label, path, trc, proc, *spread in targets]
        table = format_table(results)
        tracker.log_metrics(parent, evaluation.summary_metrics(results))
        tracker.log_text(parent, table, "accuracy.md")
        log_evaluation_artifacts(tracker, parent, results)
        logger.info("held-out accuracy:\n%s", table)
        # 6. A new registry version; challenger always, champion only through the gate.
        registered = None
        if cfg.promotion.register:
            registered = register_and_promote(public, trained, results, manifests, teachers,
                                              parent)
        report = report_markdown(cfg, results, registered, parent, tracker)
        tracker.log_text(parent, report, "report.md")
        create_markdown_artifact(key="distill-report", markdown=report,
                                 description=f"masters-distill {cfg.run_name}")
    return {"table": table, "results": results, "trained": trained, "manifests": manifests,
            "scores": scores, "teachers": teachers, "mlflow_run_id": parent,
            "registered": registered, "report": report}


def log_evaluation_artifacts(tracker, run_id: str, results: list[dict]) -> None:
    """The evaluation for a human: a Prefect table and a bar chart per model and task type."""
    types = sorted({k for r in results for k in r["per_task"]})
    create_table_artifact(
        key="distill-accuracy",
        table=[{"model": r["label"], "params": r["params"], "accuracy": round(r["accuracy"], 4),
                **{k: round(r["per_task"].get(k, float("nan")), 4) for k in types}}
               for r in results],
        description="held-out accuracy of every model, overall and per task type")
    fig = plots.accuracy_by_model(results, "held-out accuracy by task type")
    tracker.log_figure(run_id, fig, "plots/accuracy_by_task.png")
    plots.close(fig)


def report_markdown(cfg, results: list[dict], registered: dict | None, run_id: str,
                    tracker) -> str:
    """What a human wants after a run: how good, how much was kept, and what was promoted."""
    m = evaluation.summary_metrics(results)
    by = {r["label"]: r for r in results}
    teachers = [r for r in results if r["label"].startswith("teacher:")]
    largest = max(teachers, key=lambda r: r["params"]) if teachers else None
    rows = [(r["label"], r["params"], r["accuracy"]) for r in
            [*teachers, by.get("student"), by.get("distilled")] if r]
    lines = [f"# masters-distill: {cfg.run_name}", "",
             "| model | params | test accuracy |", "|---|---:|---:|",
             *[f"| {label} | {params:,} | {acc:.3f} |" for label, params, acc in rows], ""]
    if largest is not None:
        def fmt(key):  # absent when the teacher scores 0: a ratio would mean nothing
            return f"{m[key]:.3f}" if key in m else "n/a"

        lines.append(f"**Retention** (distilled / {largest['label']}): "
                     f"{fmt('test/retention')} (initial student: "
                     f"{fmt('test/retention_initial_student')})")
    if "test/gain" in m:
        lines.append(f"**Gain** over the initial student: {m['test/gain']:+.3f}")
    lines.append("")
    uri = tracker.tracking_uri
    web = uri.startswith(("http://", "https://"))  # a sqlite store has no page to link to
    lines.append(f"- MLflow run: `{run_id}` in experiment `{cfg.tracking.experiment}`" + (
        f" ({uri}/#/experiments/{tracker.experiment_id}/runs/{run_id})" if web else ""))
    if registered is None:
        lines.append("- Registry: not registered (`promotion.register` is off)")
    else:
        d = registered["decision"]
        link = (f" ({uri}/#/models/{registered['name']}/versions/"
                f"{registered['version']})" if web else "")
        lines += [f"- Model version: `{registered['model_uri']}`{link}",
                  f"- Promotion: **{d['decision']}** — {d['reason']}"]
    return "\n".join(lines) + "\n"
