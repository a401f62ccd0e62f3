"""Teacher masking (method.md section 1): zero each weight tensor's smallest-magnitude entries.

Definition. For a weight tensor with n entries and a ratio r, let k = round(r * n). Order the
entries by (|w|, flat index), i.e. a stable sort of |w| flattened, and zero the first k. The
paper's rule "keep w if |w| >= lambda_r" is this rule with lambda_r = |w| at sorted position k
(the first entry kept). A threshold alone cannot break ties between equal magnitudes
(bf16/fp16 weights have many), the flat index does, which gives:
  * exactly k entries zeroed in every tensor, at every ratio;
  * nested masks: the mask at r is a prefix of one ordering, so it contains every mask r' < r;
  * every ratio from one sort per tensor (`compute_thresholds`).
Thresholds are per tensor, never global: a global threshold empties whole layers.

Scope (`MaskScope`) [D]: every floating-point 2-D weight matrix (vision tower, projector,
language model). Embeddings (names containing "embed", including a vision patch embedding kept
as a 4-D conv kernel) and the LM head ("lm_head") only when the scope enables them. Never 1-D
tensors (norm gains, biases). Other tensors of 3 or more dimensions are left alone and listed
in `ThresholdTable.skipped`, so a checkpoint with e.g. fused 3-D expert weights shows it. Names
sharing one storage (tied embedding / LM head) are one tensor, masked once, under the first
in-scope name.

The table. `ThresholdTable` holds k and lambda_r for every tensor and ratio, plus the fingerprint
of the checkpoint it was computed from: a small JSON file instead of one checkpoint copy per
ratio (method.md [D]). Applying it needs no sort: the first k entries of the order are the
entries below lambda_r plus the first ties at lambda_r in index order, an O(n) selection that
gives the same set as the sort because the fingerprint check guarantees the same bytes.

Restoring. `apply_mask` / `MaskedTeacher` zero weights in place and keep a `RestoreRecord`: for
each tensor, the flat indices (ascending) of the entries zeroed at the highest ratio reached so
far and their original values. Any ratio up to that high-water mark is reached from the record
alone, O(k): the threshold-and-ties rule applied to the recorded original values says which of
them are zeroed, the rest are written back. Going beyond it writes the record back and selects
afresh from the tensor, O(n). No sort is ever needed to apply a table. Ratio 0 is
bit-identical to the original.

Memory. The record costs round(r_hw * n) * (index bytes + value bytes) per tensor, r_hw the
highest ratio reached; indices are int32 below 2**31 entries. At r = 0.2 with bf16 weights that
is 0.2 * (4 + 2) = 1.2 bytes per masked parameter (60% of the masked tensors' size); it lives
on `record_device` (CPU by default), so it costs no accelerator memory. Sorting works on one
tensor at a time (transient abs copy and int64 order of that tensor); the model is never copied.
"""

from __future__ import annotations

import json
import math
import types
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from masters import models
from masters.config import RATIO_DECIMALS

FORMAT = 1


class MaskError(ValueError):
    """A mask that cannot be applied as asked (the message says which value and why)."""


@dataclass(frozen=True)
class MaskScope:
    include_embeddings: bool = False
    include_lm_head: bool = False

    def covers(self, name: str, tensor: torch.Tensor) -> bool:
        if not tensor.is_floating_point() or tensor.ndim < 2:
            return False
        if "lm_head" in name:
            return self.include_lm_head
        if "embed" in name:
            return self.include_embeddings
        return tensor.ndim == 2


def fingerprint_state_dict(state_dict: Mapping[str, torch.Tensor]) -> str:
    """`models.fingerprint` of a bare state_dict: one hash definition, so the two cannot drift."""
    return models.fingerprint(types.SimpleNamespace(state_dict=lambda: state_dict))


def zeroed_count(ratio: float, numel: int) -> int:
    return int(round(ratio * numel))


def _check_ratio(ratio: Any) -> float:
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        raise MaskError(f"mask ratio {ratio!r} is not a number") from None
    if not (math.isfinite(r) and 0.0 <= r < 1.0):
        raise MaskError(f"mask ratio {ratio!r} is outside [0, 1)")
    return round(r, RATIO_DECIMALS)


@dataclass
class TensorMask:
    """One tensor's row of the table; `k` and `thresholds` are aligned with the table's ratios."""

    shape: list[int]
    dtype: str
    k: list[int]
    thresholds: list[float | None]  # |w| of the first kept entry; None when nothing is kept
    zeros: int  # entries already exactly 0 before masking

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class ThresholdTable:
    fingerprint: str
    ratios: list[float]
    scope: MaskScope
    tensors: dict[str, TensorMask]
    skipped: list[str] = field(default_factory=list)

    def index(self, ratio: Any) -> int:
        r = _check_ratio(ratio)
        if r not in self.ratios:
            raise MaskError(
                f"mask ratio {ratio!r} is not in the threshold table (allowed: "
                f"{', '.join(str(x) for x in self.ratios)})"
            )
        return self.ratios.index(r)

    def k(self, name: str, ratio: float) -> int:
        return self.tensors[name].k[self.index(ratio)]

    def threshold(self, name: str, ratio: float) -> float | None:
        return self.tensors[name].thresholds[self.index(ratio)]

    def sparsity(self, name: str, ratio: float) -> float:
        """Fraction of exact zeros after masking (zeros sort first, so they are masked first)."""
        t = self.tensors[name]
        return max(t.k[self.index(ratio)], t.zeros) / t.numel

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "ratios": self.ratios,
            "scope": asdict(self.scope),
            "skipped": self.skipped,
            "tensors": {name: asdict(t) for name, t in self.tensors.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ThresholdTable:
        if data.get("format") != FORMAT:
            raise MaskError(f"threshold table format {data.get('format')!r} is not {FORMAT}")
        return cls(
            fingerprint=data["fingerprint"],
            ratios=[float(r) for r in data["ratios"]],
            scope=MaskScope(**data["scope"]),
            tensors={name: TensorMask(**t) for name, t in data["tensors"].items()},
            skipped=list(data.get("skipped", [])),
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> ThresholdTable:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _in_scope(
    state_dict: Mapping[str, torch.Tensor], scope: MaskScope, skipped: list[str]
) -> Iterator[tuple[str, torch.Tensor]]:
    seen: set[tuple] = set()
    for name, tensor in state_dict.items():
        if not scope.covers(name, tensor):
            if tensor.is_floating_point() and tensor.ndim >= 2:
                skipped.append(name)
            continue
        if tensor.numel() == 0:
            continue
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(),
               tuple(tensor.shape), tuple(tensor.stride()), tensor.device)
        if key in seen:  # a tied alias of a tensor already in the table
            continue
        seen.add(key)
        yield name, tensor


def compute_thresholds(
    model_or_state_dict, ratios: Iterable[float], scope: MaskScope = MaskScope()
) -> ThresholdTable:
    """Per-tensor k and lambda_r for every ratio (0 always included), one sort per tensor."""
    if isinstance(model_or_state_dict, Mapping):
        state_dict = model_or_state_dict
        fp = fingerprint_state_dict(state_dict)
    else:
        state_dict = model_or_state_dict.state_dict()
        fp = models.fingerprint(model_or_state_dict)
    table_ratios = sorted({_check_ratio(r) for r in ratios} | {0.0})
    skipped: list[str] = []
    tensors: dict[str, TensorMask] = {}
    with torch.no_grad():
        for name, tensor in _in_scope(state_dict, scope, skipped):
            flat = tensor.detach().reshape(-1)
            n = flat.numel()
            magnitudes = torch.sort(flat.abs(), stable=True).values
            ks = [zeroed_count(r, n) for r in table_ratios]
            kept = [k for k in ks if k < n]
            values = magnitudes[torch.tensor(kept, device=flat.device)].tolist() if kept else []
            thresholds = [float(v) for v in values] + [None] * (len(ks) - len(kept))
            tensors[name] = TensorMask(
                shape=list(tensor.shape),
                dtype=str(tensor.dtype).removeprefix("torch."),
                k=ks,
                thresholds=thresholds,
                zeros=int((flat == 0).sum()),
            )
    return ThresholdTable(fp, table_ratios, scope, tensors, skipped)


@dataclass
class RestoreRecord:
    """The way back to the original weights: zeroed entries' flat indices and values."""

    fingerprint: str  # of the original, unmasked weights
    ratio: float = 0.0  # the ratio the model holds now
    indices: dict[str, torch.Tensor] = field(default_factory=dict)  # ascending, high-water
    values: dict[str, torch.Tensor] = field(default_factory=dict)

    def nbytes(self) -> int:
        tensors = [*self.indices.values(), *self.values.values()]
        return sum(t.numel() * t.element_size() for t in tensors)


def _check_fingerprint(table: ThresholdTable, model_fingerprint: str) -> None:
    if table.fingerprint != model_fingerprint:
        raise MaskError(
            f"threshold table was computed for checkpoint {table.fingerprint} but the model's "
            f"original weights are {model_fingerprint}: recompute the table for this checkpoint "
            "(or, if the model is already masked, pass its RestoreRecord)"
        )


def _new_record(model, table: ThresholdTable) -> RestoreRecord:
    fp = models.fingerprint(model)
    _check_fingerprint(table, fp)
    return RestoreRecord(fingerprint=fp)


def _flat_views(model, table: ThresholdTable) -> dict[str, torch.Tensor]:
    """Flat views sharing storage with the model's tensors, so writes land in the model."""
    state_dict = model.state_dict()
    views = {}
    for name, entry in table.tensors.items():
        tensor = state_dict.get(name)
        if tensor is None or list(tensor.shape) != entry.shape:
            got = None if tensor is None else list(tensor.shape)
            raise MaskError(f"tensor {name!r}: table has shape {entry.shape}, model has {got}")
        if not tensor.is_contiguous():
            raise MaskError(f"tensor {name!r} is not contiguous; cannot mask it in place")
        views[name] = tensor.view(-1)
    return views


def _select(flat: torch.Tensor, entry: TensorMask, j: int) -> torch.Tensor:
    """Flat indices (ascending) of the first k_j entries of the (|w|, index) order, in O(n).

    They are exactly the entries below lambda_j plus the first ties at lambda_j in index
    order: the same set a stable sort would give, without sorting.
    """
    lam = entry.thresholds[j]
    if lam is None:  # k == n
        return torch.arange(flat.numel(), device=flat.device)
    mag = flat.abs()
    lam_t = torch.tensor(lam, dtype=flat.dtype, device=flat.device)
    below = mag < lam_t
    need = entry.k[j] - int(below.sum())
    if need < 0:
        raise MaskError("weights do not match the threshold table (were they changed?)")
    if need:
        ties = (mag == lam_t).nonzero().squeeze(1)
        if ties.numel() < need:
            raise MaskError("weights do not match the threshold table (were they changed?)")
        below[ties[:need]] = True
    return below.nonzero().squeeze(1)


def _zeroed_within(values: torch.Tensor, entry: TensorMask, j: int) -> torch.Tensor:
    """Which recorded entries (ascending index order) are zeroed at table ratio j.

    The record holds a superset of the mask at j with the original values, so the same
    threshold-and-ties rule decides it without looking at the rest of the tensor.
    """
    lam = entry.thresholds[j]
    if lam is None:
        return torch.ones(values.numel(), dtype=torch.bool, device=values.device)
    mag = values.abs()
    lam_t = torch.tensor(lam, dtype=values.dtype, device=values.device)
    keep_zero = mag < lam_t
    need = entry.k[j] - int(keep_zero.sum())
    if need > 0:
        ties = mag == lam_t
        keep_zero |= ties & (torch.cumsum(ties, 0) <= need)
    return keep_zero


def apply_mask(
    model,
    table: ThresholdTable,
    ratio: float,
    original_state: RestoreRecord | None = None,
    *,
    record_device: str | torch.device = "cpu",
) -> RestoreRecord:
    """Put the model at `ratio` in place; returns the record to pass next time.

    Without `original_state` the model must hold the original weights the table was computed
    for (checked by fingerprint). With it, the model must be as that record left it.
    """
    i = table.index(ratio)
    r = table.ratios[i]
    record = _new_record(model, table) if original_state is None else original_state
    _check_fingerprint(table, record.fingerprint)
    views = _flat_views(model, table)
    cur = table.index(record.ratio)
    with torch.no_grad():
        # Check every tensor before writing any, so a refusal leaves the model untouched.
        for name, flat in views.items():
            idx = record.indices.get(name)
            if idx is None or not table.tensors[name].k[cur]:
                continue
            zeroed = _zeroed_within(record.values[name], table.tensors[name], cur)
            if bool(flat[idx[zeroed.to(idx.device)].to(flat.device, torch.long)].any()):
                raise MaskError(
                    f"tensor {name!r} does not hold the masked state its record describes "
                    "(were the weights reloaded?)"
                )
        for name, flat in views.items():
            entry = table.tensors[name]
            idx, vals = record.indices.get(name), record.values.get(name)
            if entry.k[i] > (0 if idx is None else idx.numel()):
                # Beyond the high-water mark: back to the original bits, select afresh.
                if idx is not None:
                    flat[idx.to(flat.device, torch.long)] = vals.to(flat.device)
                sel = _select(flat, entry, i)
                index_dtype = torch.int32 if flat.numel() < 2**31 else torch.int64
                idx, vals = sel.to(record_device, index_dtype), flat[sel].to(record_device)
                record.indices[name], record.values[name] = idx, vals
                flat[sel] = 0
                continue
            if idx is None:
                continue
            zeroed = _zeroed_within(vals, entry, i)
            pos = idx.to(flat.device, torch.long)
            z = zeroed.to(flat.device)
            flat[pos[~z]] = vals.to(flat.device)[~z]
            flat[pos[z]] = 0
    record.ratio = r
    return record


class MaskedTeacher:
    """A teacher model that moves along its mask staircase in place: `set_ratio(r)`.

    Holds the model, its table and a `RestoreRecord` (memory: see the module docstring).
    Construction checks the table's fingerprint against the model's (unmasked) weights.
    """

    def __init__(self, model, table: ThresholdTable, *, record_device="cpu"):
        self.model = model
        self.table = table
        self.record_device = record_device
        self.record = _new_record(model, table)

    @property
    def ratio(self) -> float:
        return self.record.ratio

    def set_ratio(self, ratio: float) -> None:
        apply_mask(self.model, self.table, ratio, self.record, record_device=self.record_device)

    def restore(self) -> None:
        self.set_ratio(0.0)
