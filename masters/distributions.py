"""Teacher distributions and reference log-probs, computed once per stage and cached with the
answers (method.md section 4, "Where the teacher runs").

The teacher is frozen within a stage and the reference is the frozen initial student, so on
every pre-generated answer of a stage both are fixed. The generation step, which holds the
masked teacher and the initial student anyway, teacher-forces all G answers of each question
and stores per answer token:

- the teacher's top-k log-probabilities and their token ids, and the log of the mass left
  outside them (the tail); with `generation.teacher_top_k: 0` the whole vocabulary is kept
  (no ids, no tail), which makes training's JSD and distillation reward exact;
- the reference's log-probability of the token itself (all the k3 KL needs).

Training then holds the student alone (losses.TeacherTargets turns a batch of these into the
JSD's buckets). Stored as one safetensors blob per shard (`dists/<32 hex>.st`), answers in
the shard's record order, under a key that addresses the shard's answers, k and the format.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from masters import cache, inputs
from masters.losses import TeacherTargets, token_logprobs

# Bump when what is stored or how it is computed changes: every dists key changes with it.
DIST_FORMAT = 1


@dataclass
class AnswerDist:
    """One answer's cached teacher distribution (T tokens) and reference log-probs."""

    logprobs: torch.Tensor  # (T, k) teacher log-probs; k = vocab when ids is None
    ids: torch.Tensor | None  # (T, k) their token ids; None: the whole vocabulary, in order
    tail: torch.Tensor | None  # (T,) log of the teacher mass outside the ids; None with ids
    ref: torch.Tensor  # (T,) reference log-prob of each answer token


def dists_key(shard_key: str, top_k: int, vocab: int) -> str:
    return cache.content_key("dists", {"format": DIST_FORMAT, "shard": shard_key,
                                       "top_k": top_k if 0 < top_k < vocab else 0,
                                       "vocab": vocab}, ".st")


def summarise(teacher_logits: torch.Tensor, ref_logits: torch.Tensor, targets: torch.Tensor,
              top_k: int) -> list[AnswerDist]:
    """Per answer: the teacher's top-k (or whole) log-softmax at its positions, and the
    reference's log-prob of each target token. Logits are (B, A, vocab), aligned to targets."""
    logp = torch.log_softmax(teacher_logits.float(), -1)
    ref = token_logprobs(ref_logits, targets)
    full = not 0 < top_k < logp.shape[-1]
    if full:
        ids = tail = None
    else:
        top, ids = logp.topk(top_k, dim=-1)
        rest = logp.scatter(-1, ids, float("-inf"))
        tail, logp = torch.logsumexp(rest, -1), top
    out = []
    for i, n in enumerate((targets >= 0).sum(1).tolist()):
        out.append(AnswerDist(logp[i, :n].contiguous(), None if full else ids[i, :n].contiguous(),
                              None if full else tail[i, :n].contiguous(), ref[i, :n].contiguous()))
    return out


def for_records(teacher, reference, rows: Sequence, records: Sequence[dict], top_k: int,
                batch_groups: int = 8) -> list[AnswerDist]:
    """The cached distributions of a shard's answer records, in record order.

    `teacher` (the stage's masked teacher) and `reference` (the initial student) are
    LoadedModels; each encodes with its own processor. Distributions are taken over the
    reference (student) tokenizer's vocabulary, padded embedding rows dropped, as training
    compares them there."""
    from masters import training

    by_id = {str(r["id"]): r for r in rows}
    groups: dict[str, training.Group] = {}
    where = []  # (question id, answer index) of every record
    for rec in records:
        qid = str(rec["question_id"])
        if qid not in groups:
            row = by_id[qid]
            groups[qid] = training.Group(qid, row["image"], row["question"], [], [])
        g = groups[qid]
        where.append((qid, len(g.answers)))
        g.answers.append(list(rec["token_ids"]))
        g.accuracy.append(None)
    attach(teacher, reference, list(groups.values()), top_k, batch_groups)
    return [groups[qid].dists[i] for qid, i in where]


def attach(teacher, reference, groups: Sequence, top_k: int, batch_groups: int = 8) -> None:
    """Compute every group's answer distributions into `group.dists` (see `for_records`)."""
    from masters import training

    vocab = len(reference.processor.tokenizer.get_vocab())
    for start in range(0, len(groups), batch_groups):
        part = groups[start : start + batch_groups]
        with torch.no_grad():
            t_enc = training.encode_answers(teacher.processor, part,
                                            inputs.device_of(teacher.model))
            t_logits = training.answer_logits(teacher.model, t_enc, vocab)
            r_enc = (t_enc if reference.processor is teacher.processor else
                     training.encode_answers(reference.processor, part,
                                             inputs.device_of(reference.model)))
            r_logits = training.answer_logits(reference.model, r_enc, vocab)
        flat = summarise(t_logits.cpu(), r_logits.cpu(), t_enc.targets.cpu(), top_k)
        i = 0
        for g in part:
            g.dists = flat[i : i + len(g.answers)]
            i += len(g.answers)


def to_bytes(dists: Sequence[AnswerDist]) -> bytes:
    """One safetensors blob: every answer's rows concatenated, with offsets."""
    from safetensors.torch import save

    lengths = torch.tensor([len(d.ref) for d in dists], dtype=torch.int64)
    tensors = {"lengths": lengths,
               "logprobs": torch.cat([d.logprobs for d in dists]).float(),
               "ref": torch.cat([d.ref for d in dists]).float()}
    if dists and dists[0].ids is not None:
        tensors["ids"] = torch.cat([d.ids for d in dists]).to(torch.int32)
        tensors["tail"] = torch.cat([d.tail for d in dists]).float()
    return save(tensors)


def from_bytes(blob: bytes) -> list[AnswerDist]:
    from safetensors.torch import load

    t = load(blob)
    bounds = torch.cumsum(t["lengths"], 0).tolist()
    out, start = [], 0
    for stop in bounds:
        sl = slice(start, stop)
        out.append(AnswerDist(t["logprobs"][sl], t["ids"][sl].long() if "ids" in t else None,
                              t["tail"][sl] if "tail" in t else None, t["ref"][sl]))
        start = stop
    return out


def batch(dists: Sequence[AnswerDist], width: int) -> tuple[TeacherTargets, torch.Tensor]:
    """(teacher targets (B, width, k), reference log-probs (B, width)), zero-padded past each
    answer's end (the loss mask drops those positions)."""
    k = dists[0].logprobs.shape[-1]
    logp = torch.zeros(len(dists), width, k)
    ref = torch.zeros(len(dists), width)
    has_ids = dists[0].ids is not None
    ids = torch.zeros(len(dists), width, k, dtype=torch.long) if has_ids else None
    tail = torch.zeros(len(dists), width) if has_ids else None
    for i, d in enumerate(dists):
        n = len(d.ref)
        logp[i, :n], ref[i, :n] = d.logprobs, d.ref
        if has_ids:
            ids[i, :n], tail[i, :n] = d.ids, d.tail
    return TeacherTargets(logp, ids, tail), ref
