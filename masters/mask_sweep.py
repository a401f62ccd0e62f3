"""Accuracy of a masked teacher at each ratio: the teacher-alone version of Table 5(a).

A sanity check before distilling: the staircase only makes sense for ratios at which the
teacher is simpler but still competent (the paper: r_max >= 0.3 hurt most teachers badly).
"""

from __future__ import annotations

from collections.abc import Sequence

from masters import evaluation
from masters.masking import MaskedTeacher, MaskScope


def accuracy_vs_ratio(
    model, processor, scope: MaskScope, ratios: Sequence[float], eval_data, **eval_kwargs
) -> list[dict]:
    """Evaluate `model` at every ratio, ascending: it is masked in place and left masked at
    the largest (reload it for its original weights).

    `eval_data` is (images, questions, answers, task_types) as for `evaluate_arrays`.
    """
    teacher = MaskedTeacher(model, scope)
    rows = []
    for ratio in sorted(ratios):
        teacher.set_ratio(ratio)
        res = evaluation.evaluate_arrays(model, processor, *eval_data, **eval_kwargs)
        rows.append({"ratio": ratio, "accuracy": res.accuracy, "per_task": res.per_task})
    return rows


def format_rows(rows: Sequence[dict]) -> str:
    tasks = sorted({t for r in rows for t in r["per_task"]})
    head = "| ratio | all | " + " | ".join(tasks) + " |"
    sep = "|" + "---|" * (len(tasks) + 2)
    body = [
        f"| {r['ratio']:.2f} | {r['accuracy']:.3f} | "
        + " | ".join(f"{r['per_task'].get(t, float('nan')):.3f}" for t in tasks) + " |"
        for r in rows
    ]
    return "\n".join([head, sep, *body])
