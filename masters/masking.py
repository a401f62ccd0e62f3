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

The table. `ThresholdTable` holds, for every tensor and ratio, k, lambda_r and the ties: how
many entries exactly at lambda_r are among the first k (and, when there are at most
MAX_TIE_INDICES of them, their flat indices), plus the fingerprint of the checkpoint it was
computed from: a small JSON file instead of one checkpoint copy per ratio (method.md [D]).
Applying it needs no sort: the first k entries of the order are the entries below lambda_r plus
the first ties at lambda_r in index order, which gives the same set as the sort because the
fingerprint check guarantees the same bytes. The entries below lambda_r are one elementwise
test (for a mapped tensor, below, one fused pass: `torch.hardshrink` at the largest value below
lambda_r in the tensor's dtype, i.e. |w| < lambda_r exactly); the ties are taken by index from
the table, and only a table without them (more than MAX_TIE_INDICES ties at one threshold, or a
format-1 table) scans the tensor for them.

Restoring. `apply_mask` / `MaskedTeacher` keep a `RestoreRecord`, the way back to the original
bits; ratio 0 is bit-identical to the original. Two kinds of tensors:
  * mapped: the model came from `models.load`, is untouched since, its folder is unchanged, and
    the tensor is a copy-on-write map of the checkpoint file (transformers' zero-copy safetensors
    load: page-cache pages, no private memory). The record keeps that original tensor; the
    parameter is pointed at a private buffer holding the masked values, written in one fused
    pass from the original at every ratio change, and ratio 0 points it back at the original.
    Nothing is copied or compacted for the record, and the buffer costs what zeroing in place
    would cost (every page of a masked tensor is written either way). The checkpoint's files
    are stat-checked at every change: a file rewritten in place would show through the map;
  * in memory (any other tensor: built in memory, converted on load, on an accelerator): the
    weights are zeroed in place and the record holds, for each tensor, the flat indices
    (ascending) of the entries zeroed at the highest ratio reached so far and their original
    values. Any ratio up to that high-water mark is reached from the record alone, O(k): the
    threshold-and-ties rule applied to the recorded original values says which of them are
    zeroed, the rest are written back. Going beyond it writes the record back and selects
    afresh from the tensor, O(n).
Between calls the record notes each mapped parameter's storage and version counter, and checks
the in-memory tensors' zeroed entries, so a model reloaded or written behind its back is refused
before anything is written. No sort is ever needed to apply a table.

Cost. Materialising a masked teacher right after `models.load` is one fingerprint-cache lookup
(no hashing: see `models.fingerprint`) and one fused pass per masked tensor; no copy of the
model is made. Every page of a masked tensor is written, so the operating system must provide
that many private pages (zero-filled or copy-on-write): that, not the arithmetic, is the floor
of the cost, and on a virtual machine most of it. An in-memory record costs round(r_hw * n) *
(index bytes + value bytes) per tensor, r_hw the highest ratio reached; indices are int32 below
2**31 entries. At r = 0.2 with bf16 weights that is 0.2 * (4 + 2) = 1.2 bytes per masked
parameter (60% of the masked tensors' size); it lives on `record_device` (CPU by default), so it
costs no accelerator memory. A mapped tensor's record costs nothing. Sorting
(`compute_thresholds`) works on one tensor at a time (transient abs copy and int64 order).
"""

from __future__ import annotations

import json
import math
import mmap
import types
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from masters import models
from masters.config import RATIO_DECIMALS

FORMAT = 2  # 2: tie counts and tie indices per ratio (format 1 tables still load)
MAX_TIE_INDICES = 64  # more ties than this at one threshold: stored as a count, found by a scan


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
    # Entries exactly at the threshold that are zeroed (k minus the entries below it), and
    # their flat indices (ascending) when there are at most MAX_TIE_INDICES; None for a
    # format-1 table, which counts them when applied.
    ties: list[int] | None = None
    tie_indices: list[list[int] | None] | None = None

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
        if data.get("format") not in (1, FORMAT):
            raise MaskError(f"threshold table format {data.get('format')!r} is not 1 or {FORMAT}")
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
            magnitudes, order = torch.sort(flat.abs(), stable=True)  # (|w|, index) order
            ks = [zeroed_count(r, n) for r in table_ratios]
            kept = [k for k in ks if k < n]
            lams = magnitudes[torch.tensor(kept, dtype=torch.long, device=flat.device)]
            # Entries below each threshold: the ties are the rest of the first k, and stable
            # sorting leaves them in index order.
            below = torch.searchsorted(magnitudes, lams).tolist() if kept else []
            thresholds = [float(v) for v in lams.tolist()] + [None] * (len(ks) - len(kept))
            ties, tie_indices = [], []
            for j, k in enumerate(ks):
                t = max(k - below[j], 0) if j < len(kept) else 0
                ties.append(t)
                tie_indices.append(sorted(order[k - t : k].tolist()) if t <= MAX_TIE_INDICES
                                   else None)
            tensors[name] = TensorMask(
                shape=list(tensor.shape),
                dtype=str(tensor.dtype).removeprefix("torch."),
                k=ks,
                thresholds=thresholds,
                zeros=int((flat == 0).sum()),
                ties=ties,
                tie_indices=tie_indices,
            )
    return ThresholdTable(fp, table_ratios, scope, tensors, skipped)


@dataclass
class RestoreRecord:
    """The way back to the original weights (module docstring: mapped or in memory)."""

    fingerprint: str  # of the original, unmasked weights
    ratio: float = 0.0  # the ratio the model holds now
    indices: dict[str, torch.Tensor] = field(default_factory=dict)  # ascending, high-water
    values: dict[str, torch.Tensor] = field(default_factory=dict)
    origin: models.CheckpointOrigin | None = None  # the folder the mapped originals come from
    originals: dict[str, torch.Tensor] = field(default_factory=dict)  # mapped: never written
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)  # mapped: masked values
    # Per mapped tensor: (storage, version counter) of its parameter as this record left it.
    written: dict[str, tuple[int, int]] = field(default_factory=dict)

    def nbytes(self) -> int:
        """Memory held only to restore: the in-memory tensors' indices and values."""
        tensors = [*self.indices.values(), *self.values.values()]
        return sum(t.numel() * t.element_size() for t in tensors)


def _check_fingerprint(table: ThresholdTable, model_fingerprint: str) -> None:
    if table.fingerprint != model_fingerprint:
        raise MaskError(
            f"threshold table was computed for checkpoint {table.fingerprint} but the model's "
            f"original weights are {model_fingerprint}: recompute the table for this checkpoint "
            "(or, if the model is already masked, pass its RestoreRecord)"
        )


def _mark(tensor: torch.Tensor) -> tuple[int, int]:
    return tensor.data_ptr(), tensor._version


def _parameters(model) -> dict[str, torch.nn.Parameter]:
    named = getattr(model, "named_parameters", None)
    return dict(named(remove_duplicate=False)) if named else {}


def _new_record(model, table: ThresholdTable) -> RestoreRecord:
    fp = models.fingerprint(model)
    _check_fingerprint(table, fp)
    record = RestoreRecord(fingerprint=fp)
    origin = models.origin(model)
    if origin is None:
        return record
    mapped = models.file_mapped(model, origin) & set(table.tensors)
    if not mapped:
        return record
    params = _parameters(model)
    # A mapped parameter gets re-pointed, so its storage must be reachable through that one
    # Parameter object only (tied weights are one object under two names).
    owners: dict[int, set[int]] = {}
    for t in [*params.values(), *model.buffers()]:
        owners.setdefault(t.untyped_storage().data_ptr(), set()).add(id(t))
    for name in mapped:
        p = params.get(name)
        if p is None or len(owners[p.untyped_storage().data_ptr()]) != 1:
            continue
        record.originals[name] = p.detach()
        record.written[name] = _mark(p)
    if record.originals:
        record.origin = origin
    return record


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


_INT_OF = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}


def _just_below(lam: float, dtype: torch.dtype) -> float:
    """The largest value of `dtype` below lam > 0: |w| <= it  <=>  |w| < lam, for w in dtype."""
    bits = torch.tensor([lam], dtype=dtype).view(_INT_OF[dtype.itemsize])
    return float((bits - 1).view(dtype)[0])


def _ties(flat: torch.Tensor, entry: TensorMask, j: int, lam: float, done: int = 0):
    """Flat indices of the entries at exactly lambda_j that are zeroed at ratio j, or None.

    From the table when it lists them; otherwise the first ones in index order of a scan, of
    which the first `done` are already zero in `flat` (so no longer found by the scan).
    """
    if entry.tie_indices is not None and entry.tie_indices[j] is not None:
        if not entry.tie_indices[j]:
            return None
        return torch.tensor(entry.tie_indices[j], dtype=torch.long, device=flat.device)
    mag = flat.abs()
    lam_t = torch.tensor(lam, dtype=flat.dtype, device=flat.device)
    if entry.ties is None:  # format 1: count what the threshold leaves (zeroed entries count)
        need = entry.k[j] - (int((mag < lam_t).sum()) if lam > 0 else 0)
    else:
        need = entry.ties[j] - done
    if need < 0:
        raise MaskError("weights do not match the threshold table (were they changed?)")
    if not need:
        return None
    ties = (mag == lam_t).nonzero().squeeze(1)[:need]
    if ties.numel() < need:
        raise MaskError("weights do not match the threshold table (were they changed?)")
    return ties


# torch runs an elementwise op on fewer elements than its grain size (32768) inline, in the
# calling thread; larger ones fan out to its OpenMP team, whose barriers stall badly when
# another process holds a core. The mapped path masks in chunks below that size instead, on
# `torch.get_num_threads()` Python threads (torch releases the GIL), one tensor per task.
_INLINE_CHUNK = 16384


def _mask_into(original: torch.Tensor, out: torch.Tensor, entry: TensorMask, j: int,
               chunk: int | None = None) -> None:
    """out = `original` (flat) with the first k_j entries of its (|w|, index) order zeroed.

    One fused pass (entries below lambda_j, in chunks of `chunk` entries if given; `out` may
    be `original`), then the ties by index.
    """
    lam = entry.thresholds[j]
    if lam is None:  # k == n
        out.zero_()
        return
    if entry.k[j] and lam > 0:
        below = _just_below(lam, original.dtype)
        step = chunk or original.numel()
        for start in range(0, original.numel(), step):
            stop = start + step
            torch.hardshrink(original[start:stop], below, out=out[start:stop])
    elif out.data_ptr() != original.data_ptr():
        out.copy_(original)
    if entry.k[j]:
        ties = _ties(out, entry, j, lam)
        if ties is not None:
            out[ties] = 0


_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # Linux


def _new_buffer(like: torch.Tensor) -> torch.Tensor:
    """A private, contiguous tensor shaped like `like`, its own storage.

    On Linux CPU an anonymous map the kernel fills with zeroed pages in the one mmap call
    (MAP_POPULATE): about half the cost of taking a page fault per 4 kB page while writing it.
    """
    nbytes = like.numel() * like.element_size()
    if like.device.type != "cpu" or not _POPULATE or nbytes < 1 << 16:
        return torch.empty_like(like, memory_format=torch.contiguous_format)
    area = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _POPULATE)
    return torch.frombuffer(area, dtype=like.dtype).view(like.shape)


def _masked_buffers(record: RestoreRecord, table: ThresholdTable, names: list[str],
                    i: int) -> dict[str, torch.Tensor]:
    """For each mapped tensor with k_i > 0: its buffer holding the original masked at ratio i."""

    todo = [name for name in names if table.tensors[name].k[i]]
    # Allocated first: creating a map holds the GIL, which would stall the workers' loops.
    buffers = {name: record.buffers.get(name) for name in todo}
    buffers = {name: _new_buffer(record.originals[name]) if b is None else b
               for name, b in buffers.items()}

    def work(name: str) -> None:
        with torch.no_grad():
            _mask_into(record.originals[name].reshape(-1), buffers[name].view(-1),
                       table.tensors[name], i, _INLINE_CHUNK)

    workers = max(1, min(torch.get_num_threads(), len(todo)))
    if workers == 1:
        for name in todo:
            work(name)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(work, todo))
    return buffers


def _select(flat: torch.Tensor, entry: TensorMask, j: int) -> torch.Tensor:
    """Flat indices (ascending) of the first k_j entries of the (|w|, index) order, in O(n).

    They are exactly the entries below lambda_j plus the first ties at lambda_j in index
    order: the same set a stable sort would give, without sorting.
    """
    lam = entry.thresholds[j]
    if lam is None:  # k == n
        return torch.arange(flat.numel(), device=flat.device)
    below = flat.abs() < torch.tensor(lam, dtype=flat.dtype, device=flat.device)
    ties = _ties(flat, entry, j, lam)
    if ties is not None:
        below[ties] = True
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


def _check_state(record: RestoreRecord, table: ThresholdTable, views, cur: int) -> None:
    """Refuse, before anything is written, a model that is not as the record left it."""
    if record.origin is not None and not record.origin.unchanged():
        raise MaskError(
            f"checkpoint {str(record.origin.path)!r} changed on disk since the teacher was "
            "loaded: the original weights mapped from it can no longer be trusted; reload it"
        )
    for name, flat in views.items():
        entry = table.tensors[name]
        if name in record.originals:
            if record.written.get(name) != _mark(flat):
                raise MaskError(
                    f"tensor {name!r} does not hold the masked state its record describes "
                    "(were the weights reloaded or written since?)"
                )
            continue
        idx = record.indices.get(name)
        if idx is None or not entry.k[cur]:
            continue
        zeroed = _zeroed_within(record.values[name], entry, cur)
        if bool(flat[idx[zeroed.to(idx.device)].to(flat.device, torch.long)].any()):
            raise MaskError(
                f"tensor {name!r} does not hold the masked state its record describes "
                "(were the weights reloaded?)"
            )


def apply_mask(
    model,
    table: ThresholdTable,
    ratio: float,
    original_state: RestoreRecord | None = None,
    *,
    record_device: str | torch.device = "cpu",
) -> RestoreRecord:
    """Put the model at `ratio`; returns the record to pass next time.

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
        _check_state(record, table, views, cur)
        if record.originals:
            _apply_mapped(model, record, table, i)
        for name, flat in views.items():
            if name not in record.originals:
                _apply_in_memory(record, flat, name, table.tensors[name], i, record_device)
    record.ratio = r
    return record


def _apply_mapped(model, record: RestoreRecord, table: ThresholdTable, i: int) -> None:
    """Point each mapped parameter at its original (k = 0) or at a buffer masked from it."""
    buffers = _masked_buffers(record, table, list(record.originals), i)
    params = _parameters(model)
    for name, original in record.originals.items():
        param = params[name]
        target = buffers.get(name, original)
        if param.data_ptr() != target.data_ptr():
            param.data = target
        record.written[name] = _mark(param)
    record.buffers = buffers  # a tensor back at its original frees its buffer


def _apply_in_memory(record: RestoreRecord, flat: torch.Tensor, name: str,
                     entry: TensorMask, i: int, record_device) -> None:
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
        return
    if idx is None:
        return
    zeroed = _zeroed_within(vals, entry, i)
    pos = idx.to(flat.device, torch.long)
    z = zeroed.to(flat.device)
    flat[pos[~z]] = vals.to(flat.device)[~z]
    flat[pos[z]] = 0


class MaskedTeacher:
    """A teacher model that moves along its mask staircase: `set_ratio(r)`.

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
