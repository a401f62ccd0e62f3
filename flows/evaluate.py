"""# masters-evaluate: how good are the student and its teachers?

Before distilling, know the gap. This flow evaluates the configured student and every
teacher of the chain on the held-out split with greedy decoding and the exact-match scorer,
per task type, and logs each to MLflow as a child run of one parent run. It is what
`make run` shows on the embedded default. With `evaluation.suite` set (`masters evaluate
--suite NAME`), every task of that suite file is evaluated with its own scorer instead
(docs/evaluation.md), and a second table gives accuracy and abstain rate per suite task.

With `model_version` (a number, or an alias such as `champion`) the registered student of that
version is downloaded from MLflow and evaluated in place of the configured student; its
overall accuracy is also written back onto the version as a tag
(`masters.eval.<suite or split>.accuracy`), so the registry shows how it did on every suite.
"""

from __future__ import annotations

import tempfile

from prefect import flow, task
from prefect.artifacts import create_table_artifact

from flows.params import EvaluateParams
from masters import registry, suites
from masters.config import from_public
from masters.tracking import Tracker
from tasks.common import flow_run_tags
from tasks.evaluate import evaluate_model


@flow(name="masters-evaluate", log_prints=True)
def evaluate_flow(params: EvaluateParams = EvaluateParams(), config: dict | None = None) -> dict:
    """`config`, a resolved `public_dict()`, replaces the preset when given (CLI, tests)."""
    cfg = from_public(config) if config is not None else params.to_config()
    split = params.split
    if cfg.evaluation.suite:  # a broken suite file fails before any model loads
        suites.load(cfg.evaluation.suite)
    tracker = Tracker(cfg.tracking)
    parent = tracker.start_run(f"evaluate-{split}", tags=flow_run_tags())
    tracker.log_params(parent, {"data": cfg.public_dict()["data"], "split": split,
                                "suite": cfg.evaluation.suite or "",
                                "model_version": params.model_version or ""})
    with tracker.ended(parent):
        with tempfile.TemporaryDirectory(prefix="masters-eval-") as tmp:
            if params.model_version:
                version, path = fetch_version(cfg.public_dict(), params.model_version, tmp)
                targets = [(f"version:{version}", str(path), cfg.student.trust_remote_code,
                            None)]  # the registered student carries its processor settings
            else:
                version = None
                targets = [("student", cfg.student.path, cfg.student.trust_remote_code,
                            cfg.student.processor)]
            if params.teachers:
                targets += [(f"teacher:{t.name}", t.path, t.trust_remote_code, t.processor,
                             t.spread()) for t in cfg.teachers]
            public = cfg.public_dict()
            results = [evaluate_model(public, label, path, trc, split, parent, proc, *spread)
                       for label, path, trc, proc, *spread in targets]
        if version is not None:
            key = f"masters.eval.{cfg.evaluation.suite or split}.accuracy"
            tracker.client.set_model_version_tag(cfg.tracking.registered_model, version, key,
                                                 repr(float(results[0]["accuracy"])))
        table = format_table(results)
        tracker.log_text(parent, table, "accuracy.md")
        if any("suite_tasks" in r for r in results):
            by_task = format_suite_table(results)
            tracker.log_text(parent, by_task, "suite.md")
            table += "\n\n" + by_task
    tasks_ = sorted({k for r in results for k in r["per_task"]})
    create_table_artifact(
        key="accuracy",
        table=[{"model": r["label"], "params": r["params"], "accuracy": round(r["accuracy"], 4),
                **{k: round(r["per_task"].get(k, float("nan")), 4) for k in tasks_}}
               for r in results],
        description=f"accuracy on the {split} split",
    )
    return {"results": results, "table": table, "mlflow_run_id": parent}


@task(name="fetch-model-version")
def fetch_version(cfg_json: dict, ref: str, dst: str) -> tuple[str, str]:
    """Resolve a version number or alias and download that student's checkpoint."""
    cfg = from_public(cfg_json)
    client = Tracker(cfg.tracking).client
    name = cfg.tracking.registered_model
    version = registry.resolve_version(client, name, ref)
    return version, str(registry.download_student(client, name, version, dst))


def format_table(results: list[dict]) -> str:
    """Markdown table: one row per model, one column per task type."""
    task_types = sorted({k for r in results for k in r["per_task"]})
    head = ["model", "params", "all", *task_types]
    rows = [
        [r["label"], f"{r['params']:,}", f"{r['accuracy']:.3f}",
         *[f"{r['per_task'][k]:.3f}" if k in r["per_task"] else "-" for k in task_types]]
        for r in results
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), sep, *[line(r) for r in rows]])


def format_suite_table(results: list[dict]) -> str:
    """Markdown table: one row per model, accuracy (abstain rate) per suite task."""
    names = list(dict.fromkeys(k for r in results for k in r.get("suite_tasks", {})))
    lines = ["| model | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for r in results:
        cells = [f"{t['accuracy']:.3f} ({t['abstain_rate']:.0%} abstain)" if t else "-"
                 for t in (r.get("suite_tasks", {}).get(n) for n in names)]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
