"""The training loop on smoke models: stage order, ratios applied, resume, NaN handling."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from masters import embedded, models, synthetic, training
from masters.config import TeacherConfig, TrainingConfig
from masters.masking import MaskedTeacher, compute_thresholds
from masters.schedule import build_schedule


def _groups(processor, n=6, g=4, seed=0):
    rng = np.random.default_rng(seed)
    tok = processor.tokenizer
    words = synthetic.vocabulary()
    out = []
    for i in range(n):
        s = synthetic.make_sample(0, "train", i)
        answers = [tok.convert_tokens_to_ids([words[j] for j in rng.integers(0, len(words), 2)])
                   + [tok.eos_token_id] for _ in range(g)]
        answers[0] = tok.convert_tokens_to_ids([s.answer]) + [tok.eos_token_id]
        acc = [1.0] + [float(rng.integers(0, 2)) for _ in range(g - 1)]
        out.append(training.Group(s.id, s.image, s.question, answers, acc))
    return out


@pytest.fixture
def family():
    torch.manual_seed(0)
    student, processor = embedded.build("smoke", seed=1)
    teacher, _ = embedded.build("smoke", seed=2)
    return student, teacher.eval(), processor


def _run(student, teacher, processor, tmp_path, cfg, stop_after=None):
    tcfg = TeacherConfig(name="t", path="unused", r_max=0.1, step=0.05)
    stages = build_schedule([tcfg], 6)
    table = compute_thresholds(teacher, tcfg.ratios())
    masked = MaskedTeacher(teacher, table)
    groups = _groups(processor)
    applied = []

    def stage_teacher(stage):
        if stop_after is not None and stage.index > stop_after:
            raise KeyboardInterrupt("killed")
        masked.set_ratio(stage.ratio)
        zeros = sum(int((p == 0).sum()) for p in teacher.parameters())
        applied.append((stage.index, stage.ratio, zeros))
        return teacher

    logged = []
    trainer = training.MastersTrainer(student, processor, cfg,
                                      log_metrics=lambda m, s: logged.append((s, m)))
    out = training.train(trainer, stages, lambda st: groups[st.start:st.stop], stage_teacher,
                         tmp_path / "ckpt")
    masked.restore()
    return out, applied, logged


def test_stages_run_in_order_with_their_ratios(family, tmp_path):
    student, teacher, processor = family
    cfg = TrainingConfig(lr=1e-3, batch_groups=1, seed=3)
    original = models.fingerprint(teacher)
    out, applied, logged = _run(student, teacher, processor, tmp_path, cfg)
    assert [(i, r) for i, r, _ in applied] == [(0, 0.1), (1, 0.05), (2, 0.0)]
    zeros = [z for _, _, z in applied]
    assert zeros[0] > zeros[1] > zeros[2]  # restored step by step
    assert models.fingerprint(teacher) == original
    assert [m["mask_ratio"] for _, m in logged] == [0.1, 0.1, 0.05, 0.05, 0.0, 0.0]
    assert all(np.isfinite(m["loss/loss"]) for _, m in logged)
    assert {"loss/grpo", "loss/kl", "loss/jsd", "reward/accuracy", "reward/distill"} <= set(
        logged[0][1])
    assert out["steps"] == 6 and len(out["stages"]) == 3


def test_resume_after_a_crash_ends_with_the_same_weights(family, tmp_path):
    student, teacher, processor = family
    cfg = TrainingConfig(lr=1e-3, batch_groups=2, seed=5)
    ref_student = copy.deepcopy(student)
    _run(ref_student, copy.deepcopy(teacher), processor, tmp_path / "a", cfg)

    crashed = copy.deepcopy(student)
    with pytest.raises(KeyboardInterrupt):
        _run(crashed, copy.deepcopy(teacher), processor, tmp_path / "b", cfg, stop_after=0)
    assert training.last_checkpoint(tmp_path / "b" / "ckpt").name == "stage-000"
    fresh = copy.deepcopy(student)  # a new process starts from the initial student
    out, applied, _ = _run(fresh, copy.deepcopy(teacher), processor, tmp_path / "b", cfg)
    assert out["resumed_after"] == 0 and [i for i, _, _ in applied] == [1, 2]
    for (n, a), (_, b) in zip(ref_student.state_dict().items(), fresh.state_dict().items(),
                              strict=True):
        assert torch.equal(a, b), n


def test_student_is_never_masked_and_teacher_gets_no_grad(family, tmp_path):
    student, teacher, processor = family
    zeros_before = sum(int((p == 0).sum()) for p in student.parameters())
    _run(student, teacher, processor, tmp_path, TrainingConfig(lr=1e-3, batch_groups=3))
    assert sum(int((p == 0).sum()) for p in student.parameters()) <= zeros_before
    assert all(p.grad is None for p in teacher.parameters())


def test_non_finite_loss_stops_with_a_clear_error(family, tmp_path):
    student, teacher, processor = family
    with torch.no_grad():
        next(student.parameters()).fill_(float("nan"))
    with pytest.raises(training.TrainingError, match=r"non-finite loss .*\(stage 0"):
        _run(student, teacher, processor, tmp_path, TrainingConfig(lr=1e-3))
    assert training.last_checkpoint(tmp_path / "ckpt") is None


def test_incompatible_tokenizers_are_refused(family):
    _, _, processor = family
    other = embedded.build_processor()
    other.tokenizer.add_tokens(["zebra"])
    with pytest.raises(training.TrainingError, match="tokenizers differ"):
        training.shared_vocab(processor, other)
