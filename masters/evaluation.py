"""Held-out accuracy of any image-text-to-text model, overall and per task type."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from masters import distributed, inputs, rewards
from masters.rewards import DEFAULT_SCORER


@dataclass
class EvalResult:
    accuracy: float
    per_task: dict[str, float]
    n: int
    predictions: list[str] = field(default_factory=list, repr=False)

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        out = {f"{prefix}accuracy": self.accuracy}
        out.update({f"{prefix}accuracy/{k}": v for k, v in sorted(self.per_task.items())})
        return out


def evaluate_arrays(
    model,
    processor,
    images: Sequence[np.ndarray],
    questions: Sequence[str],
    answers: Sequence[str],
    task_types: Sequence[str],
    *,
    batch_size: int = 64,
    max_new_tokens: int = 12,
    progress: bool = False,
    scorer: str = DEFAULT_SCORER,
    scorer_kwargs: dict | None = None,
) -> ScoredResult:
    """Greedy-decode every question and score it with `scorer` (the accuracy reward's rule:
    one definition of a correct answer for rewards, evaluation and the registry gate)."""
    preds = predict_arrays(model, processor, images, questions, batch_size=batch_size,
                           max_new_tokens=max_new_tokens, progress=progress)
    return score_predictions(preds, answers, task_types, scorer, **(scorer_kwargs or {}))


def dataset_images(dataset) -> list[np.ndarray]:
    """The image column as RGB uint8 arrays, what the model-input code takes."""
    return [np.asarray(img.convert("RGB")) for img in dataset["image"]]


def dataset_arrays(dataset) -> tuple[list, list, list, list]:
    """(images, questions, answers, task_types) of a canonical dataset, for evaluate_arrays."""
    task_types = dataset["task_type"] if "task_type" in dataset.column_names else ["all"] * len(
        dataset
    )
    return dataset_images(dataset), dataset["question"], dataset["answer"], task_types


def evaluate_dataset(model, processor, dataset, **kwargs) -> EvalResult:
    """Evaluate on a `datasets.Dataset` with columns image, question, answer, task_type."""
    with distributed.inference(model):
        return evaluate_arrays(model, processor, *dataset_arrays(dataset), **kwargs)


def retention(student_accuracy: float, teacher_accuracy: float) -> float | None:
    """Share of the teacher's accuracy the student keeps (None when the teacher scores 0)."""
    return student_accuracy / teacher_accuracy if teacher_accuracy > 0 else None


def summary_metrics(results: Sequence[dict], split: str = "test") -> dict[str, float]:
    """Flow-level metrics from per-model results labelled distilled, student, teacher:<name>.

    Retention is against the largest teacher (by parameters): the model the chain distils.
    """
    by = {r["label"]: r for r in results}
    out: dict[str, float] = {}
    distilled, initial = by.get("distilled"), by.get("student")
    if distilled:
        out[f"{split}/accuracy"] = distilled["accuracy"]
        out.update({f"{split}/accuracy/{k}": v for k, v in sorted(distilled["per_task"].items())})
    if initial:
        out[f"{split}/accuracy_initial_student"] = initial["accuracy"]
    if distilled and initial:
        out[f"{split}/gain"] = distilled["accuracy"] - initial["accuracy"]
    teachers = [r for r in results if r["label"].startswith("teacher:")]
    for t in teachers:
        out[f"{split}/accuracy_teacher/{t['label'].split(':', 1)[1]}"] = t["accuracy"]
    if teachers:
        largest = max(teachers, key=lambda r: r.get("params", 0))
        for label, r in (("", distilled), ("_initial_student", initial)):
            kept = retention(r["accuracy"], largest["accuracy"]) if r else None
            if kept is not None:
                out[f"{split}/retention{label}"] = kept
    return out


def predict_arrays(model, processor, images: Sequence[np.ndarray], questions: Sequence[str], *,
                   batch_size: int = 64, max_new_tokens: int = 16,
                   progress: bool = False) -> list[str]:
    """Greedy answers only: suites score them with their own scorer."""
    preds: list[str] = []
    was_training = model.training
    model.eval()
    try:
        with distributed.inference(model):
            for start in tqdm(range(0, len(questions), batch_size), desc="evaluate",
                              disable=not progress, leave=False):
                sl = slice(start, start + batch_size)
                preds += inputs.greedy_answers(model, processor, images[sl], questions[sl],
                                               max_new_tokens)
    finally:
        if was_training:
            model.train()
    return preds


@dataclass
class ScoredResult(EvalResult):
    """EvalResult of a rule-based scorer: abstentions (None) count as wrong, and are reported."""

    abstain_rate: float = 0.0

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        return {**super().as_metrics(prefix), f"{prefix}abstain_rate": self.abstain_rate}


def score_predictions(preds: Sequence[str], answers: Sequence[str], task_types: Sequence[str],
                      scorer: str = DEFAULT_SCORER, **scorer_kwargs) -> ScoredResult:
    """Accuracy of predictions under any scorer of masters.rewards (partial credit kept)."""
    scores = rewards.get_scorer(scorer)(list(preds), list(answers), **scorer_kwargs)
    by_type: dict[str, list[float]] = defaultdict(list)
    for s, t in zip(scores, task_types, strict=True):
        by_type[t].append(0.0 if s is None else float(s))
    n = len(scores)
    return ScoredResult(
        accuracy=float(np.mean([v for vs in by_type.values() for v in vs])) if n else 0.0,
        per_task={k: float(np.mean(v)) for k, v in by_type.items()},
        n=n, predictions=list(preds),
        abstain_rate=sum(s is None for s in scores) / n if n else 0.0,
    )
