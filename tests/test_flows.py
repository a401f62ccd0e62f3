"""Flows run through Prefect (a real temporary API) and leave MLflow records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from flows import cli
from flows.bootstrap import bootstrap_flow
from flows.evaluate import evaluate_flow
from flows.params import BootstrapParams
from masters.config import load_config
from masters.tracking import Tracker

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def smoke_cfg(smoke_overrides):
    return load_config(ROOT / "configs" / "smoke.yaml", smoke_overrides)


def test_bootstrap_flow_trains_ships_and_tracks(prefect_api, smoke_cfg, tmp_path):
    manifests = bootstrap_flow(config=smoke_cfg.public_dict(), progress=False)
    assert [m["name"] for m in manifests] == ["student", "large"]
    for m in manifests:
        path = Path(m["path"])
        assert path == tmp_path / "bootstrap" / m["name"]
        assert (path / "model.safetensors").is_file()
        record = json.loads((path / "bootstrap_record.json").read_text())
        assert record["test_accuracy"] == m["test_accuracy"]
        assert record["test_size"] == 28
        assert sum(record["test_accuracy_per_task"].values()) >= 0
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("masters-smoke")
    runs = client.search_runs([exp.experiment_id])
    names = sorted(r.info.run_name for r in runs)
    assert names == ["bootstrap", "bootstrap-large", "bootstrap-student"]
    child = next(r for r in runs if r.info.run_name == "bootstrap-large")
    parent = next(r for r in runs if r.info.run_name == "bootstrap")
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert "prefect.flow_run_id" in child.data.tags
    loss = client.get_metric_history(child.info.run_id, "train/loss")
    assert [m.step for m in loss] == list(range(1, 9))
    assert "test/accuracy" in child.data.metrics
    assert child.data.params["steps"] == "8"
    assert (tmp_path / "mlartifacts").is_dir()


def test_evaluate_flow_prints_per_family_table(prefect_api, smoke_cfg, tmp_path):
    bootstrap_flow(BootstrapParams(only=["student"]), config=smoke_cfg.public_dict())
    student = tmp_path / "bootstrap" / "student"
    cfg = load_config(ROOT / "configs" / "smoke.yaml", [
        f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"tracking.artifact_location={tmp_path / 'mlartifacts'}",
        f"student.path={student}",
        f"teachers=[{{name: t, path: {student}}}]",
    ])
    summary = evaluate_flow(config=cfg.public_dict())
    labels = [r["label"] for r in summary["results"]]
    assert labels == ["student", "teacher:t"]
    assert summary["results"][0]["accuracy"] == summary["results"][1]["accuracy"]
    header = summary["table"].splitlines()[0]
    for family in ("count", "color", "where", "compare"):
        assert family in header
    record = json.loads((student / "bootstrap_record.json").read_text())
    assert summary["results"][0]["accuracy"] == pytest.approx(record["test_accuracy"])


def test_cli_bootstrap_rejects_unknown_model(prefect_api, smoke_overrides):
    with pytest.raises(Exception, match="unknown bootstrap model"):
        cli.main(["bootstrap", "--config", str(ROOT / "configs/smoke.yaml"), "--only", "huge",
                  *sum((["--set", o] for o in smoke_overrides), [])])


def test_default_tracking_is_project_local_sqlite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = Tracker(load_config().tracking)
    run = tracker.start_run("probe")
    tracker.log_metrics(run, {"x": 1.0})
    tracker.log_text(run, "hello", "note.txt")
    tracker.end_run(run)
    assert (tmp_path / ".masters" / "mlflow.db").is_file()
    assert list((tmp_path / ".masters" / "mlartifacts").rglob("note.txt"))
