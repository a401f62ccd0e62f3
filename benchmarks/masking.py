"""Masking engine costs: one-pass thresholds vs per-ratio passes, masked vs plain load, disk.

The paper writes one checkpoint per ratio; we keep one table and apply it at load time. This
measures what that costs, as ratios within one run on one machine.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from masters import embedded, models
from masters.masking import MaskedTeacher, MaskScope, compute_thresholds, zeroed_count

RATIOS = [round(0.05 * i, 2) for i in range(9)]  # 0 .. 0.4: M = 9


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def per_ratio_thresholds(model, ratios, scope: MaskScope | None = None) -> dict:
    """The naive way: a fresh selection per ratio per tensor (what one-pass replaces)."""
    scope = scope or MaskScope()
    out = {}
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not scope.covers(name, t):
                continue
            mags = t.detach().reshape(-1).abs()
            for r in ratios:
                k = zeroed_count(r, mags.numel())
                if 0 < k < mags.numel():
                    out[(name, r)] = float(torch.sort(mags, stable=True).values[k])
    return out


def _bench_model(shape: str | embedded.ModelShape, seed: int = 0):
    model, processor = embedded.build(shape, seed=seed)
    return model.eval(), processor


def run(repeats: int = 3) -> dict:
    results = {"ratios": RATIOS}
    # A model of a few tens of millions of parameters: big enough that fixed overheads do not
    # dominate, small enough for a 2-core CPU.
    shape = embedded.ModelShape(512, 6, 8, 2048, 512, 8, 8, 1536)
    model, processor = _bench_model(shape)
    n_params = embedded.n_params(model)
    results["params"] = n_params
    one_pass = _best(lambda: compute_thresholds(model, RATIOS), repeats)
    naive = _best(lambda: per_ratio_thresholds(model, RATIOS), max(1, repeats - 1))
    results["thresholds_one_pass_s"] = one_pass
    results["thresholds_per_ratio_s"] = naive
    results["thresholds_speedup"] = naive / one_pass

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = embedded.save(model, processor, Path(tmp) / "teacher")
        table = compute_thresholds(model, RATIOS)
        table_path = table.save(Path(tmp) / "table.json")

        def plain():
            models.load(ckpt)

        def masked(ratio=0.2):
            m, _ = models.load(ckpt)
            MaskedTeacher(m, table).set_ratio(ratio)

        plain_s = statistics.median(_best(plain, 1) for _ in range(repeats))
        masked_s = statistics.median(_best(masked, 1) for _ in range(repeats))
        results["load_plain_s"] = plain_s
        results["load_masked_s"] = masked_s
        results["load_masked_over_plain"] = masked_s / plain_s
        ckpt_bytes = sum(p.stat().st_size for p in ckpt.glob("*.safetensors"))
        results["checkpoint_bytes"] = ckpt_bytes
        results["table_bytes"] = table_path.stat().st_size
        results["per_ratio_checkpoints_bytes_paper"] = ckpt_bytes * (len(RATIOS) - 1)
    return results


def markdown(r: dict) -> str:
    m = len(r["ratios"])
    return "\n".join([
        f"Model: embedded LLaVA shape with {r['params'] / 1e6:.1f}M parameters; "
        f"M = {m} ratios ({r['ratios'][0]} .. {r['ratios'][-1]}).",
        "",
        "| measurement | value |",
        "|---|---|",
        f"| thresholds for all M ratios, one sort per tensor | "
        f"{r['thresholds_one_pass_s']:.3f} s |",
        f"| thresholds, one sort per tensor per ratio | {r['thresholds_per_ratio_s']:.3f} s |",
        f"| **speed-up** (expect ~M = {m}x) | **{r['thresholds_speedup']:.1f}x** |",
        f"| plain checkpoint load | {r['load_plain_s']:.3f} s |",
        f"| load + materialise masked teacher at r=0.2 | {r['load_masked_s']:.3f} s |",
        f"| **masked / plain** (target <= 1.3x) | **{r['load_masked_over_plain']:.2f}x** |",
        f"| checkpoint on disk | {r['checkpoint_bytes'] / 1e6:.1f} MB |",
        f"| threshold table on disk (all ratios) | {r['table_bytes'] / 1e3:.1f} kB |",
        f"| extra disk per ratio | 0 B (the paper's way: "
        f"{r['checkpoint_bytes'] / 1e6:.1f} MB each, "
        f"{r['per_ratio_checkpoints_bytes_paper'] / 1e6:.0f} MB for {m - 1} masked copies) |",
    ])
