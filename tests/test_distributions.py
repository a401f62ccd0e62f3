"""Cached teacher distributions (masters.distributions) and the top-k estimator
(losses.TeacherTargets), pinned against naive implementations written from the definition."""

from __future__ import annotations

import math

import pytest
import torch

from masters import distributions, losses


def _naive_jsd(p: list[float], q: list[float], beta: float = 0.5) -> float:
    m = [beta * a + (1 - beta) * b for a, b in zip(p, q, strict=True)]
    kl = lambda x, y: sum(a * math.log(a / b) for a, b in zip(x, y, strict=True) if a > 0)  # noqa: E731
    return beta * kl(p, m) + (1 - beta) * kl(q, m)


def _naive_buckets(logits: torch.Tensor, ids: list[int]) -> list[float]:
    """P_B = (p(v_1), ..., p(v_k), 1 - sum_j p(v_j)) by the definition."""
    p = [math.exp(x) for x in logits.tolist()]
    z = sum(p)
    top = [p[i] / z for i in ids]
    return top + [1 - sum(top)]


@pytest.mark.parametrize("k", [2, 4, 9])
def test_top_k_jsd_matches_the_naive_buckets_and_is_a_lower_bound(k):
    g = torch.Generator().manual_seed(k)
    t, s = torch.randn(2, 3, 10, generator=g) * 2, torch.randn(2, 3, 10, generator=g)
    cached = distributions.summarise(t[:1], s[:1], torch.zeros(1, 3, dtype=torch.long), k)[0]
    logp = torch.log_softmax(t, -1)
    top, ids = logp.topk(k, -1)
    tail = logp.scatter(-1, ids, float("-inf")).logsumexp(-1)
    targets = losses.TeacherTargets(top, ids, tail)
    got = losses.bucketed_jsd(targets, s)
    full = losses.generalized_jsd(t, s)
    for b in range(2):
        for i in range(3):
            want = _naive_jsd(_naive_buckets(t[b, i], ids[b, i].tolist()),
                              _naive_buckets(s[b, i], ids[b, i].tolist()))
            assert got[b, i].item() == pytest.approx(want, abs=1e-5)
    assert (got <= full + 1e-6).all()  # merging outcomes never increases a divergence
    assert torch.allclose(cached.logprobs, top[0], atol=1e-6) and torch.equal(cached.ids, ids[0])
    assert torch.allclose(cached.tail.exp(), 1 - top[0].exp().sum(-1), atol=1e-5)


def test_whole_vocabulary_is_exact_and_gradients_stay_finite():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(2, 4, 7, generator=g)
    s = torch.randn(2, 4, 7, generator=g, requires_grad=True)
    exact = losses.bucketed_jsd(losses.TeacherTargets.full(t), s)
    assert torch.allclose(exact, losses.generalized_jsd(t, s), atol=1e-7)
    logp = torch.log_softmax(t, -1)
    top, ids = logp.topk(3, -1)
    tail = torch.full((2, 4), float("-inf"))  # a teacher with no mass outside its top k
    approx = losses.bucketed_jsd(losses.TeacherTargets(top, ids, tail), s)
    (exact.sum() + approx.sum()).backward()
    assert torch.isfinite(approx).all() and torch.isfinite(s.grad).all()


def test_summaries_survive_the_cache_format():
    g = torch.Generator().manual_seed(2)
    t, r = torch.randn(3, 4, 9, generator=g), torch.randn(3, 4, 9, generator=g)
    targets = torch.tensor([[1, 2, 3, -100], [4, -100, -100, -100], [5, 6, 7, 8]])
    for k in (0, 3):
        dists = distributions.summarise(t, r, targets, k)
        assert [len(d.ref) for d in dists] == [3, 1, 4]
        want = torch.log_softmax(r, -1).gather(-1, targets.clamp(min=0).unsqueeze(-1))[..., 0]
        assert torch.allclose(dists[0].ref, want[0, :3])
        back = distributions.from_bytes(distributions.to_bytes(dists))
        for a, b in zip(dists, back, strict=True):
            assert torch.equal(a.logprobs, b.logprobs) and torch.equal(a.ref, b.ref)
            assert (a.ids is None) == (b.ids is None) == (k == 0)
            if k:
                assert torch.equal(a.ids, b.ids) and torch.equal(a.tail, b.tail)
        cached, ref = distributions.batch(back, width=5)
        assert cached.logprobs.shape == (3, 5, 9 if k == 0 else 3) and ref.shape == (3, 5)
        assert torch.equal(ref[1, :1], dists[1].ref) and (ref[1, 1:] == 0).all()


def test_keys_change_with_k_and_vocabulary_only_when_they_matter():
    key = distributions.dists_key
    assert key("shards/a.jsonl", 0, 100) == key("shards/a.jsonl", 100, 100)  # both whole
    assert len({key("shards/a.jsonl", 8, 100), key("shards/a.jsonl", 16, 100),
                key("shards/b.jsonl", 8, 100), key("shards/a.jsonl", 8, 101)}) == 4
