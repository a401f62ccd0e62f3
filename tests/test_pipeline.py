"""masters.pipeline: the stage's masked teacher is the one its answers are keyed by."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import save_smoke_models

from masters import models, pipeline
from masters.config import load_config
from masters.schedule import Stage

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


def _cfg(path):
    return load_config(SMOKE, [f"teachers=[{{name: t, path: {path}, r_max: 0.1}}]"])


def test_stage_teacher_refuses_weights_not_matching_the_keys(tmp_path):
    path = save_smoke_models(tmp_path, {"teacher": 2})["teacher"]
    cfg = _cfg(path)
    held = pipeline.StageTeacher()
    with pytest.raises(ValueError, match=r"teacher t at .* changed since it was fingerprinted "
                                         r"\(0000, now [0-9a-f]{16}\); re-run the flow"):
        held.get(cfg, Stage(0, "t", str(path), 0.1, 0, 4), fingerprint="0000")
    assert held._held is None  # nothing masked is kept for a later stage


def test_stage_teacher_grows_its_mask_and_reloads_to_go_lower(tmp_path, monkeypatch):
    path = save_smoke_models(tmp_path, {"teacher": 2})["teacher"]
    cfg = _cfg(path)
    loads = []
    real = models.load
    monkeypatch.setattr(models, "load", lambda *a, **k: loads.append(1) or real(*a, **k))
    held = pipeline.StageTeacher()
    zeros = []
    for ratio in (0.0, 0.05, 0.1, 0.05):
        teacher, fp = held.get(cfg, Stage(0, "t", str(path), ratio, 0, 4))
        zeros.append(sum(int((p == 0).sum()) for p in teacher.model.parameters()))
    assert len(loads) == 2  # once up the staircase, once more to go back down
    assert zeros[0] < zeros[1] < zeros[2] and zeros[3] == zeros[1]
    fresh, _ = real(path, **models.inference_placement(cfg))  # as the stage loads it
    assert fp == models.fingerprint(fresh)


def test_label_groups_train_on_the_reference_answer_text_when_there_is_one():
    from masters import embedded, synthetic

    _, processor = embedded.build("smoke", seed=0)
    tok = processor.tokenizer
    split = synthetic.build_split(0, "train", 4)
    stage = Stage(index=0, teacher="t", teacher_path="unused", ratio=0.0, start=1, stop=3)
    groups = pipeline.label_groups(split, stage, tok)
    refs = [synthetic.make_sample(0, "train", i) for i in (1, 2)]
    assert [g.question_id for g in groups] == [s.id for s in refs]
    assert [g.answers[0] for g in groups] == [
        tok(s.response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        for s in refs]
    # A dataset with short labels only (a VQA set): the baseline trains on the label.
    plain = pipeline.label_groups(split.remove_columns("response"), stage, tok)
    assert [g.answers[0] for g in plain] == [
        tok(s.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for s in refs]
