"""Accuracy rewards for generated shards: which scorer, which labels, which cache key."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from masters import cache, judge, rewards
from masters.config import RewardsConfig

SCORING_FORMAT = 1


def stage_labels(split, question_ids: set[str]) -> tuple[dict, str]:
    """The labels (question, answer, choices if any) of a stage's questions and their digest:
    part of every score key of the stage, so the pipeline and the benchmark key alike."""
    import hashlib
    import json

    cols = ["id", "question", "answer"] + (["choices"] if "choices" in split.column_names
                                            else [])
    table = split.select_columns(cols).to_dict()
    labels = {}
    for i, qid in enumerate(table["id"]):
        if str(qid) in question_ids:
            labels[str(qid)] = {c: table[c][i] for c in cols if c != "id"}
    digest = hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16]
    return labels, digest


def score_key(shard_key: str, cfg: RewardsConfig, labels_digest: str,
              judge_fingerprint: str | None = None) -> str:
    """Scores of one shard under one scorer config against one set of labels."""
    parts = {"format": SCORING_FORMAT, "shard": shard_key, "scorer": cfg.scorer,
             "kwargs": cfg.scorer_kwargs, "labels": labels_digest, "judge": judge_fingerprint}
    return cache.content_key("scores", parts, ".jsonl")


def score_records(
    records: Sequence[Mapping[str, Any]],
    labels: Mapping[str, Mapping[str, Any]],
    cfg: RewardsConfig,
    judge_generate: Callable[[list[str]], list[str]] | None = None,
) -> list[dict[str, Any]]:
    """R_acc for every generated answer; None where the scorer abstains."""
    missing = sorted({r["question_id"] for r in records} - set(labels))
    if missing:
        raise KeyError(f"no label for question id(s) {missing[:5]} in the dataset split")
    answers = [r["text"] for r in records]
    refs = [labels[r["question_id"]]["answer"] for r in records]
    if cfg.scorer == "judge":
        if judge_generate is None:
            raise ValueError("rewards.scorer is 'judge' but no judge model was given")
        questions = [labels[r["question_id"]]["question"] for r in records]
        scores = judge.judge_scores(judge_generate, questions, answers, refs)
    else:
        kwargs = dict(cfg.scorer_kwargs)
        if cfg.scorer == "multiple_choice":
            kwargs.setdefault("choices", [labels[r["question_id"]].get("choices")
                                          for r in records])
        scores = rewards.get_scorer(cfg.scorer)(answers, refs, **kwargs)
    return [{"question_id": r["question_id"], "source": r["source"], "model": r["model"],
             "ratio": r["ratio"], "answer_index": r["answer_index"], "accuracy": s}
            for r, s in zip(records, scores, strict=True)]


def summarize(scored: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Mean accuracy reward and abstention rate per (model, ratio)."""
    by: dict[str, list] = defaultdict(list)
    for s in scored:
        by[f"{s['model']}@{s['ratio']:g}"].append(s["accuracy"])
    out = {}
    for k, vals in sorted(by.items()):
        decided = [v for v in vals if v is not None]
        out[f"accuracy_reward/{k}"] = sum(decided) / len(decided) if decided else 0.0
        out[f"abstain_rate/{k}"] = 1 - len(decided) / len(vals)
    return out


def distillation_scores(teacher, student, processor, groups, *, beta: float = 0.5,
                        batch_groups: int = 8) -> list[list[float]]:
    """R_distill of every answer, standalone: teacher-forced JSD, reverse min-max per group.

    Training computes the same reward from the forward passes it already makes; this is for
    scoring answers outside training (analysis, other pipelines).
    """
    import torch

    from masters import training
    from masters.losses import TeacherTargets

    device = next(student.parameters()).device
    vocab = len(processor.tokenizer.get_vocab())
    out: list[list[float]] = []
    for start in range(0, len(groups), batch_groups):
        part = groups[start : start + batch_groups]
        enc = training.encode_answers(processor, part, device)
        with torch.no_grad():
            d = rewards.distillation_divergence(
                TeacherTargets.full(training.answer_logits(teacher, enc, vocab)),
                training.answer_logits(student, enc, vocab), enc.targets >= 0, beta).tolist()
        i = 0
        for g in part:
            out.append(rewards.reverse_min_max(d[i : i + len(g.answers)]))
            i += len(g.answers)
    return out
