"""The training objective's equations (method.md section 4), each in one place.

Token-level divergences take logits of shape (batch, length, vocab) and a mask of shape
(batch, length) that is 1 on answer tokens and 0 on prompt, image and padding positions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
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
