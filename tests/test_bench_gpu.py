"""The GPU benchmark section: the same code run small on the CPU in bf16, and its no-CUDA
report. (The numbers themselves only mean something on a CUDA device.)"""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import gpu, gpu_qwen


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


@pytest.mark.parametrize("section", [gpu, gpu_qwen], ids=["gpu", "gpu_qwen"])
def test_gpu_sections_say_not_measured_without_cuda(monkeypatch, section):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = section.run()
    assert r == {"measured": False}
    assert section.markdown(r) == "not measured (no CUDA device in this run)"


def test_real_shape_benchmark_runs_every_step_small_and_writes_as_it_goes(tmp_path):
    """benchmarks.gpu_qwen on the test-sized Qwen2.5-VL pair (CPU): each pipeline step ran on
    the generated data and sits beside its plan estimate; the JSON on disk is the result."""
    sh = gpu_qwen.SHAPES["tiny"]
    r = gpu_qwen.run(device="cpu", shapes="tiny", out=tmp_path)
    assert json.loads((tmp_path / "gpu_qwen.json").read_text()) == json.loads(json.dumps(r))
    assert not (tmp_path / "checkpoints").exists()  # 25 GB at the real shapes
    answers = sh.questions * 8
    g = r["generation"]
    assert g["answers"] == answers and 0 < g["tokens"] <= answers * sh.max_new_tokens
    assert g["answers_per_s"] == answers / g["s"]
    assert r["forcing"]["answers"] == answers
    assert r["masking"]["mask"]["ratios"] == [0.05, 0.1, 0.15, 0.2]
    for key in ("plain", "checkpointing"):
        assert r["training"][key]["steps"] == sh.steps
        assert r["training"][key]["step_s_median"] > 0
    assert r["plan"]["image_tokens"] == 4  # 56 px, patch 14, 2 x 2 merge
    assert set(r["plan"]["train"]) >= {"fp32 DDP/1", "bf16-mixed DDP/1"}
    plain, ckpt = r["plan"]["train"]["fp32 DDP/1"]
    assert ckpt < plain
    text = gpu_qwen.markdown(r)
    assert text.count("\n| ") == 7  # header + 6 measured steps
    assert "with gradient checkpointing" in text and "answers/s" in text


def test_tokenizer_padded_to_a_real_vocabulary_keeps_every_id():
    from masters.embedded import build_tokenizer

    small, big = build_tokenizer(), build_tokenizer(size=500)
    assert len(big) == 500 and len(big.get_vocab()) == 500
    assert all(big.convert_tokens_to_ids(t) == i for t, i in small.get_vocab().items())
    text = "how many objects are there ?"
    assert big(text)["input_ids"] == small(text)["input_ids"]
