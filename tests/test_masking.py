"""Teacher masking checked against a reference written straight from the definition:
per tensor, order entries by (|w|, flat index) and zero the first k = round(r * n)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from masters import embedded, models
from masters.masking import MaskedTeacher, MaskError, MaskScope, in_scope, mask_

RATIOS = [0.0, 0.05, 0.1, 0.2, 0.4]
EVERYTHING = MaskScope(include_embeddings=True, include_lm_head=True)


def reference_masked(w: torch.Tensor, r: float) -> torch.Tensor:
    flat = w.reshape(-1).tolist()
    k = round(r * len(flat))
    order = sorted(range(len(flat)), key=lambda i: (abs(flat[i]), i))
    out = list(flat)
    for i in order[:k]:
        out[i] = 0.0
    return torch.tensor(out, dtype=w.dtype).reshape(w.shape)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(
        a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)
    )


class Toy(nn.Module):
    """Every kind of tensor the scope distinguishes, with integer weights full of ties."""

    def __init__(self, seed: int = 0, tie: bool = False, zeros: bool = True):
        super().__init__()
        self.embed_tokens = nn.Embedding(11, 6)
        self.patch_embedding = nn.Conv2d(3, 6, 2)  # 4-D, but an embedding
        self.proj = nn.Linear(6, 7)
        self.fc = nn.Linear(7, 6, bias=False)
        self.norm = nn.LayerNorm(6)
        self.conv = nn.Conv1d(6, 6, 3)  # 3-D and not an embedding: left alone
        self.lm_head = nn.Linear(6, 11, bias=False)
        if tie:
            self.lm_head.weight = self.embed_tokens.weight
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                if zeros:
                    p.copy_(torch.randint(-3, 4, p.shape, generator=g).float())
                else:  # +-1..3: ties everywhere, no zeros, so a zero is always a masked entry
                    sign = torch.randint(0, 2, p.shape, generator=g) * 2 - 1
                    p.copy_((sign * torch.randint(1, 4, p.shape, generator=g)).float())


@pytest.fixture(scope="module")
def smoke():
    model, _ = embedded.build("smoke", seed=0)
    return model


def originals(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_matches_reference(model, original, masked_names, r):
    for name, tensor in model.state_dict().items():
        if name in masked_names:
            assert torch.equal(tensor, reference_masked(original[name], r)), (name, r)
        else:
            assert same_bits(tensor, original[name]), name


@pytest.mark.parametrize("seed", [0, 1])
def test_random_tensors_match_reference_at_every_ratio(seed):
    toy = Toy(seed)
    original = originals(toy)
    for r in RATIOS:  # each ratio straight from the original weights
        model = copy.deepcopy(toy)
        teacher = MaskedTeacher(model, EVERYTHING)
        teacher.set_ratio(r)
        assert_matches_reference(model, original, teacher.tensors, r)


def test_smoke_model_matches_reference_up_the_staircase(smoke):
    model = copy.deepcopy(smoke)
    original = originals(model)
    teacher = MaskedTeacher(model, EVERYTHING)
    assert "model.vision_tower.embeddings.patch_embedding.weight" in teacher.tensors
    for r in RATIOS:  # increasing, each from the previous mask: the same as from the original
        teacher.set_ratio(r)
        assert teacher.ratio == r
        assert_matches_reference(model, original, teacher.tensors, r)


def test_exactly_k_zeroed_per_tensor_and_masks_nested():
    toy = Toy(3, zeros=False)
    teacher = MaskedTeacher(toy, EVERYTHING)
    previous = {name: torch.zeros(t.shape, dtype=torch.bool) for name, t in teacher.tensors.items()}
    for r in RATIOS:
        stats = teacher.set_ratio(r)
        state = toy.state_dict()
        for name, t in teacher.tensors.items():
            zeroed = state[name] == 0
            assert int(zeroed.sum()) == round(r * t.numel()) == stats[name].k == stats[name].zeros
            assert bool((previous[name] <= zeroed).all()), f"{name}: mask at {r} not nested"
            previous[name] = zeroed


def test_ties_are_broken_by_flat_index():
    w = torch.tensor([[2.0, -1.0, 1.0], [1.0, 3.0, -1.0]])
    assert mask_(w, 2) == 1.0  # four entries of magnitude 1: the first two by index go
    assert w.tolist() == [[2.0, 0.0, 0.0], [1.0, 3.0, -1.0]]
    t = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).t()  # not contiguous: flat index is row-major
    mask_(t, 2)
    assert t.tolist() == [[0.0, 3.0], [0.0, 4.0]]
    assert mask_(torch.ones(2, 2), 4) is None  # nothing kept


def test_zeros_already_in_the_weights_are_masked_first(smoke):
    # The LM embedding has an all-zero padding row: those zeros are masked first.
    model = copy.deepcopy(smoke)
    teacher = MaskedTeacher(model, EVERYTHING)
    name = "model.language_model.embed_tokens.weight"
    assert teacher.stats[name].zeros > 0 and teacher.stats[name].k == 0
    for r in RATIOS:
        stats = teacher.set_ratio(r)
        state = model.state_dict()
        for n, m in stats.items():
            assert int((state[n] == 0).sum()) == m.zeros == max(m.k, teacher.stats[n].zeros)


def test_thresholds_are_the_first_kept_magnitude():
    toy = Toy(4)
    original = originals(toy)
    teacher = MaskedTeacher(toy, EVERYTHING)
    for r in RATIOS + [0.9]:
        for name, m in teacher.set_ratio(r).items():
            magnitudes = sorted(abs(x) for x in original[name].reshape(-1).tolist())
            expected = magnitudes[m.k] if m.k < m.numel else None
            assert m.threshold == expected
            kept = original[name][reference_masked(original[name], r) != 0]
            if expected is not None:  # the paper's rule, up to ties: kept entries have |w| >= λ
                assert bool((kept.abs() >= expected).all())


def test_scope_selects_matrices_and_optional_embeddings_and_head():
    toy = Toy(0)
    matrices = {"proj.weight", "fc.weight"}
    embeddings = {"embed_tokens.weight", "patch_embedding.weight"}
    cases = {
        MaskScope(): matrices,
        MaskScope(include_embeddings=True): matrices | embeddings,
        MaskScope(include_lm_head=True): matrices | {"lm_head.weight"},
        EVERYTHING: matrices | embeddings | {"lm_head.weight"},
    }
    for scope, expected in cases.items():
        original = originals(toy)
        model = copy.deepcopy(toy)
        teacher = MaskedTeacher(model, scope)
        assert set(teacher.tensors) == expected, scope
        assert "conv.weight" in teacher.skipped
        teacher.set_ratio(0.4)
        for name, tensor in model.state_dict().items():
            if name not in expected:  # 1-D params and out-of-scope tensors keep every bit
                assert same_bits(tensor, original[name]), (scope, name)


def test_smoke_model_default_scope(smoke):
    tensors, skipped = in_scope(smoke, MaskScope())
    state = smoke.state_dict()
    expected = {
        n for n, t in state.items() if t.ndim == 2 and "embed" not in n and n != "lm_head.weight"
    }
    assert set(tensors) == expected
    assert any("vision_tower" in n for n in expected)
    assert any("multi_modal_projector" in n for n in expected)
    assert any("language_model" in n for n in expected)
    assert {"lm_head.weight", "model.language_model.embed_tokens.weight"} <= set(skipped)


def test_tied_weights_are_one_tensor_masked_once():
    toy = Toy(5, tie=True, zeros=False)
    teacher = MaskedTeacher(toy, EVERYTHING)
    assert "embed_tokens.weight" in teacher.tensors and "lm_head.weight" not in teacher.tensors
    stats = teacher.set_ratio(0.2)
    assert int((toy.lm_head.weight == 0).sum()) == stats["embed_tokens.weight"].k


def test_ratio_zero_writes_nothing(smoke):
    model = copy.deepcopy(smoke)
    original = originals(model)
    versions = {n: p._version for n, p in model.named_parameters()}
    teacher = MaskedTeacher(model, EVERYTHING)
    teacher.set_ratio(0.0)
    assert {n: p._version for n, p in model.named_parameters()} == versions
    assert all(same_bits(t, original[n]) for n, t in model.state_dict().items())


def test_masks_only_grow(smoke):
    model = copy.deepcopy(smoke)
    teacher = MaskedTeacher(model, MaskScope())
    teacher.set_ratio(0.2)
    before = originals(model)
    with pytest.raises(MaskError, match="only grow"):
        teacher.set_ratio(0.1)
    assert teacher.ratio == 0.2
    assert all(same_bits(t, before[n]) for n, t in model.state_dict().items())  # unchanged


def test_same_count_and_entries_as_torch_prune():
    """Peer check: torch.nn.utils.prune.l1_unstructured zeroes the same round(r * n) entries;
    at exact magnitude ties its choice is its own (topk), so only there may they differ."""
    for seed in range(3):
        ours = nn.Linear(40, 30, bias=False)
        with torch.no_grad():
            ours.weight.normal_(generator=torch.Generator().manual_seed(seed))
        peer = copy.deepcopy(ours)
        MaskedTeacher(ours).set_ratio(0.3)
        prune.l1_unstructured(peer, "weight", amount=0.3)
        assert int((ours.weight == 0).sum()) == int((peer.weight_mask == 0).sum()) == 360
        assert torch.equal(ours.weight == 0, peer.weight_mask == 0)  # continuous: no ties
    tied = Toy(6, zeros=False).fc  # magnitudes 1..3 only: ties everywhere
    peer = copy.deepcopy(tied)
    MaskedTeacher(tied).set_ratio(0.4)
    prune.l1_unstructured(peer, "weight", amount=0.4)
    assert int((tied.weight == 0).sum()) == int((peer.weight_mask == 0).sum())
    lam = peer.weight_orig.abs()[peer.weight_mask == 1].min()
    differ = (tied.weight == 0) != (peer.weight_mask == 0)
    assert bool((peer.weight_orig.abs()[differ] == lam).all())  # only at the tied threshold


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan"), "abc"])
def test_invalid_ratios_are_rejected(smoke, bad):
    model = copy.deepcopy(smoke)
    fp = models.fingerprint(model)
    teacher = MaskedTeacher(model, MaskScope())
    with pytest.raises(MaskError, match="mask ratio") as err:
        teacher.set_ratio(bad)
    assert repr(bad) in str(err.value)
    assert models.fingerprint(model) == fp


def test_loaded_bf16_teacher_matches_reference(tmp_path):
    """A checkpoint loaded as generation loads it (bf16 has many exact ties)."""
    model, processor = embedded.build("smoke", seed=1)
    path = embedded.save(model, processor, tmp_path / "ckpt")
    loaded, _ = models.load(path, dtype=torch.bfloat16)
    original = originals(loaded)
    teacher = MaskedTeacher(loaded, EVERYTHING)
    for r in RATIOS:
        teacher.set_ratio(r)
        assert_matches_reference(loaded, original, teacher.tensors, r)
