"""Masking engine costs: one-pass thresholds vs per-ratio passes, masked vs plain load, disk.

The paper writes one checkpoint per ratio; we keep one table and apply it at load time. This
measures what that costs, as ratios within one run on one machine.

Loads are timed in fresh processes (warm page cache, cold process), as a pipeline task loads a
teacher, so no run inherits memory or state from the one before; each process first loads the
small embedded student to import and initialise the libraries, untimed. Kinds alternate and
the median of `repeats` runs per kind is reported.
  * plain: the bare Auto-class load (`from_pretrained` + `AutoProcessor`, safetensors), without
    the checks and provenance bookkeeping `models.load` adds;
  * masked: everything a user pays for a masked teacher: `models.load`, reading the threshold
    table, `MaskedTeacher` (fingerprint check) and `set_ratio(0.2)`. The fingerprint comes
    from the fingerprint cache, which the first fingerprint of the checkpoint filled (here a
    prune-like load + fingerprint, as `masters prune` does);
  * masked, cold: the same with an empty fingerprint cache (the first use of a checkpoint:
    every weight is hashed);
  * OS floor: fresh private pages as large as the masked tensors (anonymous mmap with
    MAP_POPULATE, no computation): what writing any masked copy, or masking in place, needs at
    least, since transformers maps the checkpoint zero-copy and the plain load writes nothing.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from masters import embedded, models
from masters.masking import MaskScope, compute_thresholds, zeroed_count

RATIOS = [round(0.05 * i, 2) for i in range(9)]  # 0 .. 0.4: M = 9

_CHILD = r"""
import json, mmap, os, sys, time
import torch
from masters import models
from masters.masking import MaskedTeacher, ThresholdTable
kind, ckpt, table_path = sys.argv[1:4]
models.load("embedded:student")  # imports and first-call set-up, untimed
out = {}
if kind == "plain":
    from transformers import AutoModelForImageTextToText, AutoProcessor
    t0 = time.perf_counter()
    model = AutoModelForImageTextToText.from_pretrained(ckpt, dtype=torch.float32,
                                                        use_safetensors=True)
    AutoProcessor.from_pretrained(ckpt)
    model.eval()
    out["s"] = time.perf_counter() - t0
elif kind == "floor":
    nbytes = int(table_path)
    t0 = time.perf_counter()
    mm = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
    out["s"] = time.perf_counter() - t0
else:
    t0 = time.perf_counter()
    model, _ = models.load(ckpt)
    teacher = MaskedTeacher(model, ThresholdTable.load(table_path))
    teacher.set_ratio(0.2)
    out["s"] = time.perf_counter() - t0
    out["mapped"] = len(teacher.record.originals)
    out["record_bytes"] = teacher.record.nbytes()
    t0 = time.perf_counter()
    teacher.set_ratio(0.15)
    out["lower_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    teacher.set_ratio(0.0)
    out["restore_s"] = time.perf_counter() - t0
print("RESULT " + json.dumps(out))
"""


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


def _child(kind: str, ckpt: Path, arg: str, fingerprint_cache: Path) -> dict:
    env = dict(os.environ, **{models.FINGERPRINT_CACHE_ENV: str(fingerprint_cache)})
    proc = subprocess.run([sys.executable, "-c", _CHILD, kind, str(ckpt), arg], env=env,
                          capture_output=True, text=True, check=True)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def run(repeats: int = 3, load_repeats: int = 5) -> dict:
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
        masked_bytes = sum(e.numel * 4 for e in table.tensors.values())
        cache = Path(tmp) / "fingerprints"
        # A checkpoint written moments ago is never trusted by stat (models.RACY_NS).
        age = time.time_ns() - max(p.stat().st_ctime_ns for p in ckpt.iterdir())
        time.sleep(max(0.0, (models.RACY_NS - age) / 1e9 + 0.1))
        prune = _child("masked", ckpt, str(table_path), cache)  # fills the fingerprint cache
        runs: dict[str, list[dict]] = {"plain": [], "masked": [], "cold": [], "floor": []}
        for i in range(load_repeats):
            runs["plain"].append(_child("plain", ckpt, "", cache))
            runs["masked"].append(_child("masked", ckpt, str(table_path), cache))
            runs["cold"].append(_child("masked", ckpt, str(table_path),
                                       Path(tmp) / f"empty-{i}"))
            runs["floor"].append(_child("floor", ckpt, str(masked_bytes), cache))

        def median(kind, key="s"):
            return statistics.median(r[key] for r in runs[kind])

        results["load_plain_s"] = median("plain")
        results["load_masked_s"] = median("masked")
        results["load_masked_cold_s"] = median("cold")
        results["load_masked_over_plain"] = results["load_masked_s"] / results["load_plain_s"]
        results["load_masked_cold_over_plain"] = (results["load_masked_cold_s"]
                                                  / results["load_plain_s"])
        results["fresh_pages_s"] = median("floor")
        results["masked_bytes"] = masked_bytes
        results["lower_ratio_s"] = median("masked", "lower_s")
        results["restore_s"] = median("masked", "restore_s")
        results["mapped_tensors"] = prune["mapped"]
        results["masked_tensors"] = len(table.tensors)
        results["record_bytes"] = prune["record_bytes"]
        ckpt_bytes = sum(p.stat().st_size for p in ckpt.glob("*.safetensors"))
        results["checkpoint_bytes"] = ckpt_bytes
        results["table_bytes"] = table_path.stat().st_size
        results["per_ratio_checkpoints_bytes_paper"] = ckpt_bytes * (len(RATIOS) - 1)
        results["repeats"] = load_repeats
    return results


def markdown(r: dict) -> str:
    m = len(r["ratios"])
    return "\n".join([
        f"Model: embedded LLaVA shape with {r['params'] / 1e6:.1f}M parameters; "
        f"M = {m} ratios ({r['ratios'][0]} .. {r['ratios'][-1]}). Loads: fresh process each, "
        f"warm page cache, median of {r['repeats']}.",
        "",
        "| measurement | value |",
        "|---|---|",
        f"| thresholds for all M ratios, one sort per tensor | "
        f"{r['thresholds_one_pass_s']:.3f} s |",
        f"| thresholds, one sort per tensor per ratio | {r['thresholds_per_ratio_s']:.3f} s |",
        f"| **speed-up** (expect ~M = {m}x) | **{r['thresholds_speedup']:.1f}x** |",
        f"| plain checkpoint load (Auto classes; weights mapped zero-copy) | "
        f"{r['load_plain_s']:.3f} s |",
        f"| load + materialise masked teacher at r=0.2 (fingerprint cached) | "
        f"{r['load_masked_s']:.3f} s |",
        f"| **masked / plain** (target <= 1.3x) | **{r['load_masked_over_plain']:.2f}x** |",
        f"| the same, first use of the checkpoint (every weight hashed) | "
        f"{r['load_masked_cold_s']:.3f} s ({r['load_masked_cold_over_plain']:.2f}x) |",
        f"| OS floor: fresh private pages for the {r['masked_bytes'] / 1e6:.0f} MB of masked "
        f"tensors, nothing computed | {r['fresh_pages_s']:.3f} s |",
        f"| then r=0.2 -> 0.15 / -> 0 | {r['lower_ratio_s']:.3f} s / {r['restore_s']:.4f} s |",
        f"| memory kept to restore ({r['mapped_tensors']} of {r['masked_tensors']} masked "
        f"tensors mapped from the file) | {r['record_bytes'] / 1e6:.1f} MB |",
        f"| checkpoint on disk | {r['checkpoint_bytes'] / 1e6:.1f} MB |",
        f"| threshold table on disk (all ratios) | {r['table_bytes'] / 1e3:.1f} kB |",
        f"| extra disk per ratio | 0 B (the paper's way: "
        f"{r['checkpoint_bytes'] / 1e6:.1f} MB each, "
        f"{r['per_ratio_checkpoints_bytes_paper'] / 1e6:.0f} MB for {m - 1} masked copies) |",
    ])
