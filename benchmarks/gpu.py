"""The speed benchmarks again on a CUDA device in bf16; "not measured" without one.

The same measurements as the CPU sections, on the device the pipeline would use
(`models.pick_device`), with weights in bf16, all in this one process (CUDA start-up is paid
once, by a warm-up, not by every timed load):
  * generation: batched vs one question per call (`benchmarks.generation.throughput`);
  * masking: load a checkpoint onto the device, plain vs load + `MaskedTeacher.set_ratio(0.2)`
    (masked in place on the device, as in the pipeline);
  * training: one Masters step's time and peak device memory (`benchmarks.training.measure`).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import generation, training
from masters import embedded, models
from masters.masking import MaskedTeacher

# The CPU masking section's 47M-parameter shape, so the two sections compare.
MASKING_SHAPE = embedded.ModelShape(512, 6, 8, 2048, 512, 8, 8, 1536)


def load_times(ckpt: Path, device: torch.device, dtype: torch.dtype, repeats: int) -> dict:
    """Median seconds of a plain load and of a masked-teacher load onto `device`."""
    from transformers import AutoModelForImageTextToText

    def plain() -> float:
        generation.sync_device(device)
        t0 = time.perf_counter()
        model = AutoModelForImageTextToText.from_pretrained(ckpt, dtype=dtype,
                                                            use_safetensors=True).to(device)
        generation.sync_device(device)
        elapsed = time.perf_counter() - t0
        del model
        return elapsed

    def masked() -> float:
        generation.sync_device(device)
        t0 = time.perf_counter()
        model, _ = models.load(ckpt, dtype=dtype, device=device)
        MaskedTeacher(model).set_ratio(0.2)
        generation.sync_device(device)
        elapsed = time.perf_counter() - t0
        del model
        return elapsed

    plain(), masked()  # warm-up: CUDA context, kernels, page cache
    runs: dict[str, list[float]] = {"plain": [], "masked": []}
    for _ in range(repeats):  # alternated, so drift hits both kinds alike
        runs["plain"].append(plain())
        runs["masked"].append(masked())
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out = {f"load_{k}_s": statistics.median(v) for k, v in runs.items()}
    out["load_masked_over_plain"] = out["load_masked_s"] / out["load_plain_s"]
    return out


def run(device: str | None = None, dtype: torch.dtype = torch.bfloat16, repeats: int = 5,
        shape: embedded.ModelShape | str = MASKING_SHAPE, train_steps: int = 30,
        gen_questions: int = generation.N_QUESTIONS) -> dict:
    """`device` None: CUDA if present, else nothing is measured. The other arguments let a
    test run the same code small on the CPU."""
    if device is None and not torch.cuda.is_available():
        return {"measured": False}
    dev = torch.device(device or "cuda")
    out: dict = {"measured": True, "device": str(dev), "dtype": str(dtype).replace("torch.", ""),
                 "device_name": (torch.cuda.get_device_name(dev) if dev.type == "cuda"
                                 else "cpu")}
    out["generation"] = generation.throughput(repeats=min(repeats, 3), device=str(dev),
                                              dtype=dtype, n_questions=gen_questions)
    with tempfile.TemporaryDirectory() as tmp:
        model, processor = embedded.build(shape, seed=0)
        ckpt = embedded.save(model.to(dtype), processor, Path(tmp) / "teacher")
        out["params"] = embedded.n_params(model)
        del model
        out["masking"] = load_times(ckpt, dev, dtype, repeats)
    with tempfile.TemporaryDirectory() as tmp:
        out["training"] = {mode: training.measure(mode, train_steps, Path(tmp) / "dists.st",
                                                  device=str(dev), dtype=dtype)
                           for mode in ("online", "cached")}
    return out


def markdown(r: dict) -> str:
    if not r.get("measured"):
        return "not measured (no CUDA device in this run)"
    g, m, t = r["generation"], r["masking"], r["training"]["cached"]
    mem = (f"{t['gpu_peak_mb']:.0f} MB (device)" if "gpu_peak_mb" in t
           else f"{t['rss_peak_mb']:.0f} MB (process RSS)")
    return "\n".join([
        f"Device: {r['device_name']} ({r['device']}), weights in {r['dtype']}.",
        "",
        "| measurement | value |",
        "|---|---|",
        f"| batched generation, 32 / 64 questions per call | "
        f"{g['batched_answers_per_s']:.1f} / {g['batched64_answers_per_s']:.1f} answers/s |",
        f"| one question per call | {g['single_answers_per_s']:.1f} answers/s |",
        f"| **batched 32 / one-at-a-time** | **{g['batched_speedup']:.1f}x** |",
        f"| plain load onto the device ({r['params'] / 1e6:.1f}M parameters) | "
        f"{m['load_plain_s']:.3f} s |",
        f"| load + masked teacher at r=0.2 | {m['load_masked_s']:.3f} s |",
        f"| **masked / plain** (target <= 1.3x) | **{m['load_masked_over_plain']:.2f}x** |",
        f"| Masters training step (4 questions x 8 answers, cached teacher), median of "
        f"{t['steps'] - 3} | {1000 * t['step_s_median']:.0f} ms |",
        f"| peak memory while training | {mem} |",
    ])
