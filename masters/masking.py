"""Teacher masking (method.md section 1): zero each weight tensor's smallest-magnitude entries.

The rule. For a weight tensor with n entries and a ratio r, let k = round(r * n). Order the
entries by (|w|, flat index) and zero the first k. The paper's "keep w if |w| >= lambda_r" is
this rule with lambda_r = |w| at sorted position k (the first entry kept); the flat index
breaks ties between equal magnitudes (bf16/fp16 weights have many), which gives exactly k
zeroed entries in every tensor at every ratio, and nested masks (the mask at r is a prefix of
one ordering). Thresholds are per tensor, never global: a global threshold empties layers.

Masks only grow. The masked tensor's own order is the original's with the zeroed entries
first, so masking it at a larger ratio zeroes exactly what masking the original would: a
teacher is loaded once and visited at 0, 0.05, ..., r_max (generation needs no other order),
and nothing is ever restored or kept to restore. Ratio 0 writes nothing.

Where and how. In place, on the device each tensor lives on (GPU when the teacher is there),
one tensor at a time: one selection (`kthvalue`, O(n)) finds lambda, one elementwise pass
zeroes what lies below it, and the ties at lambda are taken in index order. Transient memory
is one |w| copy and one bool mask of the tensor being masked.

Scope (`MaskScope`) [D]: every floating-point 2-D weight matrix (vision tower, projector,
language model). Embeddings (names containing "embed", including a vision patch embedding kept
as a 4-D conv kernel) and the LM head ("lm_head") only when the scope enables them. Never 1-D
tensors (norm gains, biases). Other tensors of 3 or more dimensions are left alone and listed
in `MaskedTeacher.skipped`. Names sharing one storage (tied embedding / LM head) are one
tensor, masked once, under the first in-scope name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from masters.config import RATIO_DECIMALS


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


def zeroed_count(ratio: float, numel: int) -> int:
    return int(round(ratio * numel))


def check_ratio(ratio: Any) -> float:
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        raise MaskError(f"mask ratio {ratio!r} is not a number") from None
    if not (math.isfinite(r) and 0.0 <= r < 1.0):
        raise MaskError(f"mask ratio {ratio!r} is outside [0, 1)")
    return round(r, RATIO_DECIMALS)


def mask_(w: torch.Tensor, k: int) -> float | None:
    """Zero, in place, the first k entries of w's (|w|, flat index) order.

    Returns lambda, the magnitude of the first entry kept (None when k = n: nothing kept).
    """
    mag = w.detach().abs().reshape(-1)  # row-major order = flat index order
    if k >= mag.numel():
        w.detach().zero_()
        return None
    lam = mag.kthvalue(k + 1).values  # the first kept magnitude
    if k == 0:
        return float(lam)
    zero = mag < lam
    ties = k - int(zero.sum())  # the first `ties` entries at exactly lambda, in index order
    if ties:
        zero[(mag == lam).nonzero()[:ties, 0]] = True
    w.detach().masked_fill_(zero.view(w.shape), 0)
    return float(lam)


@dataclass(frozen=True)
class TensorMask:
    """One tensor at one ratio: what was zeroed and the magnitude lambda it stopped at."""

    numel: int
    k: int
    threshold: float | None
    zeros: int  # exact zeros after masking (>= k: zeros already in the weights count)


def in_scope(model, scope: MaskScope) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The tensors the scope masks (tied aliases once) and the >= 2-D ones it leaves alone."""
    tensors, skipped, seen = {}, [], set()
    for name, t in model.state_dict(keep_vars=True).items():
        if not scope.covers(name, t):
            if t.is_floating_point() and t.ndim >= 2:
                skipped.append(name)
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.shape, t.device)
        if t.numel() and key not in seen:
            seen.add(key)
            tensors[name] = t
    return tensors, skipped


class MaskedTeacher:
    """A teacher whose mask grows along ratios: `set_ratio(r)` for r at or above the current.

    Going back to a smaller ratio needs the original weights: reload the teacher.
    """

    def __init__(self, model, scope: MaskScope = MaskScope()):
        self.model = model
        self.scope = scope
        self.ratio = 0.0
        self.tensors, self.skipped = in_scope(model, scope)
        self._zeros = {n: int((t == 0).sum()) for n, t in self.tensors.items()}
        self.stats = self._mask(0.0)

    def _mask(self, r: float) -> dict[str, TensorMask]:
        # Zeros sort first, so after masking k entries max(k, zeros before) are zero: no
        # counting pass per tensor and ratio.
        out = {}
        with torch.no_grad():
            for name, t in self.tensors.items():
                k = zeroed_count(r, t.numel())
                out[name] = TensorMask(t.numel(), k, mask_(t, k), max(k, self._zeros[name]))
        return out

    def set_ratio(self, ratio: Any) -> dict[str, TensorMask]:
        """Mask every in-scope tensor at `ratio`; returns each tensor's `TensorMask`."""
        r = check_ratio(ratio)
        if r < self.ratio:
            raise MaskError(
                f"mask ratio {ratio!r} is below the teacher's current {self.ratio}: masks only "
                "grow (visit ratios in increasing order, or reload the teacher)")
        if r > self.ratio:
            self.ratio, self.stats = r, self._mask(r)
        return self.stats
