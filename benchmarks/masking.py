"""Masking costs: in place through the staircase, beside torch.nn.utils.prune and a plain load.

The paper writes one checkpoint per ratio; masters masks the loaded teacher in place, ratios
increasing (masks only grow), and writes nothing. Measured on one model, in one run:
  * in place, every ratio of the staircase in turn (`MaskedTeacher.set_ratio`, one selection
    per tensor per ratio) vs one ratio by a full stable sort per tensor (the definition);
  * torch.nn.utils.prune.l1_unstructured at r = 0.2 on the same tensors: its time and the
    memory it adds (a `weight_orig` copy and a `weight_mask` per tensor), which masking in
    place does not;
  * what generation pays for a teacher, in fresh processes (warm page cache, cold process,
    the libraries imported untimed first; kinds alternated, median of `repeats`): the plain
    Auto-class load, and `models.load` + `fingerprint` + mask at r = 0.2.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.nn.utils import prune

from masters import embedded
from masters.masking import MaskedTeacher, MaskScope, in_scope, zeroed_count

RATIOS = [round(0.05 * i, 2) for i in range(9)]  # 0 .. 0.4: M = 9
SHAPE = embedded.ModelShape(512, 6, 8, 2048, 512, 8, 8, 1536)  # ~47M parameters

_CHILD = r"""
import json, sys, time
import torch
from masters import models
from masters.masking import MaskedTeacher
kind, ckpt = sys.argv[1:3]
models.load("embedded:student")  # imports and first-call set-up, untimed
out = {}
t0 = time.perf_counter()
if kind == "plain":
    from transformers import AutoModelForImageTextToText, AutoProcessor
    model = AutoModelForImageTextToText.from_pretrained(ckpt, dtype=torch.float32,
                                                        use_safetensors=True)
    AutoProcessor.from_pretrained(ckpt)
    model.eval()
else:
    model, _ = models.load(ckpt)
    out["load_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    models.fingerprint(model)
    out["fingerprint_s"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    MaskedTeacher(model).set_ratio(0.2)
    out["mask_s"] = time.perf_counter() - t1
out["s"] = time.perf_counter() - t0
print("RESULT " + json.dumps(out))
"""


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _sorted_mask(tensors: dict[str, torch.Tensor], r: float) -> None:
    """The definition, with a full stable sort per tensor (what one selection replaces)."""
    for t in tensors.values():
        flat = t.detach().view(-1)
        order = torch.sort(flat.abs(), stable=True).indices
        flat[order[: zeroed_count(r, flat.numel())]] = 0


def _staircase(model) -> None:
    teacher = MaskedTeacher(model)
    for r in RATIOS:
        teacher.set_ratio(r)


def _torch_prune(model) -> int:
    """l1_unstructured at r = 0.2 on the masked scope; returns the bytes it added."""
    tensors, _ = in_scope(model, MaskScope())
    owners = dict(model.named_modules())
    added = 0
    for name, t in tensors.items():
        module, param = name.rsplit(".", 1)
        prune.l1_unstructured(owners[module], param, amount=0.2)
        added += 2 * t.numel() * t.element_size()  # weight_orig + weight_mask (same dtype)
    return added


def _child(kind: str, ckpt: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHILD, kind, str(ckpt)], capture_output=True,
                          text=True, check=True)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def run(repeats: int = 3, load_repeats: int = 5) -> dict:
    model, processor = embedded.build(SHAPE, seed=0)
    original = {k: v.clone() for k, v in model.state_dict().items()}

    def fresh():
        model.load_state_dict(original)
        return model

    tensors, _ = in_scope(model, MaskScope())
    out: dict = {"ratios": RATIOS, "params": embedded.n_params(model),
                 "masked_params": sum(t.numel() for t in tensors.values())}
    staircase = [_best(lambda: _staircase(fresh()), 1) for _ in range(repeats)]
    out["staircase_s"] = min(staircase)
    out["one_ratio_select_s"] = min(_best(lambda: MaskedTeacher(fresh()).set_ratio(0.2), 1)
                                    for _ in range(repeats))
    out["one_ratio_sort_s"] = min(_best(lambda: _sorted_mask(in_scope(fresh(), MaskScope())[0],
                                                             0.2), 1) for _ in range(repeats))
    out["select_speedup"] = out["one_ratio_sort_s"] / out["one_ratio_select_s"]
    prune_s, added = [], 0
    for _ in range(repeats):
        m, _ = embedded.build(SHAPE, seed=0)
        t0 = time.perf_counter()
        added = _torch_prune(m)
        prune_s.append(time.perf_counter() - t0)
        del m
    out["torch_prune_s"] = min(prune_s)
    out["torch_prune_added_bytes"] = added
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = embedded.save(model.eval(), processor, Path(tmp) / "teacher")
        runs: dict[str, list[dict]] = {"plain": [], "masked": []}
        for _ in range(load_repeats):
            for kind in runs:
                runs[kind].append(_child(kind, ckpt))
        for key in ("load_s", "fingerprint_s", "mask_s"):
            out[f"teacher_{key}"] = statistics.median(r[key] for r in runs["masked"])
        out["load_plain_s"] = statistics.median(r["s"] for r in runs["plain"])
        out["load_masked_s"] = statistics.median(r["s"] for r in runs["masked"])
        out["load_masked_over_plain"] = out["load_masked_s"] / out["load_plain_s"]
        out["checkpoint_bytes"] = sum(p.stat().st_size for p in ckpt.glob("*.safetensors"))
    out["repeats"], out["load_repeats"] = repeats, load_repeats
    return out


def markdown(r: dict) -> str:
    m = len(r["ratios"])
    mb = r["checkpoint_bytes"] / 1e6
    return "\n".join([
        f"Model: embedded LLaVA shape with {r['params'] / 1e6:.1f}M parameters "
        f"({r['masked_params'] / 1e6:.1f}M in the masked scope), float32, CPU; "
        f"M = {m} ratios ({r['ratios'][0]} .. {r['ratios'][-1]}). In-process times: best of "
        f"{r['repeats']}; loads: fresh process each, warm page cache, median of "
        f"{r['load_repeats']}.",
        "",
        "| measurement | value |",
        "|---|---|",
        f"| mask in place through all M ratios, increasing | {r['staircase_s']:.3f} s |",
        f"| mask at r = 0.2, one selection per tensor (`kthvalue`) | "
        f"{r['one_ratio_select_s']:.3f} s |",
        f"| mask at r = 0.2, one full stable sort per tensor (the definition) | "
        f"{r['one_ratio_sort_s']:.3f} s ({r['select_speedup']:.1f}x slower) |",
        f"| torch.nn.utils.prune.l1_unstructured at r = 0.2 | {r['torch_prune_s']:.3f} s, "
        f"+{r['torch_prune_added_bytes'] / 1e6:.0f} MB (weight_orig + weight_mask) |",
        "| memory masters adds to keep or restore a mask | 0 B (masks only grow) |",
        f"| plain checkpoint load (Auto classes) | {r['load_plain_s']:.3f} s |",
        f"| generation's teacher: `models.load` + fingerprint + mask at r = 0.2 | "
        f"{r['load_masked_s']:.3f} s ({r['teacher_load_s']:.3f} + "
        f"{r['teacher_fingerprint_s']:.3f} + {r['teacher_mask_s']:.3f}) |",
        f"| **masked teacher / plain load** | **{r['load_masked_over_plain']:.2f}x** |",
        f"| extra disk per ratio | 0 B (the paper's way: {mb:.1f} MB each, "
        f"{mb * (m - 1):.0f} MB for {m - 1} masked copies) |",
    ])
