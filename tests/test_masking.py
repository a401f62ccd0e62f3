"""Teacher masking checked against a reference written straight from the definition:
per tensor, order entries by (|w|, flat index) and zero the first k = round(r * n)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from masters import embedded, models
from masters.masking import (
    MaskedTeacher,
    MaskError,
    MaskScope,
    ThresholdTable,
    apply_mask,
    compute_thresholds,
    fingerprint_state_dict,
)

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


def assert_matches_reference(model, original, table, r):
    for name, tensor in model.state_dict().items():
        if name in table.tensors:
            assert torch.equal(tensor, reference_masked(original[name], r)), (name, r)
        else:
            assert same_bits(tensor, original[name]), name


@pytest.mark.parametrize("seed", [0, 1])
def test_random_tensors_match_reference_at_every_ratio(seed):
    toy = Toy(seed)
    original = originals(toy)
    table = compute_thresholds(toy, RATIOS, EVERYTHING)
    for r in RATIOS:
        model = copy.deepcopy(toy)
        apply_mask(model, table, r)
        assert_matches_reference(model, original, table, r)


def test_smoke_model_matches_reference_through_the_staircase(smoke):
    model = copy.deepcopy(smoke)
    original = originals(model)
    table = compute_thresholds(model, RATIOS, EVERYTHING)
    assert "model.vision_tower.embeddings.patch_embedding.weight" in table.tensors
    teacher = MaskedTeacher(model, table)
    # Down the staircase, then up past the high-water mark and back.
    for r in [0.4, 0.2, 0.1, 0.05, 0.0, 0.1, 0.05, 0.2, 0.4, 0.0]:
        teacher.set_ratio(r)
        assert teacher.ratio == r
        assert_matches_reference(model, original, table, r)


def test_exactly_k_zeroed_per_tensor_and_masks_nested():
    toy = Toy(3, zeros=False)
    table = compute_thresholds(toy, RATIOS, EVERYTHING)
    teacher = MaskedTeacher(toy, table)
    previous = {name: torch.zeros(t.shape, dtype=torch.bool) for name, t in table.tensors.items()}
    for r in RATIOS:
        teacher.set_ratio(r)
        state = toy.state_dict()
        for name, entry in table.tensors.items():
            zeroed = state[name] == 0
            assert int(zeroed.sum()) == round(r * entry.numel) == table.k(name, r)
            assert bool((previous[name] <= zeroed).all()), f"{name}: mask at {r} not nested"
            previous[name] = zeroed


def test_sparsity_counts_zeros_already_in_the_weights(smoke):
    # The LM embedding has an all-zero padding row: those zeros are masked first.
    model = copy.deepcopy(smoke)
    table = compute_thresholds(model, RATIOS, EVERYTHING)
    assert table.tensors["model.language_model.embed_tokens.weight"].zeros > 0
    teacher = MaskedTeacher(model, table)
    for r in RATIOS:
        teacher.set_ratio(r)
        state = model.state_dict()
        for name, entry in table.tensors.items():
            zeros = int((state[name] == 0).sum())
            assert zeros == round(table.sparsity(name, r) * entry.numel), (name, r)


def test_thresholds_are_the_first_kept_magnitude():
    toy = Toy(4)
    original = originals(toy)
    table = compute_thresholds(toy, RATIOS + [0.9], EVERYTHING)
    for name, entry in table.tensors.items():
        magnitudes = sorted(abs(x) for x in original[name].reshape(-1).tolist())
        for r in table.ratios:
            k = round(r * entry.numel)
            expected = magnitudes[k] if k < entry.numel else None
            assert table.threshold(name, r) == expected
            masked = reference_masked(original[name], r)
            kept = original[name][masked != 0]
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
        table = compute_thresholds(toy, RATIOS, scope)
        assert set(table.tensors) == expected, scope
        assert "conv.weight" in table.skipped
        original = originals(toy)
        model = copy.deepcopy(toy)
        apply_mask(model, table, 0.4)
        for name, tensor in model.state_dict().items():
            if name not in expected:  # 1-D params and out-of-scope tensors keep every bit
                assert same_bits(tensor, original[name]), (scope, name)


def test_smoke_model_default_scope(smoke):
    table = compute_thresholds(smoke, RATIOS, MaskScope())
    state = smoke.state_dict()
    expected = {
        n for n, t in state.items() if t.ndim == 2 and "embed" not in n and n != "lm_head.weight"
    }
    assert set(table.tensors) == expected
    assert any("vision_tower" in n for n in expected)
    assert any("multi_modal_projector" in n for n in expected)
    assert any("language_model" in n for n in expected)
    assert {"lm_head.weight", "model.language_model.embed_tokens.weight"} <= set(table.skipped)


def test_tied_weights_are_one_tensor_masked_once():
    toy = Toy(5, tie=True, zeros=False)
    table = compute_thresholds(toy, RATIOS, EVERYTHING)
    assert "embed_tokens.weight" in table.tensors and "lm_head.weight" not in table.tensors
    teacher = MaskedTeacher(toy, table)
    teacher.set_ratio(0.2)
    assert int((toy.lm_head.weight == 0).sum()) == table.k("embed_tokens.weight", 0.2)


def test_one_sort_per_tensor(monkeypatch, smoke):
    model = copy.deepcopy(smoke)
    calls = []
    real_sort = torch.sort

    def counting_sort(*args, **kwargs):
        calls.append(args[0].numel())
        return real_sort(*args, **kwargs)

    monkeypatch.setattr(torch, "sort", counting_sort)
    table = compute_thresholds(model, RATIOS, EVERYTHING)  # 5 ratios, still one sort each
    n = len(table.tensors)
    assert len(calls) == n
    assert sorted(calls) == sorted(e.numel for e in table.tensors.values())
    teacher = MaskedTeacher(model, table)
    for r in [0.4, 0.2, 0.1, 0.05, 0.0, 0.2, 0.4]:  # applying selects by threshold: no sort
        teacher.set_ratio(r)
    assert len(calls) == n


def test_ratio_zero_restores_every_bit(smoke):
    model = copy.deepcopy(smoke)
    original = originals(model)
    fp = models.fingerprint(model)
    table = compute_thresholds(model, RATIOS, EVERYTHING)
    teacher = MaskedTeacher(model, table)
    teacher.set_ratio(0.4)
    assert models.fingerprint(model) != fp
    for r in [0.2, 0.1, 0.05, 0.0]:
        teacher.set_ratio(r)
    assert models.fingerprint(model) == fp
    for name, tensor in model.state_dict().items():
        assert same_bits(tensor, original[name]), name


def test_record_holds_only_the_zeroed_entries(smoke):
    model = copy.deepcopy(smoke)
    table = compute_thresholds(model, RATIOS, MaskScope())
    teacher = MaskedTeacher(model, table)
    teacher.set_ratio(0.2)
    teacher.set_ratio(0.0)  # the record keeps the high-water mark
    k = sum(table.k(name, 0.2) for name in table.tensors)
    assert teacher.record.nbytes() == k * (4 + 4)  # int32 index + float32 value
    masked = sum(e.numel for e in table.tensors.values())
    assert k <= 0.2 * masked + len(table.tensors)


def test_table_refuses_another_model(smoke):
    table = compute_thresholds(smoke, RATIOS, MaskScope())
    other = copy.deepcopy(smoke)
    with torch.no_grad():
        other.lm_head.weight[0, 0] += 1.0  # even one weight makes it another checkpoint
    other_fp = models.fingerprint(other)
    with pytest.raises(MaskError) as err:
        MaskedTeacher(other, table)
    assert table.fingerprint in str(err.value) and other_fp in str(err.value)
    with pytest.raises(MaskError, match=other_fp):
        apply_mask(other, table, 0.1)


def test_masked_model_needs_its_record(smoke):
    model = copy.deepcopy(smoke)
    original = originals(model)
    table = compute_thresholds(model, RATIOS, MaskScope())
    record = apply_mask(model, table, 0.2)
    with pytest.raises(MaskError, match="fingerprint|computed for checkpoint"):
        apply_mask(model, table, 0.1)  # already masked: its bytes are no longer the table's
    model.load_state_dict(original)  # weights reloaded behind the record's back
    with pytest.raises(MaskError, match="does not hold the masked state"):
        apply_mask(model, table, 0.1, record)
    assert models.fingerprint(model) == table.fingerprint  # the refusal wrote nothing


@pytest.mark.parametrize("bad", [0.3, 1.0, -0.1, 1.5, float("nan"), "abc"])
def test_invalid_ratios_are_rejected(smoke, bad):
    model = copy.deepcopy(smoke)
    table = compute_thresholds(model, RATIOS, MaskScope())
    teacher = MaskedTeacher(model, table)
    with pytest.raises(MaskError, match="mask ratio") as err:
        teacher.set_ratio(bad)
    assert repr(bad) in str(err.value)
    if bad == 0.3:
        assert "allowed: 0.0, 0.05, 0.1, 0.2, 0.4" in str(err.value)
    assert models.fingerprint(model) == table.fingerprint


@pytest.mark.parametrize("bad", [1.0, -0.05])
def test_invalid_ratios_rejected_when_computing(bad):
    with pytest.raises(MaskError, match=repr(bad)):
        compute_thresholds(Toy(0), [0.1, bad], MaskScope())


def test_json_round_trip(tmp_path, smoke):
    table = compute_thresholds(smoke, [0.4, 0.1, 0.2, 0.05], EVERYTHING)
    assert table.ratios == RATIOS  # sorted, 0 added
    path = table.save(tmp_path / "tables" / "smoke.json")
    data = json.loads(path.read_text())
    assert data["fingerprint"] == models.fingerprint(smoke)
    loaded = ThresholdTable.load(path)
    assert loaded == table
    model = copy.deepcopy(smoke)
    original = originals(model)
    apply_mask(model, loaded, 0.2)
    assert_matches_reference(model, original, loaded, 0.2)


def test_json_round_trip_keeps_none_thresholds(tmp_path):
    state = {"w": torch.tensor([[1.0, -2.0], [3.0, 0.5]])}
    table = compute_thresholds(state, [0.9], MaskScope())  # k = round(3.6) = 4: nothing kept
    assert table.threshold("w", 0.9) is None
    assert table.threshold("w", 0.0) == 0.5
    assert ThresholdTable.load(table.save(tmp_path / "t.json")) == table


def test_fingerprint_state_dict_matches_models_fingerprint(smoke):
    state = smoke.state_dict()
    assert fingerprint_state_dict(state) == models.fingerprint(smoke)
    from_state = compute_thresholds(state, RATIOS, EVERYTHING)
    assert from_state == compute_thresholds(smoke, RATIOS, EVERYTHING)


# A teacher loaded from its checkpoint: transformers maps safetensors weights zero-copy, so the
# record keeps those originals and masked values live in private buffers (module docstring).


@pytest.fixture
def checkpoint(tmp_path, monkeypatch):
    """save(seed, round_to) -> a smoke checkpoint folder; the fingerprint cache in tmp_path."""
    monkeypatch.setenv(models.FINGERPRINT_CACHE_ENV, str(tmp_path / "fingerprints"))
    monkeypatch.setattr(models, "RACY_NS", 0)  # trust a checkpoint written moments ago

    def save(seed: int = 0, round_to: float | None = None):
        model, processor = embedded.build("smoke", seed=seed)
        if round_to:  # few distinct values: ties everywhere
            with torch.no_grad():
                for p in model.parameters():
                    p.copy_((p / round_to).round() * round_to)
        return embedded.save(model, processor, tmp_path / f"ckpt-{seed}-{round_to}")

    return save


def test_loaded_teacher_masks_from_its_mapped_originals(checkpoint):
    path = checkpoint()
    model, _ = models.load(path)
    original = originals(model)
    pointers = {n: t.data_ptr() for n, t in model.state_dict().items()}
    table = compute_thresholds(model, RATIOS, EVERYTHING)
    teacher = MaskedTeacher(model, table)
    assert set(teacher.record.originals) == set(table.tensors)  # every masked tensor mapped
    in_memory = MaskedTeacher(copy.deepcopy(model), table)  # a copy is private memory
    assert not in_memory.record.originals
    for r in [0.4, 0.2, 0.1, 0.05, 0.0, 0.1, 0.05, 0.2, 0.4, 0.0]:
        teacher.set_ratio(r)
        in_memory.set_ratio(r)
        assert teacher.ratio == r and teacher.record.nbytes() == 0
        assert_matches_reference(model, original, table, r)
        other = in_memory.model.state_dict()
        assert all(same_bits(t, other[n]) for n, t in model.state_dict().items())
    # Back on the checkpoint's own pages, every bit as loaded, the cached fingerprint valid.
    assert {n: t.data_ptr() for n, t in model.state_dict().items()} == pointers
    assert all(same_bits(t, original[n]) for n, t in model.state_dict().items())
    assert models.fingerprint(model) == table.fingerprint == models.fingerprint(model, cached=False)


def test_loaded_teacher_with_ties_everywhere(checkpoint, monkeypatch):
    monkeypatch.setattr("masters.masking.MAX_TIE_INDICES", 3)  # most ties found by a scan
    model, _ = models.load(checkpoint(seed=1, round_to=0.02))
    original = originals(model)
    table = compute_thresholds(model, RATIOS, EVERYTHING)
    entries = table.tensors.values()
    assert any(t > 3 for e in entries for t in e.ties)
    assert any(x is None for e in entries for x in e.tie_indices)
    assert any(x for e in entries for x in e.tie_indices)
    teacher = MaskedTeacher(model, table)
    assert teacher.record.originals
    for r in [0.2, 0.4, 0.05, 0.1, 0.0, 0.4]:
        teacher.set_ratio(r)
        assert_matches_reference(model, original, table, r)
        for name, entry in table.tensors.items():
            assert int((model.state_dict()[name] == 0).sum()) == max(table.k(name, r), entry.zeros)


def test_format_1_tables_still_apply(checkpoint):
    model, _ = models.load(checkpoint(seed=2, round_to=0.02))
    original = originals(model)
    table = compute_thresholds(model, RATIOS, EVERYTHING)
    data = table.to_dict()
    data["format"] = 1
    for t in data["tensors"].values():  # format 1 had no tie counts or indices
        del t["ties"], t["tie_indices"]
    old = ThresholdTable.from_dict(data)
    teacher = MaskedTeacher(model, old)
    in_memory = MaskedTeacher(copy.deepcopy(model), old)
    for r in [0.2, 0.05, 0.4, 0.0]:
        teacher.set_ratio(r)
        in_memory.set_ratio(r)
        assert_matches_reference(model, original, old, r)
        assert_matches_reference(in_memory.model, original, old, r)


def test_loaded_teacher_refuses_weights_written_behind_its_back(checkpoint):
    model, _ = models.load(checkpoint())
    table = compute_thresholds(model, RATIOS, MaskScope())
    teacher = MaskedTeacher(model, table)
    teacher.set_ratio(0.2)
    before = originals(model)
    name = next(iter(table.tensors))
    with torch.no_grad():
        model.get_parameter(name).mul_(1.0)  # same values, but an untracked write for the record
    with pytest.raises(MaskError, match="does not hold the masked state"):
        teacher.set_ratio(0.1)
    assert all(same_bits(t, before[n]) for n, t in model.state_dict().items())  # nothing written


def test_loaded_teacher_refuses_a_checkpoint_changed_on_disk(checkpoint):
    path = checkpoint()
    model, _ = models.load(path)
    teacher = MaskedTeacher(model, compute_thresholds(model, RATIOS, MaskScope()))
    teacher.set_ratio(0.2)
    (path / "config.json").write_text((path / "config.json").read_text())  # new mtime and ctime
    with pytest.raises(MaskError, match="changed on disk"):
        teacher.set_ratio(0.0)
