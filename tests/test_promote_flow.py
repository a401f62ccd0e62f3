"""masters-distill registers and promotes; a failed step registers nothing; masters-promote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import smoke_distill_overrides
from mlflow import MlflowClient

import tasks.evaluate as evaluate_tasks
import tasks.train as train_tasks
from flows.cli import main as cli
from flows.distill import distill_flow
from flows.params import PromoteParams
from flows.promote import promote_flow
from masters import registry
from masters.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


@pytest.fixture
def overrides(tmp_path, checkpoints):
    # Random smoke models: whether a distilled one beats the initial is chance, so the first
    # version is champion by rule here; the gate itself is tested below and in test_registry.
    return [*smoke_distill_overrides(tmp_path, checkpoints),
            "tracking.registered_model=smoke-student", "promotion.first_must_beat_initial=false"]


def _versions(client, name):
    return sorted(str(mv.version) for mv in client.search_model_versions(f"name = '{name}'"))


def test_distill_registers_failures_do_not_and_promote_flow(prefect_api, tmp_path,
                                                            overrides, monkeypatch):
    cfg = load_config(SMOKE, overrides)
    name = cfg.tracking.registered_model
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")

    out = distill_flow(config=cfg.public_dict())
    reg = out["registered"]
    assert reg["version"] == "1" and reg["decision"]["decision"] == "champion"
    assert registry.champion_version(client, name) == "1"
    tags = client.get_model_version(name, "1").tags
    distilled = next(r for r in out["results"] if r["label"] == "distilled")
    assert float(tags["metrics.test/accuracy"]) == distilled["accuracy"]
    assert json.loads(tags["masters.teachers"]) == ["t"]
    assert tags["masters.teacher.t.r_max"] == "0.05"
    assert json.loads(tags["masters.schedule"]) == [["t", 0.05, 4], ["t", 0.0, 4]]
    assert json.loads(tags["masters.cache.manifests"]) == [m["manifest_uri"]
                                                          for m in out["manifests"]]
    assert tags["prefect.flow_run_id"] and tags["masters.git_sha"]
    assert tags["masters.train_run_id"] == out["trained"]["mlflow_run_id"]
    assert reg["metrics"]["test/accuracy_teacher/t"] == next(
        r["accuracy"] for r in out["results"] if r["label"] == "teacher:t")
    assert "Retention" in out["report"] and "models:/smoke-student/1" in out["report"]

    # A failed training or evaluation step: the flow fails, nothing new is registered.
    def broken(*args, **kwargs):
        raise RuntimeError("injected failure")

    for module, attr in ((train_tasks, "run_training"),
                         (evaluate_tasks.evaluation, "evaluate_dataset")):
        with monkeypatch.context() as m:
            m.setattr(module, attr, broken)
            with pytest.raises(RuntimeError, match="injected failure"):
                distill_flow(config=cfg.public_dict())
        assert _versions(client, name) == ["1"]
        assert registry.champion_version(client, name) == "1"

    # By hand: a worse version 2 fails the gate, is made champion anyway, then rolled back.
    worse = client.create_model_version(name, source=client.get_model_version(name, "1").source,
                                        tags={"metrics.test/accuracy": "-1.0"})
    public = cfg.public_dict()
    gated = promote_flow(PromoteParams(version=worse.version, gated=True), config=public)
    assert gated["champion"] == "1"
    manual = promote_flow(PromoteParams(version=worse.version), config=public)
    assert manual == {"name": name, "champion": "2", "previous": "1",
                      "reason": "version 2 set by hand"}
    flags = [a for o in overrides for a in ("--set", o)]
    assert cli(["promote", "--rollback", "--config", str(SMOKE), *flags]) == 0
    assert registry.champion_version(client, name) == "1"
    assert cli(["promote", "--rollback", "--config", str(SMOKE), *flags]) == 1  # nothing left

    # Re-evaluate the champion from the registry: downloaded, evaluated, tagged on the version.
    from flows.evaluate import evaluate_flow
    from flows.params import EvaluateParams

    again = evaluate_flow(EvaluateParams(model_version="champion", teachers=False),
                          config=cfg.public_dict())
    [res] = again["results"]
    assert res["label"] == "version:1" and res["accuracy"] == distilled["accuracy"]
    assert float(client.get_model_version(name, "1").tags["masters.eval.test.accuracy"]) == (
        res["accuracy"])
    with pytest.raises(ValueError, match="no version with alias 'nonesuch'"):
        evaluate_flow(EvaluateParams(model_version="nonesuch"), config=cfg.public_dict())
