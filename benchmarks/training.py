"""Training step cost on the embedded models: time per step and peak memory (RSS), and
training throughput with 1 vs 2 processes (data-parallel, torchrun + gloo).

One Masters step = a student forward + backward and an AdamW step on `batch_groups`
questions x 8 answers, against cached teacher distributions; measured beside the step as it
was before the cache (a masked-teacher forward and a reference forward inside the step).

Scaling runs `masters.train_entry --synthetic` (the pipeline's trainer on in-process groups,
random-init embedded student and large teacher shapes) three ways on the same global batch:
1 process x 1 thread, 1 process x 2 threads, 2 processes x 1 thread; throughput = groups
trained / wall time of the training loop (start-up and model building excluded).
"""

from __future__ import annotations

import copy
import resource
import statistics
import time
from pathlib import Path

import torch

from masters import models, synthetic, training
from masters.config import TrainingConfig
from masters.schedule import Stage


def _groups(processor, n: int):
    tok = processor.tokenizer
    out = []
    for i in range(n):
        s = synthetic.make_sample(0, "train", i)
        ids = tok.convert_tokens_to_ids(s.answer.split()) + [tok.eos_token_id]
        out.append(training.Group(s.id, s.image, s.question, [ids] * 8, [1.0, 0.0] * 4))
    return out


def _rss_mb() -> float:
    """Peak RSS so far. VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child
    started by a big parent would report the parent's peak."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


SCALING = [("1 process x 1 thread", 1, 1), ("1 process x 2 threads", 1, 2),
           ("2 processes x 1 thread", 2, 1)]


def scaling(groups: int = 128, batch_groups: int = 8, answers: int = 8) -> list[dict]:
    import json
    import os
    import socket
    import subprocess
    import sys
    import tempfile

    rows = []
    for label, nproc, threads in SCALING:
        with tempfile.TemporaryDirectory() as tmp, socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = str(sock.getsockname()[1])
            sock.close()
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                   str(nproc), "--master_addr", "127.0.0.1", "--master_port", port,
                   "-m", "masters.train_entry", "--synthetic", "--student-shape", "student",
                   "--teacher-shape", "large", "--groups", str(groups), "--batch-groups",
                   str(batch_groups), "--answers", str(answers), "--lr", "1e-4",
                   "--out", tmp]
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
            subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
            summary = json.loads((Path(tmp) / "losses.json").read_text())["summary"]
        rows.append({"label": label, "processes": nproc, "threads": threads,
                     "groups": groups, "steps": summary["steps"], "train_s": summary["train_s"],
                     "groups_per_s": groups / summary["train_s"]})
    return rows


def run(steps: int = 30) -> dict:
    """Each mode in a fresh process (peak RSS is per process): `online`, the step as it was
    before distributions were cached (the masked teacher and the reference run in the step),
    then `cached`, the student alone on the distributions `online` wrote."""
    import json
    import subprocess
    import sys
    import tempfile

    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("online", "cached"):
            out = subprocess.run([sys.executable, "-m", "benchmarks.training", mode, str(steps),
                                  str(Path(tmp) / "dists.st")],
                                 check=True, capture_output=True, text=True)
            result[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    result["scaling"] = scaling()
    return result


def measure(mode: str, steps: int, dists_file: str | Path, device: str = "cpu",
            dtype: torch.dtype = torch.float32) -> dict:
    """Steps of `batch_groups` questions x 8 answers. `online`: teacher forward + reference
    forward (distributions.attach, what training did before the cache) + student step; the
    distributions are written to `dists_file`. `cached`: read them, student step only."""
    from masters import distributions
    from masters.generation import LoadedModel

    rss_start = _rss_mb()
    cuda = torch.device(device).type == "cuda"
    student, processor = models.load("embedded:student", dtype=dtype, device=device)
    cfg = TrainingConfig(lr=1e-5, batch_groups=4)
    groups = _groups(processor, steps * cfg.batch_groups)
    if mode == "online":
        teacher, _ = models.load("embedded:large", dtype=dtype, device=device)
        teacher = LoadedModel(teacher.eval(), processor)
        reference = LoadedModel(copy.deepcopy(student).eval(), processor)
    else:
        cached = distributions.from_bytes(Path(dists_file).read_bytes())
        for i, g in enumerate(groups):
            g.dists = cached[i * 8 : (i + 1) * 8]
    trainer = training.MastersTrainer(student, processor, cfg)
    trainer.setup()
    stage = Stage(0, "large", "embedded:large", 0.0, 0, steps * 4)
    rss_loaded = _rss_mb()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps):
        batch = groups[i * cfg.batch_groups : (i + 1) * cfg.batch_groups]
        t0 = time.perf_counter()
        if mode == "online":
            distributions.attach(teacher, reference, batch, top_k=0)
        trainer.loss_step(batch, stage)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    held = [student, *([teacher.model, reference.model] if mode == "online" else [])]
    tensors = [t for m in held for t in m.state_dict().values()]
    tensors += [t for st in trainer.opt.state.values() for t in st.values()
                if isinstance(t, torch.Tensor)]
    batch_dists = [t for g in groups[: cfg.batch_groups] for d in g.dists
                   for t in (d.logprobs, d.ref)]
    if mode == "online":
        Path(dists_file).write_bytes(distributions.to_bytes([d for g in groups
                                                              for d in g.dists]))
    out = {"mode": mode, "steps": steps, "batch_groups": cfg.batch_groups,
           "answers_per_step": 32, "step_s_median": statistics.median(times[3:]),
           "rss_start_mb": rss_start, "rss_models_loaded_mb": rss_loaded,
           "rss_peak_mb": _rss_mb(),
           "held_mb": sum(t.numel() * t.element_size() for t in tensors) / 2**20,
           "batch_dists_mb": sum(t.numel() * t.element_size() for t in batch_dists) / 2**20}
    if cuda:
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def markdown(r: dict) -> str:
    on, ca = r["online"], r["cached"]
    return "\n".join([
        "Embedded student (0.23M) with the embedded large teacher (1.5M), each mode in its "
        "own process. Online: the step as it was before teacher distributions were cached "
        "(masked-teacher and reference forwards without gradients inside the step); cached: "
        "the student alone on the distributions of the whole 74-token vocabulary "
        "(`teacher_top_k: 0`), student forward + backward + AdamW.",
        "",
        "| measurement | online (teacher + reference in the step) | cached (student only) "
        "| online / cached |",
        "|---|---|---|---|",
        f"| time per step ({on['batch_groups']} questions x 8 answers), median of "
        f"{on['steps'] - 3} | {1000 * on['step_s_median']:.0f} ms | "
        f"{1000 * ca['step_s_median']:.0f} ms | "
        f"{on['step_s_median'] / ca['step_s_median']:.2f}x |",
        f"| weights + optimizer state held (tensor bytes; cached: + one batch's distributions "
        f"{ca['batch_dists_mb']:.2f} MB) | {on['held_mb']:.1f} MB | "
        f"{ca['held_mb'] + ca['batch_dists_mb']:.1f} MB | "
        f"{on['held_mb'] / (ca['held_mb'] + ca['batch_dists_mb']):.2f}x |",
        f"| peak RSS of the process (mostly Python + torch) | {on['rss_peak_mb']:.0f} MB | "
        f"{ca['rss_peak_mb']:.0f} MB | {on['rss_peak_mb'] / ca['rss_peak_mb']:.2f}x |",
        f"| RSS after loading the models (peak - this: activations, optimizer) | "
        f"{on['rss_models_loaded_mb']:.0f} MB | {ca['rss_models_loaded_mb']:.0f} MB | |",
        *_scaling_markdown(r.get("scaling") or []),
    ])


def _scaling_markdown(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    base = rows[0]["groups_per_s"]
    out = ["", f"Training throughput, 1 vs 2 processes (DDP, gloo; {rows[0]['groups']} "
           f"questions x 8 answers, {rows[0]['steps']} steps of 8 questions; random-init "
           "student and large shapes; `python -m masters.train_entry --synthetic` under "
           "torchrun):", "", "| layout | training loop | questions/s | vs 1 x 1 |",
           "|---|---|---|---|"]
    for row in rows:
        out.append(f"| {row['label']} | {row['train_s']:.1f} s | {row['groups_per_s']:.2f} | "
                   f"{row['groups_per_s'] / base:.2f}x |")
    return out


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(measure(sys.argv[1], int(sys.argv[2]), sys.argv[3])))
