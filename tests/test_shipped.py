"""The embedded checkpoints shipped in masters/checkpoints: loadable, sized, reproducible."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from masters import bootstrap, embedded, evaluation, models

NAMES = ("student", "mid", "large")


def _record(name):
    return json.loads((models.CHECKPOINTS / name / "bootstrap_record.json").read_text())


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_reproduces_its_recorded_accuracy(name):
    record = _record(name)
    model, processor = models.load(f"embedded:{name}")
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    spec = record["spec"]
    result = evaluation.evaluate_arrays(
        model, processor, *bootstrap.eval_arrays(spec["data_seed"], "test", record["test_size"])
    )
    assert result.accuracy == record["test_accuracy"]
    assert result.per_task == record["test_accuracy_per_task"]
    assert embedded.n_params(model) == record["params"]


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_is_fp16_safetensors(name):
    path = models.CHECKPOINTS / name / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        dtypes = {str(f.get_tensor(k).dtype) for k in f.keys()}
    assert dtypes == {"torch.float16"}


def test_family_shape_and_budget():
    records = {n: _record(n) for n in NAMES}
    params = {n: r["params"] for n, r in records.items()}
    assert params["large"] >= 4 * params["student"]
    assert params["student"] < params["mid"] < params["large"]
    total = sum(p.stat().st_size for p in models.CHECKPOINTS.rglob("*") if p.is_file())
    assert total <= 40 * 2**20
    assert 1000 <= records["student"]["spec"]["steps"] <= 1300
