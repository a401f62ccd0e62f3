"""Training step cost on the embedded models: time per step and peak memory (RSS), and
training throughput with 1 vs 2 processes (data-parallel, torchrun + gloo).

One Masters step = a teacher forward (no grad), a reference forward (no grad), a student
forward + backward and an AdamW step, on `batch_groups` questions x 8 answers.

Scaling runs `masters.train_entry --synthetic` (the pipeline's trainer on in-process groups,
random-init embedded student and large teacher shapes) three ways on the same global batch:
1 process x 1 thread, 1 process x 2 threads, 2 processes x 1 thread; throughput = groups
trained / wall time of the training loop (start-up and model building excluded).
"""

from __future__ import annotations

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
    """In a fresh process: peak RSS is per process, and earlier sections load bigger models."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "benchmarks.training", str(steps)],
                         check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["scaling"] = scaling()
    return result


def measure(steps: int, device: str = "cpu", dtype: torch.dtype = torch.float32) -> dict:
    rss_start = _rss_mb()
    cuda = torch.device(device).type == "cuda"
    teacher, _ = models.load("embedded:large", dtype=dtype, device=device)
    student, processor = models.load("embedded:student", dtype=dtype, device=device)
    cfg = TrainingConfig(lr=1e-5, batch_groups=4)
    trainer = training.MastersTrainer(student, processor, cfg)
    trainer.setup()
    stage = Stage(0, "large", "embedded:large", 0.0, 0, steps * 4)
    groups = _groups(processor, steps * cfg.batch_groups)
    rss_loaded = _rss_mb()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps):
        batch = groups[i * cfg.batch_groups : (i + 1) * cfg.batch_groups]
        t0 = time.perf_counter()
        trainer.loss_step(batch, teacher.eval(), stage)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    out = {"steps": steps, "batch_groups": cfg.batch_groups, "answers_per_step": 32,
           "step_s_median": statistics.median(times[3:]),
           "rss_start_mb": rss_start, "rss_models_loaded_mb": rss_loaded,
           "rss_peak_mb": _rss_mb()}
    if cuda:
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def markdown(r: dict) -> str:
    return "\n".join([
        "Embedded student (0.23M) trained against the embedded large teacher (1.5M): teacher "
        "and reference forwards without gradients, student forward + backward + AdamW.",
        "",
        "| measurement | value |",
        "|---|---|",
        f"| time per step ({r['batch_groups']} questions x 8 answers), median of "
        f"{r['steps'] - 3} | {1000 * r['step_s_median']:.0f} ms |",
        f"| peak RSS of the process (Python + torch + both models + optimizer) | "
        f"{r['rss_peak_mb']:.0f} MB |",
        f"| RSS before loading / after loading the models | {r['rss_start_mb']:.0f} MB / "
        f"{r['rss_models_loaded_mb']:.0f} MB |",
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

    print(json.dumps(measure(int(sys.argv[1]))))
