"""The top-k estimator of cached teacher distributions, against the whole vocabulary.

On the embedded models (large teacher, initial student, 74-token vocabulary): 48 training
questions, 4 teacher + 4 student answers each, sampled by the pipeline's generation code.
For k = 4, 8, 16 and the whole vocabulary, the distributions generation would cache
(`masters.distributions.for_records`), then per answer the distillation divergence D (mean
over its tokens of JSD on the cached buckets, the student's logits as training sees them) and
per group R_distill (reverse min-max). Reported: relative error of D versus the whole
vocabulary, absolute error of R_distill, and bytes cached per answer token.
"""

from __future__ import annotations

import numpy as np
import torch

K_VALUES = (4, 8, 16)


def run(n_questions: int = 48) -> dict:
    from masters import distributions, generation, models, rewards, synthetic, training
    from masters.config import GenerationConfig
    from masters.generation import LoadedModel

    teacher = LoadedModel(*models.load("embedded:large"))
    student = LoadedModel(*models.load("embedded:student"))
    rows = [{"id": s.id, "question": s.question, "image": s.image}
            for s in (synthetic.make_sample(0, "train", i) for i in range(n_questions))]
    cfg = GenerationConfig(max_new_tokens=4, batch_size=16)
    records = generation.generate_shard(teacher, student, rows, teacher_name="large",
                                        ratio=0.0, cfg=cfg, seed=0)
    vocab = len(student.processor.tokenizer.get_vocab())
    by_k = {k: distributions.for_records(teacher, student, rows, records, k)
            for k in (0, *K_VALUES)}
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(r["question_id"], []).append(i)
    tokens = sum(len(r["token_ids"]) for r in records)

    def divergences(dists) -> list[float]:
        out = [0.0] * len(records)
        for qid, idx in groups.items():
            row = next(r for r in rows if r["id"] == qid)
            g = training.Group(qid, row["image"], row["question"],
                               [records[i]["token_ids"] for i in idx], [None] * len(idx))
            g.dists = [dists[i] for i in idx]
            enc = training.encode_answers(student.processor, [g], "cpu")
            with torch.no_grad():
                s_logits = training.answer_logits(student.model, enc, vocab)
            targets, _ = training.cached_targets([g], enc.targets.shape[1])
            d = rewards.distillation_divergence(targets, s_logits, enc.targets >= 0)
            for i, v in zip(idx, d.tolist(), strict=True):
                out[i] = v
        return out

    full = np.array(divergences(by_k[0]))
    r_full = _r_distill(full, groups)
    out = {"questions": n_questions, "answers": len(records), "tokens": tokens, "vocab": vocab,
           "non_tied_groups": float(np.mean([any(r_full[i] for i in idx)
                                             for idx in groups.values()])),
           "rows": []}
    for k in (*K_VALUES, 0):
        d = np.array(divergences(by_k[k]))
        r = _r_distill(d, groups)
        rel = np.abs(d - full) / np.maximum(full, 1e-12)
        out["rows"].append({
            "k": k or vocab, "bytes_per_token": len(distributions.to_bytes(by_k[k])) / tokens,
            "d_rel_err_median": float(np.median(rel)), "d_rel_err_max": float(rel.max()),
            "r_abs_err_mean": float(np.mean(np.abs(r - r_full))),
            "r_abs_err_max": float(np.max(np.abs(r - r_full)))})
    return out


def _r_distill(d: np.ndarray, groups: dict[str, list[int]]) -> np.ndarray:
    from masters import rewards

    r = np.zeros_like(d)
    for idx in groups.values():
        r[idx] = rewards.reverse_min_max([float(d[i]) for i in idx])
    return r


def markdown(r: dict) -> str:
    lines = [
        f"Embedded large teacher and initial student, {r['questions']} training questions x "
        f"(4 teacher + 4 student) answers sampled by the pipeline ({r['tokens']} answer "
        f"tokens), vocabulary {r['vocab']}. D = per-answer distillation divergence (JSD on the "
        "cached buckets), R = R_distill (reverse min-max in the group); errors against the "
        "whole vocabulary. Groups whose R_distill is not all tied: "
        f"{100 * r['non_tied_groups']:.0f}%.",
        "",
        "| k | cached per answer token | D relative error, median / max | R_distill absolute "
        "error, mean / max |",
        "|---|---|---|---|",
    ]
    for row in r["rows"]:
        lines.append(f"| {row['k']} | {row['bytes_per_token']:.0f} B | "
                     f"{row['d_rel_err_median']:.2e} / {row['d_rel_err_max']:.2e} | "
                     f"{row['r_abs_err_mean']:.3f} / {row['r_abs_err_max']:.3f} |")
    return "\n".join(lines)
