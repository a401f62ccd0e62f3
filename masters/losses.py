"""The training objective's equations (method.md section 4), each in one place.

Token-level divergences take logits of shape (batch, length, vocab) and a mask of shape
(batch, length) that is 1 on answer tokens and 0 on prompt, image and padding positions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def upcast(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (a half-precision softmax is unstable); float64 stays float64, which
    lets tests compare two runs without float32 noise."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def generalized_jsd(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-position generalized JSD between teacher P and student Q, shape (batch, length).

    JSD_beta(P || Q) = beta * KL(P || M) + (1 - beta) * KL(Q || M), M = beta P + (1 - beta) Q.
    beta = 0.5 is the symmetric JSD (our default); beta = 0 and 1 are the limits
    KL(P || Q) and KL(Q || P) (scaled by beta(1 - beta) they vanish, so they are taken
    directly), as in TRL's GKD.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"jsd beta must lie in [0, 1], got {beta}")
    dtype = torch.promote_types(upcast(teacher_logits).dtype, upcast(student_logits).dtype)
    t = F.log_softmax(teacher_logits.to(dtype) / temperature, dim=-1)
    s = F.log_softmax(student_logits.to(dtype) / temperature, dim=-1)
    if beta == 0.0:
        return (t.exp() * (t - s)).sum(-1)
    if beta == 1.0:
        return (s.exp() * (s - t)).sum(-1)
    m = torch.logsumexp(torch.stack([t + math.log(beta), s + math.log(1 - beta)]), dim=0)
    kl_t = (t.exp() * (t - m)).sum(-1)
    kl_s = (s.exp() * (s - m)).sum(-1)
    return beta * kl_t + (1 - beta) * kl_s


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked positions per row, shape (batch,); 0 for a row with no position."""
    mask = mask.to(values.dtype)
    return (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log pi(target_t | prefix) per position, shape (batch, length).

    `logits[:, t]` must already be the distribution over `targets[:, t]` (callers shift once:
    logits[:, :-1] against input_ids[:, 1:]). Padding targets (< 0) get 0.
    """
    logp = F.log_softmax(upcast(logits), dim=-1)
    return logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (targets >= 0)


def grpo_loss(
    logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """GRPO with ratio pi / stopgrad(pi) == 1 (one update per batch, so clipping never acts).

    Per answer: mean over its tokens of -ratio * A; then the mean over answers. The value is
    -mean(A) but the gradient is that of the advantage-weighted log-likelihood.
    """
    ratio = torch.exp(logprobs - logprobs.detach())
    per_answer = masked_mean(-ratio * advantages.unsqueeze(-1), mask)
    return per_answer.mean()


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(student || reference) per answer with the k3 estimator (Schulman), shape (batch,).

    k3 = exp(r) - r - 1 with r = log ref - log pi: unbiased and never negative.
    """
    r = ref_logprobs - logprobs
    return masked_mean(torch.exp(r) - r - 1, mask)


def masters_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    ref_logits: torch.Tensor | None,
    targets: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    *,
    kl_beta: float = 0.1,
    jsd_weight: float = 1.0,
    jsd_beta: float = 0.5,
    temperature: float = 1.0,
) -> dict[str, torch.Tensor]:
    """loss = L_GRPO + kl_beta * KL(student || reference) + jsd_weight * JSD(teacher || student).

    All logits are aligned with `targets` (already shifted). A term whose weight is 0 or whose
    logits are None is skipped (baselines switch terms off). Returns every term; `loss` is the
    one to back-propagate.
    """
    logp = token_logprobs(student_logits, targets)
    terms = {"grpo": grpo_loss(logp, advantages, mask)}
    zero = terms["grpo"].new_zeros(())
    if kl_beta and ref_logits is not None:
        ref_logp = token_logprobs(ref_logits, targets).detach()
        terms["kl"] = k3_kl(logp, ref_logp, mask).mean()
    else:
        terms["kl"] = zero
    if jsd_weight and teacher_logits is not None:
        jsd = generalized_jsd(teacher_logits.detach(), student_logits, jsd_beta, temperature)
        terms["jsd"] = masked_mean(jsd, mask).mean()
    else:
        terms["jsd"] = zero
    terms["loss"] = terms["grpo"] + kl_beta * terms["kl"] + jsd_weight * terms["jsd"]
    return terms


def sft_loss(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Supervised baseline: negative log-likelihood, mean over each answer's tokens, then over
    answers (the same averaging as GRPO, so a short label weighs as much as a long one)."""
    return -masked_mean(logprobs, mask).mean()
