"""masters-prune: tables in the cache (content-addressed, reused), sparsity and sweep in MLflow."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from conftest import save_smoke_models
from mlflow import MlflowClient

import tasks.prune as prune_tasks
from flows import cli
from flows.prune import prune_flow
from masters import cache
from masters.config import load_config
from masters.masking import ThresholdTable

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def teachers(tmp_path):
    return save_smoke_models(tmp_path, {"small": 1, "big": 2})


def _cfg(tmp_path, teachers, *extra):
    return load_config(ROOT / "configs" / "smoke.yaml", [
        f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"tracking.artifact_location={tmp_path / 'mlartifacts'}",
        f"storage.cache_uri={tmp_path / 'cache'}",
        f"teachers=[{{name: small, path: {teachers['small']}, r_max: 0.1}}, "
        f"{{name: big, path: {teachers['big']}, r_max: 0.2}}]",
        "masking.sweep_ratios=[0, 0.2, 0.5]",
        *extra,
    ])


def test_prune_flow_stores_tables_and_sweeps(prefect_api, tmp_path, teachers, monkeypatch):
    cfg = _cfg(tmp_path, teachers)
    out = prune_flow(cfg.public_dict(), sweep=["big"])
    tables = {m["teacher"]: m for m in out["tables"]}
    assert set(tables) == {"small", "big"}
    store = cache.open_store(cfg.storage)
    for m in tables.values():
        table = ThresholdTable.from_dict(cache.get_json(store, m["key"]))
        assert table.fingerprint == m["fingerprint"]
        assert {0.0, 0.2, 0.5} <= set(table.ratios)  # staircase + sweep ratios
    assert tables["small"]["key"] != tables["big"]["key"]
    assert set(tables["big"]["ratios"]) >= {0.0, 0.05, 0.1, 0.15, 0.2}

    (sweep,) = out["sweeps"]
    assert [r["ratio"] for r in sweep["rows"]] == [0.0, 0.2, 0.5]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("masters-smoke").experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    assert {"prune", "prune-small", "prune-big", "mask-sweep-big"} <= set(by_name)
    prune_big = by_name["prune-big"].info.run_id
    artifacts = {a.path for a in client.list_artifacts(prune_big)}
    assert {"sparsity_by_tensor.json", "thresholds_by_tensor.png"} <= artifacts
    rows = json.loads(Path(client.download_artifacts(prune_big, "sparsity_by_tensor.json",
                                                     str(tmp_path))).read_text())
    assert "sparsity" in rows["columns"]
    history = client.get_metric_history(by_name["mask-sweep-big"].info.run_id, "test/accuracy")
    assert [h.step for h in history] == [0, 20, 50]
    sweep_artifacts = {a.path for a in client.list_artifacts(by_name["mask-sweep-big"].info.run_id)}
    assert "accuracy_vs_ratio.png" in sweep_artifacts

    # Same weights, ratios and scope: the second run finds the tables and computes nothing.
    def fail(*a, **k):
        raise AssertionError("threshold table recomputed despite a cache hit")

    monkeypatch.setattr(prune_tasks, "compute_thresholds", fail)
    again = prune_flow(cfg.public_dict())
    assert [m["key"] for m in again["tables"]] == [m["key"] for m in out["tables"]]


def test_scope_change_gives_a_new_table(prefect_api, tmp_path, teachers):
    a = prune_flow(_cfg(tmp_path, teachers).public_dict())["tables"]
    b = prune_flow(_cfg(tmp_path, teachers, "masking.include_lm_head=true").public_dict())["tables"]
    assert a[0]["key"] != b[0]["key"] and a[0]["fingerprint"] == b[0]["fingerprint"]
    assert b[0]["tensors"] == a[0]["tensors"] + 1


def test_corrupt_table_is_recomputed(prefect_api, tmp_path, teachers):
    cfg = _cfg(tmp_path, teachers)
    first = prune_flow(cfg.public_dict())["tables"][0]
    path = tmp_path / "cache" / first["key"]
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0xFF
    path.write_bytes(bytes(blob))
    second = prune_flow(cfg.public_dict())["tables"][0]
    assert second["key"] == first["key"]
    store = cache.open_store(cfg.storage)
    assert ThresholdTable.from_dict(cache.get_json(store, first["key"])).fingerprint == (
        first["fingerprint"])


def test_unknown_sweep_teacher_fails_before_work(prefect_api, tmp_path, teachers):
    cfg = _cfg(tmp_path, teachers)
    with pytest.raises(ValueError, match="cannot sweep unknown teacher"):
        prune_flow(cfg.public_dict(), sweep=["nope"])
    assert not (tmp_path / "cache" / "tables").exists()


def test_cli_mask_sweep_defaults_to_last_teacher(prefect_api, tmp_path, teachers):
    args = ["mask-sweep", "--config", str(ROOT / "configs" / "smoke.yaml")]
    for o in [
        f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"storage.cache_uri={tmp_path / 'cache'}",
        f"teachers=[{{name: only, path: {teachers['big']}}}]",
        "masking.sweep_ratios=[0, 0.1]",
    ]:
        args += ["--set", o]
    # Not capsys: Prefect's console handler would keep capsys's closed stream afterwards.
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli.main(args) == 0
    out = buf.getvalue()
    assert "accuracy of teacher only by mask ratio" in out and "| 0.10 |" in out
