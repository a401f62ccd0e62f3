"""Loss terms against naive implementations written from their definitions."""

from __future__ import annotations

import math

import pytest
import torch

from masters import losses


def _setup(seed=0, b=4, length=6, v=9):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(b, length, v, generator=g, requires_grad=True)
    teacher = torch.randn(b, length, v, generator=g)
    ref = torch.randn(b, length, v, generator=g)
    targets = torch.randint(0, v, (b, length), generator=g)
    mask = torch.tensor([[0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0],
                         [0, 0, 0, 1, 0, 0]])[:b]
    targets[mask == 0] = -100
    adv = torch.tensor([1.5, -0.5, 0.25, -1.25])[:b]
    return student, teacher, ref, targets, mask, adv


def _naive_logp(logits, b, t, target):
    row = logits[b, t].double()
    return (row[target] - torch.logsumexp(row, 0)).item()


def test_token_logprobs():
    student, _, _, targets, mask, _ = _setup()
    got = losses.token_logprobs(student, targets)
    for b in range(4):
        for t in range(6):
            want = _naive_logp(student, b, t, targets[b, t].item()) if mask[b, t] else 0.0
            assert got[b, t].item() == pytest.approx(want, abs=1e-5)


def test_grpo_gradient_is_advantage_weighted_log_likelihood():
    student, _, _, targets, mask, adv = _setup()
    loss = losses.grpo_loss(losses.token_logprobs(student, targets), adv, mask)
    assert loss.item() == pytest.approx(-adv.mean().item(), abs=1e-6)  # ratio == 1
    (g1,) = torch.autograd.grad(loss, student)
    # The same gradient from the plain objective -mean_i A_i * mean_t log pi(y_t).
    logp = losses.token_logprobs(student, targets)
    plain = -sum(adv[i] * logp[i][mask[i] == 1].mean() for i in range(4)) / 4
    (g2,) = torch.autograd.grad(plain, student)
    assert torch.allclose(g1, g2, atol=1e-6)


def test_k3_kl_matches_definition():
    student, _, ref, targets, mask, _ = _setup(1)
    got = losses.k3_kl(losses.token_logprobs(student, targets),
                       losses.token_logprobs(ref, targets), mask)
    for b in range(4):
        vals = []
        for t in range(6):
            if mask[b, t]:
                r = _naive_logp(ref, b, t, targets[b, t].item()) - _naive_logp(
                    student, b, t, targets[b, t].item())
                vals.append(math.exp(r) - r - 1)
        assert got[b].item() == pytest.approx(sum(vals) / len(vals), abs=1e-5)
        assert got[b].item() >= 0


def test_masters_loss_combines_terms():
    student, teacher, ref, targets, mask, adv = _setup(2)
    cached = losses.TeacherTargets.full(teacher)  # the whole vocabulary, as generation stores
    ref_logp = losses.token_logprobs(ref, targets)
    terms = losses.masters_loss(student, cached, ref_logp, targets, mask, adv, kl_beta=0.1,
                                jsd_weight=1.0)
    logp = losses.token_logprobs(student, targets)
    grpo = losses.grpo_loss(logp, adv, mask)
    kl = losses.k3_kl(logp, losses.token_logprobs(ref, targets), mask).mean()
    jsd = losses.masked_mean(losses.generalized_jsd(teacher, student), mask).mean()
    assert terms["loss"].item() == pytest.approx((grpo + 0.1 * kl + jsd).item(), abs=1e-6)
    off = losses.masters_loss(student, None, None, targets, mask, adv, kl_beta=0.0)
    assert off["kl"].item() == 0 and off["jsd"].item() == 0
    assert off["loss"].item() == pytest.approx(grpo.item())
    # The teacher is a constant: no gradient may flow into it.
    teacher.requires_grad_(True)
    losses.masters_loss(student, losses.TeacherTargets.full(teacher), ref_logp, targets, mask,
                        adv)["loss"].backward()
    assert teacher.grad is None
