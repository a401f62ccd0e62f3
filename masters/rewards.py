"""Rewards (method.md section 3): accuracy scorers, the judge, the distillation reward, advantages.

Scorers follow TRL's reward-function shape: `scorer(answers, references, **kwargs)` returns
`list[float | None]`, None meaning "cannot decide" (an abstention, never a guess).
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Sequence

import torch

from masters.config import DEFAULT_SCORER  # noqa: F401 - the scorers' default, re-exported
from masters.losses import TeacherTargets, bucketed_jsd, masked_mean

Score = float | None
Scorer = Callable[..., list[Score]]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
NUMBER_WORDS = {
    w: i for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen "
        "fourteen fifteen sixteen seventeen eighteen nineteen twenty".split())
}


def normalize_text(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (the VQA normalisation)."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return " ".join(text.split())


def exact_match(answers: Sequence[str], references: Sequence[str], **_) -> list[Score]:
    out: list[Score] = []
    for a, r in zip(answers, references, strict=True):
        ref = normalize_text(r)
        out.append(None if not ref else float(normalize_text(a) == ref))
    return out


_NUM = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?%?|[-+]?\.\d+%?")


def parse_number(text: str, words: bool = True) -> float | None:
    """The single number in `text` ("5", "5.0", "1,200", "12%", "five"); None if 0 or 2+."""
    found = [m.group() for m in _NUM.finditer(text)]
    if words:
        found += [str(NUMBER_WORDS[w]) for w in normalize_text(text).split() if w in NUMBER_WORDS]
    values = {float(f.rstrip("%").replace(",", "")) for f in found}
    return values.pop() if len(values) == 1 else None


def numeric_match(
    answers: Sequence[str], references: Sequence[str], *, tolerance: float = 0.0,
    words: bool = True, **_,
) -> list[Score]:
    """1 when the answer's number is within `tolerance` (relative) of the reference's."""
    out: list[Score] = []
    for a, r in zip(answers, references, strict=True):
        ref = parse_number(r, words)
        if ref is None:
            out.append(None)
            continue
        got = parse_number(a, words)
        if got is None:
            out.append(0.0)
            continue
        out.append(float(abs(got - ref) <= tolerance * abs(ref) if ref else got == 0))
    return out


def relaxed_accuracy(answers, references, **kw) -> list[Score]:
    """ChartQA's relaxed accuracy: numbers within 5%, other answers by exact match."""
    out: list[Score] = []
    for a, r, num in zip(answers, references, numeric_match(answers, references,
                                                            tolerance=0.05, words=False),
                         strict=True):
        out.append(num if num is not None else exact_match([a], [r])[0])
    return out


_YES = {"yes", "true", "y", "correct"}
_NO = {"no", "false", "n", "incorrect"}


def _yes_no(text: str) -> str | None:
    words = normalize_text(text).split()
    hits = {("yes" if w in _YES else "no") for w in words if w in _YES | _NO}
    return hits.pop() if len(hits) == 1 else None


def yes_no(answers: Sequence[str], references: Sequence[str], **_) -> list[Score]:
    out: list[Score] = []
    for a, r in zip(answers, references, strict=True):
        ref = _yes_no(r)
        if ref is None:
            out.append(None)
            continue
        got = _yes_no(a)
        out.append(0.0 if got is None else float(got == ref))
    return out


def _word_number(word: str) -> float | None:
    if word in NUMBER_WORDS:
        return float(NUMBER_WORDS[word])
    return float(word) if re.fullmatch(r"\d+(?:\.\d+)?", word) else None


def phrase_match(answers: Sequence[str], references: Sequence[str], **_) -> list[Score]:
    """A short label read out of a phrase or sentence (both normalised as for exact_match).

    A yes/no label is decided by the answer's first yes/no word ("no , there is none"), a
    number label by its first number ("there are 5 objects"), any other label by whether its
    words appear as a whole-word run in the answer ("the object at b3 is red" for "red").
    A one-word answer scores as exact_match would.
    """
    out: list[Score] = []
    for a, r in zip(answers, references, strict=True):
        ref, words = normalize_text(r), normalize_text(a).split()
        if not ref:
            out.append(None)
        elif ref in _YES | _NO:
            first = next((w for w in words if w in _YES | _NO), None)
            out.append(float(first is not None and (first in _YES) == (ref in _YES)))
        elif _word_number(ref) is not None:
            first = next((v for v in map(_word_number, words) if v is not None), None)
            out.append(float(first == _word_number(ref)))
        else:
            out.append(float(f" {ref} " in f" {' '.join(words)} "))
    return out


_LETTER = re.compile(r"(?:^|[\s(\[])([A-Za-z])(?:[).:\]]|\s|$)")
_ANSWER_IS = re.compile(r"answer\s*(?:is|:)\s*\(?([A-Za-z])\b", re.IGNORECASE)


def _choice_letter(text: str, choices: Sequence[str] | None) -> str | None:
    text = text.strip()
    m = _ANSWER_IS.search(text)
    if m:
        return m.group(1).upper()
    letters = {c.upper() for c in _LETTER.findall(text)
               if choices is None or ord(c.upper()) - 65 < len(choices)}
    if len(letters) == 1:
        return letters.pop()
    if choices:
        norm = normalize_text(text)
        hits = [chr(65 + i) for i, c in enumerate(choices) if normalize_text(c) == norm]
        if len(hits) == 1:
            return hits[0]
    return None


def multiple_choice(
    answers: Sequence[str], references: Sequence[str], *,
    choices: Sequence[Sequence[str]] | None = None, **_,
) -> list[Score]:
    """Option letter ("B", "(B)", "The answer is B.") or the option's text; ties abstain."""
    out: list[Score] = []
    for i, (a, r) in enumerate(zip(answers, references, strict=True)):
        opts = choices[i] if choices is not None else None
        ref = _choice_letter(r, opts)
        if ref is None:
            out.append(None)
            continue
        got = _choice_letter(a, opts)
        out.append(0.0 if got is None else float(got == ref))
    return out


def _levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def anls(answers: Sequence[str], references: Sequence[str], *, threshold: float = 0.5,
         **_) -> list[Score]:
    """DocVQA's ANLS per answer: 1 - normalised edit distance, 0 below the threshold."""
    out: list[Score] = []
    for a, r in zip(answers, references, strict=True):
        ref = " ".join(r.lower().split())
        if not ref:
            out.append(None)
            continue
        got = " ".join(a.lower().split())
        nl = _levenshtein(got, ref) / max(len(got), len(ref))
        out.append(1 - nl if nl < threshold else 0.0)
    return out


SCORERS: dict[str, Scorer] = {
    "exact_match": exact_match,
    "phrase_match": phrase_match,
    "numeric": numeric_match,
    "yes_no": yes_no,
    "multiple_choice": multiple_choice,
    "relaxed": relaxed_accuracy,
    "anls": anls,
}


def get_scorer(name: str) -> Scorer:
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; rule-based scorers: {sorted(SCORERS)}")
    return SCORERS[name]


# ---- distillation reward and advantages --------------------------------------------------


def distillation_divergence(
    teacher: TeacherTargets, student_logits: torch.Tensor, answer_mask: torch.Tensor,
    beta: float = 0.5,
) -> torch.Tensor:
    """D per answer: mean over its answer tokens of JSD(teacher || student), shape (batch,),
    on the cached teacher's buckets (exact with the whole vocabulary; losses.TeacherTargets)."""
    return masked_mean(bucketed_jsd(teacher, student_logits, beta), answer_mask)


# Divergences within this fraction of the group's largest one are a tie. Min-max maps any
# spread, however small, onto [0, 1]: answers that share a prompt have the same teacher-forced
# JSD at their first token, so one-word answers differ only at the EOS position, by ~1e-6
# nats, and an exact `==` turned that into rewards of 0 and 1 as large as R_acc (measured on
# the embedded task, groups with two or more distinct answers: spread / max below 3e-4 in 90%
# of them; the few above 1e-3 hold answers of different lengths; docs/benchmarks.md).
MINMAX_RTOL = 1e-3


def reverse_min_max(values: Sequence[float], rtol: float = MINMAX_RTOL) -> list[float]:
    """Within one group: (max - v) / (max - min); the easiest answer to transfer gets 1.

    A group whose values are all equal, up to `rtol` of the largest magnitude, carries no
    preference: every answer gets 0.
    """
    hi, lo = max(values), min(values)
    if hi - lo <= rtol * max(abs(hi), abs(lo)):
        return [0.0] * len(values)
    return [(hi - v) / (hi - lo) for v in values]


def total_reward(accuracy: Sequence[Score], distill: Sequence[float]) -> list[float]:
    """R = R_acc + R_distill (unweighted, as in the paper); an abstention counts as 0."""
    return [(a or 0.0) + d for a, d in zip(accuracy, distill, strict=True)]


def group_advantages(rewards: Sequence[float], eps: float = 1e-4) -> list[float]:
    """GRPO advantage within one question's group: (R - mean) / (std + eps).

    std is the sample standard deviation (n - 1), as TRL's GRPO computes it; a group of one
    answer has std 0.
    """
    n = len(rewards)
    mean = sum(rewards) / n
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (n - 1)) if n > 1 else 0.0
    return [(r - mean) / (std + eps) for r in rewards]
