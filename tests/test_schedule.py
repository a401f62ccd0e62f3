"""The stage schedule: each teacher's staircase r_max..0 in chain order, one data slice each."""

from __future__ import annotations

import dataclasses
import math

import pytest

from masters.config import TeacherConfig
from masters.schedule import Stage, build_schedule

MID = TeacherConfig(name="mid", path="embedded:mid", r_max=0.2, step=0.05)
LARGE = TeacherConfig(name="large", path="/ckpt/large", r_max=0.3, step=0.1)


def test_two_teacher_chain_runs_each_staircase_in_order():
    stages = build_schedule([MID, LARGE], 100)
    assert [(s.teacher, s.ratio) for s in stages] == [
        ("mid", 0.2), ("mid", 0.15), ("mid", 0.1), ("mid", 0.05), ("mid", 0.0),
        ("large", 0.3), ("large", 0.2), ("large", 0.1), ("large", 0.0),
    ]
    assert [s.index for s in stages] == list(range(9))
    assert {s.teacher: s.teacher_path for s in stages} == {
        "mid": "embedded:mid", "large": "/ckpt/large"
    }


@pytest.mark.parametrize("n_items", [9, 10, 17, 100, 108, 1001])
def test_slices_cover_the_data_contiguously(n_items):
    stages = build_schedule([MID, LARGE], n_items)
    assert stages[0].start == 0 and stages[-1].stop == n_items
    for before, after in zip(stages, stages[1:], strict=False):
        assert before.stop == after.start
    sizes = [s.size for s in stages]
    assert sum(sizes) == n_items and min(sizes) >= 1
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)  # the first slices take the extra items


def test_uneven_split_gives_the_extra_items_to_the_first_stages():
    sizes = [s.size for s in build_schedule([MID, LARGE], 22)]
    assert sizes == [3, 3, 3, 3, 2, 2, 2, 2, 2]


def test_unmasked_teacher_is_one_stage():
    plain = TeacherConfig(name="plain", path="p", r_max=0.0)
    assert build_schedule([plain], 5) == [Stage(0, "plain", "p", 0.0, 0, 5)]


def test_too_few_items_is_an_error():
    with pytest.raises(ValueError, match="8 data items cannot fill 9 stages"):
        build_schedule([MID, LARGE], 8)


def test_no_teachers_or_duplicate_names_are_errors():
    with pytest.raises(ValueError, match="at least one teacher"):
        build_schedule([], 10)
    with pytest.raises(ValueError, match="unique"):
        build_schedule([MID, MID], 100)


def test_stage_is_frozen():
    stage = build_schedule([MID], 5)[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        stage.ratio = 0.0


def test_lr_at_matches_the_formula():
    from masters.schedule import lr_at

    assert [lr_at(i, 10, 2.0) for i in (0, 5, 9)] == [2.0, 2.0, 2.0]
    assert [lr_at(i, 10, 2.0, warmup=4) for i in range(4)] == [0.5, 1.0, 1.5, 2.0]
    for i in range(4, 12):
        p = min(1.0, (i - 4) / 6)
        want = 2.0 * (0.1 + 0.9 * (1 + math.cos(math.pi * p)) / 2)
        assert lr_at(i, 10, 2.0, warmup=4, decay="cosine") == pytest.approx(want)
    assert lr_at(10, 10, 2.0, warmup=4, decay="cosine") == pytest.approx(0.2)
    with pytest.raises(ValueError, match="linear"):
        lr_at(5, 10, 1.0, decay="linear")
