"""The mask-progressive schedule (method.md section 1): which teacher, which ratio, which data;
and the learning-rate schedule over optimizer steps (`lr_at`).

Each teacher of the chain runs its own staircase r_max, r_max - step, ..., 0 before the next
(larger) teacher starts [P]. The training data is cut into consecutive near-equal slices, one per
stage, in stage order [D]; when the items do not divide evenly the first slices take one extra.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from masters.config import TeacherConfig


@dataclass(frozen=True)
class Stage:
    index: int
    teacher: str
    teacher_path: str
    ratio: float
    start: int  # data slice [start, stop)
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def build_schedule(teachers: Sequence[TeacherConfig], n_items: int) -> list[Stage]:
    if not teachers:
        raise ValueError("the schedule needs at least one teacher")
    names = [t.name for t in teachers]
    if len(set(names)) != len(names):
        raise ValueError(f"teacher names must be unique, got {names}")
    steps = [(t, r) for t in teachers for r in t.ratios()]
    if n_items < len(steps):
        raise ValueError(
            f"{n_items} data items cannot fill {len(steps)} stages (teachers {names}); every "
            "stage needs at least one item"
        )
    base, extra = divmod(n_items, len(steps))
    stages, start = [], 0
    for i, (teacher, ratio) in enumerate(steps):
        stop = start + base + (1 if i < extra else 0)
        stages.append(Stage(i, teacher.name, teacher.path, ratio, start, stop))
        start = stop
    return stages


def generation_order(stages: Sequence[Stage]) -> list[Stage]:
    """The stages as generation visits them: teacher by teacher, ratios increasing.

    A stage's answers do not depend on when it is generated, and masks only grow
    (`masters.masking`), so each teacher is loaded once and never restored.
    """
    first = {}
    for s in stages:
        first.setdefault(s.teacher, s.index)
    return sorted(stages, key=lambda s: (first[s.teacher], s.ratio))


def lr_at(step: int, total: int, base: float, warmup: int = 0, decay: str = "constant",
          floor: float = 0.1) -> float:
    """Learning rate of optimizer step `step` (0-based) of `total`.

    lr = base * (step + 1) / warmup                              for step < warmup
    lr = base                                                    decay = "constant"
    lr = base * (floor + (1 - floor) * (1 + cos(pi * p)) / 2)    decay = "cosine",
         p = (step - warmup) / (total - warmup), capped at 1
    """
    if step < warmup:
        return base * (step + 1) / warmup
    if decay == "constant":
        return base
    if decay != "cosine":
        raise ValueError(f"unknown learning-rate decay {decay!r}; use constant or cosine")
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
