"""The training objective's equations (method.md section 4), each in one place.

Token-level divergences take logits of shape (batch, length, vocab) and a mask of shape
(batch, length) that is 1 on answer tokens and 0 on prompt, image and padding positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


# A bucket's log-mass is never below this: exp() of it is 0 in float32, and 0 * finite = 0
# where log 0 = -inf would turn JSD's 0 * log 0 into NaN.
LOG_FLOOR = -1e4


@dataclass
class TeacherTargets:
    """The teacher's distribution at every answer position, as cached by generation
    (masters.distributions): log-probs over the top-k token ids, plus the log of the mass
    outside them (tail); `ids is None` means the whole vocabulary in order (exact).

    Top-k estimator: both distributions are compared over the same k + 1 buckets, the top-k
    ids and the rest, P_B = (p(v_1), ..., p(v_k), 1 - sum_j p(v_j)) and Q_B likewise. Merging
    outcomes never increases an f-divergence, so JSD(P_B || Q_B) <= JSD(P || Q): a lower
    bound, equal at k = vocabulary.
    """

    logprobs: torch.Tensor  # (B, A, k)
    ids: torch.Tensor | None  # (B, A, k)
    tail: torch.Tensor | None  # (B, A)

    @classmethod
    def full(cls, teacher_logits: torch.Tensor) -> TeacherTargets:
        return cls(F.log_softmax(upcast(teacher_logits), -1), None, None)

    def teacher_logprobs(self) -> torch.Tensor:
        """log P_B, shape (B, A, k + 1), or (B, A, vocab) for the whole vocabulary."""
        if self.ids is None:
            return self.logprobs
        tail = self.tail.clamp(min=LOG_FLOOR).unsqueeze(-1)
        return torch.cat([self.logprobs.clamp(min=LOG_FLOOR), tail], -1)

    def student_logprobs(self, student_logits: torch.Tensor) -> torch.Tensor:
        """log Q_B: the student's log-probs on the same buckets (differentiable)."""
        logq = F.log_softmax(upcast(student_logits), -1)
        if self.ids is None:
            return logq
        ids = self.ids.to(logq.device)
        rest = logq.scatter(-1, ids, float("-inf")).logsumexp(-1, keepdim=True)
        return torch.cat([logq.gather(-1, ids), rest.clamp(min=LOG_FLOOR)], -1)


def bucketed_jsd(teacher: TeacherTargets, student_logits: torch.Tensor,
                 beta: float = 0.5) -> torch.Tensor:
    """JSD_beta(P_B || Q_B) per position, shape (batch, length): `generalized_jsd` over the
    buckets of `TeacherTargets` (the whole distribution when the whole vocabulary is cached)."""
    return generalized_jsd(teacher.teacher_logprobs().detach().to(student_logits.device),
                           teacher.student_logprobs(student_logits), beta)


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
    teacher: TeacherTargets | None,
    ref_logprobs: torch.Tensor | None,
    targets: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    *,
    kl_beta: float = 0.1,
    jsd_weight: float = 1.0,
    jsd_beta: float = 0.5,
) -> dict[str, torch.Tensor]:
    """loss = L_GRPO + kl_beta * KL(student || reference) + jsd_weight * JSD(teacher || student).

    Student logits are aligned with `targets` (already shifted); the teacher's distribution
    and the reference's log-probs of the targets come cached (masters.distributions). A term
    whose weight is 0 or whose input is None is skipped (baselines switch terms off). Returns
    every term; `loss` is the one to back-propagate.
    """
    logp = token_logprobs(student_logits, targets)
    terms = {"grpo": grpo_loss(logp, advantages, mask)}
    zero = terms["grpo"].new_zeros(())
    if kl_beta and ref_logprobs is not None:
        terms["kl"] = k3_kl(logp, ref_logprobs.to(logp.device).detach(), mask).mean()
    else:
        terms["kl"] = zero
    if jsd_weight and teacher is not None:
        terms["jsd"] = masked_mean(bucketed_jsd(teacher, student_logits, jsd_beta), mask).mean()
    else:
        terms["jsd"] = zero
    terms["loss"] = terms["grpo"] + kl_beta * terms["kl"] + jsd_weight * terms["jsd"]
    return terms


def sft_loss(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Supervised baseline: negative log-likelihood, mean over each answer's tokens, then over
    answers (the same averaging as GRPO, so a short label weighs as much as a long one)."""
    return -masked_mean(logprobs, mask).mean()
