"""masters-prune: fingerprints, per-ratio masks (exactly round(r * n) zeroed) and the sweep in
MLflow; nothing written to the cache."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from conftest import save_smoke_models
from mlflow import MlflowClient

from flows import cli
from flows.prune import prune_flow
from masters import models
from masters.config import load_config

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


def test_prune_flow_fingerprints_masks_and_sweeps(prefect_api, tmp_path, teachers):
    cfg = _cfg(tmp_path, teachers)
    out = prune_flow(cfg.public_dict(), sweep=["big"])
    by = {m["teacher"]: m for m in out["teachers"]}
    assert set(by) == {"small", "big"}
    for name, m in by.items():
        loaded, _ = models.load(teachers[name])
        assert m["fingerprint"] == models.fingerprint(loaded)
        assert {0.0, 0.2, 0.5} <= set(m["ratios"])  # staircase + sweep ratios
    assert by["small"]["fingerprint"] != by["big"]["fingerprint"]
    assert set(by["big"]["ratios"]) >= {0.0, 0.05, 0.1, 0.15, 0.2}
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())

    (sweep,) = out["sweeps"]
    assert [r["ratio"] for r in sweep["rows"]] == [0.0, 0.2, 0.5]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("masters-smoke").experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    assert {"prune", "prune-small", "prune-big", "mask-sweep-big"} <= set(by_name)
    prune_big = by_name["prune-big"].info.run_id
    artifacts = {a.path for a in client.list_artifacts(prune_big)}
    assert {"sparsity_by_tensor.json", "thresholds_by_tensor.png"} <= artifacts
    table = json.loads(Path(client.download_artifacts(prune_big, "sparsity_by_tensor.json",
                                                      str(tmp_path))).read_text())
    rows = [dict(zip(table["columns"], r, strict=True)) for r in table["data"]]
    for row in rows:  # exactly round(r * n) zeroed (the smoke weights hold no exact zeros)
        assert row["zeroed"] == round(row["ratio"] * row["numel"]), row
    overall = client.get_metric_history(prune_big, "sparsity_overall")
    assert [h.step for h in overall] == sorted(round(r * 100) for r in by["big"]["ratios"])
    history = client.get_metric_history(by_name["mask-sweep-big"].info.run_id, "test/accuracy")
    assert [h.step for h in history] == [0, 20, 50]
    sweep_artifacts = {a.path for a in client.list_artifacts(by_name["mask-sweep-big"].info.run_id)}
    assert "accuracy_vs_ratio.png" in sweep_artifacts


def test_scope_change_masks_more_tensors(prefect_api, tmp_path, teachers):
    a = prune_flow(_cfg(tmp_path, teachers).public_dict())["teachers"]
    b = prune_flow(_cfg(tmp_path, teachers, "masking.include_lm_head=true").public_dict())
    b = b["teachers"]
    assert a[0]["fingerprint"] == b[0]["fingerprint"]
    assert b[0]["tensors"] == a[0]["tensors"] + 1


def test_unknown_sweep_teacher_fails_before_work(prefect_api, tmp_path, teachers):
    cfg = _cfg(tmp_path, teachers)
    with pytest.raises(ValueError, match="cannot sweep unknown teacher"):
        prune_flow(cfg.public_dict(), sweep=["nope"])
    assert not (tmp_path / "mlflow.db").exists()  # no run was started


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
