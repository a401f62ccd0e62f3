"""The GPU benchmark section: the same code run small on the CPU in bf16, and its no-CUDA
report. (The numbers themselves only mean something on a CUDA device.)"""

from __future__ import annotations

import torch

from benchmarks import gpu


def test_gpu_section_runs_its_measurements_in_bf16_on_any_device():
    r = gpu.run(device="cpu", dtype=torch.bfloat16, repeats=1, shape="smoke", train_steps=4,
                gen_questions=4)
    assert r["measured"] and r["dtype"] == "bfloat16" and r["device"] == "cpu"
    g, m, t = r["generation"], r["masking"], r["training"]["cached"]
    assert g["questions"] == 4 and g["batched_answers_per_s"] > 0
    assert g["batched_speedup"] == g["batched_answers_per_s"] / g["single_answers_per_s"]
    assert m["load_plain_s"] > 0 and m["load_masked_s"] > 0
    assert m["load_masked_over_plain"] == m["load_masked_s"] / m["load_plain_s"]
    assert t["steps"] == 4 and t["step_s_median"] > 0
    text = gpu.markdown(r)
    assert "weights in bfloat16" in text and "masked / plain" in text


def test_gpu_section_says_not_measured_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = gpu.run()
    assert r == {"measured": False}
    assert gpu.markdown(r) == "not measured (no CUDA device in this run)"
