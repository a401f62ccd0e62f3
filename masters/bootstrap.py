"""Supervised bootstrap of the embedded models on the synthetic train split.

Real runs start from real checkpoints; the embedded default has to make its own teachers.
This is plain next-token cross-entropy on the tokens of each answer phrase, streamed from the
synthetic generator (sample i of the train split is a pure function of the seed, so a run can
resume mid-stream), AdamW with linear warm-up and cosine decay.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from masters import embedded, evaluation, inputs, models, synthetic
from masters.schedule import lr_at


@dataclass
class BootstrapSpec:
    shape: str
    steps: int
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 300
    beta2: float = 0.98
    weight_decay: float = 0.01
    aux_fraction: float = 0.35
    eval_every: int = 500
    eval_size: int = 350
    seed: int = 0
    data_seed: int = 0
    threads: int = 0  # 0: leave torch's default
    # Stop before the end of the schedule (the LR schedule still spans `steps`): where a run
    # stops does not change its trajectory, so a longer run's checkpoint can be resumed.
    stop_at: int | None = None


MetricLogger = Callable[[dict[str, float], int], None]


def _lr_at(step: int, spec: BootstrapSpec) -> float:
    return lr_at(step, spec.steps, spec.lr, spec.warmup, "cosine", floor=0.1)


def _trajectory(spec: dict) -> dict:
    return {k: v for k, v in spec.items() if k not in ("stop_at", "threads")}


def eval_arrays(seed: int, split: str, size: int):
    samples = [synthetic.make_sample(seed, split, i) for i in range(size)]
    return (
        [s.image for s in samples],
        [s.question for s in samples],
        [s.answer for s in samples],
        [s.task_type for s in samples],
    )


def label_batch(processor, samples) -> dict:
    """Teacher-forcing batch on the answer phrases (+ EOS, as generated answers end), with
    `labels` for the loss."""
    tok = processor.tokenizer
    answers = [[tok(s.response or s.answer, add_special_tokens=False)["input_ids"]
                + [tok.eos_token_id]] for s in samples]
    enc = inputs.encode_forced(processor, [s.image for s in samples],
                               [s.question for s in samples], answers)
    return {**enc.inputs, "labels": enc.labels()}


def train(
    spec: BootstrapSpec,
    out_dir: str | Path,
    *,
    log_metrics: MetricLogger | None = None,
    progress: bool = True,
    device: str = "auto",
) -> dict:
    """Train one embedded model from scratch; checkpoints to `out_dir/state.pt` for resume."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    dev = models.pick_device(device)
    model, processor = embedded.build(spec.shape, seed=spec.seed)
    model.to(dev).train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay}],
        lr=spec.lr,
        betas=(0.9, spec.beta2),
    )
    curve: list[dict] = []
    step, elapsed = 0, 0.0
    state_path = out_dir / "state.pt"
    if state_path.exists():
        # weights_only: tensors and plain containers; a planted pickle runs no code.
        state = torch.load(state_path, map_location=dev, weights_only=True)
        if _trajectory(state["spec"]) != _trajectory(asdict(spec)):
            raise ValueError(f"{state_path} was written by another spec; delete it to restart")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, elapsed, curve = state["step"], state["elapsed"], state["curve"]
        torch.set_rng_state(state["rng"])
    val = eval_arrays(spec.data_seed, "validation", spec.eval_size)
    last = min(spec.steps, spec.stop_at or spec.steps)
    bar = tqdm(total=last, initial=step, desc=f"bootstrap {spec.shape}", disable=not progress)
    t0 = time.perf_counter() - elapsed
    running = None
    while step < last:
        idx = range(step * spec.batch_size, (step + 1) * spec.batch_size)
        samples = [
            synthetic.make_sample(spec.data_seed, "train", i, aux_fraction=spec.aux_fraction)
            for i in idx
        ]
        batch = label_batch(processor, samples)
        batch = {k: v.to(dev) for k, v in batch.items()}
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, spec)
        loss = model(**batch).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.3f}")
        metrics = {"train/loss": loss.item(), "train/lr": _lr_at(step - 1, spec)}
        if step % spec.eval_every == 0 or step == last:
            res = evaluation.evaluate_arrays(model, processor, *val)
            point = {"step": step, "seconds": round(time.perf_counter() - t0, 1)}
            point.update(res.as_metrics("val/"))
            curve.append(point)
            metrics.update(res.as_metrics("val/"))
            bar.write(
                f"step {step}: loss {running:.3f} val acc {res.accuracy:.3f} "
                + " ".join(f"{k}={v:.2f}" for k, v in sorted(res.per_task.items()))
            )
            torch.save(
                {
                    "spec": asdict(spec),
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "step": step,
                    "elapsed": time.perf_counter() - t0,
                    "curve": curve,
                    "rng": torch.get_rng_state(),
                },
                state_path.with_suffix(".tmp"),
            )
            state_path.with_suffix(".tmp").replace(state_path)
        if log_metrics:
            log_metrics(metrics, step)
    bar.close()
    model.eval()
    return {
        "model": model,
        "processor": processor,
        "curve": curve,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "params": embedded.n_params(model),
    }


def environment() -> dict:
    """Versions that decide whether a recorded accuracy reproduces bit for bit."""
    import platform

    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__}


def ship(src: str | Path, dst: str | Path, command: str) -> dict:
    """Copy a finished bootstrap checkpoint into the shipped set (masters/checkpoints/<name>).

    The record gains the command that made it and the library versions, and its recorded
    test accuracy is re-measured from the copy, so what ships is what was measured.
    """
    import shutil

    src, dst = Path(src), Path(dst)
    record = json.loads((src / "bootstrap_record.json").read_text())
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    model, processor = models.load(dst)
    spec = record["spec"]
    res = evaluation.evaluate_arrays(
        model, processor, *eval_arrays(spec["data_seed"], "test", record["test_size"])
    )
    if res.accuracy != record["test_accuracy"]:
        raise RuntimeError(f"{dst}: accuracy {res.accuracy} != recorded {record['test_accuracy']}")
    record.update(command=command, environment=environment())
    (dst / "bootstrap_record.json").write_text(json.dumps(record, indent=2))
    return record


def finalize(result: dict, spec: BootstrapSpec, ckpt_dir: str | Path, test_size: int) -> dict:
    """Ship as fp16 safetensors, reload through the Auto classes, record test accuracy."""
    ckpt_dir = Path(ckpt_dir)
    embedded.save(result["model"].float(), result["processor"], ckpt_dir, dtype=torch.float16)
    model, processor = models.load(ckpt_dir)
    res = evaluation.evaluate_arrays(
        model, processor, *eval_arrays(spec.data_seed, "test", test_size)
    )
    record = {
        "spec": asdict(spec),
        "params": result["params"],
        "wall_seconds": result["wall_seconds"],
        "test_size": test_size,
        "environment": environment(),
        "test_accuracy": res.accuracy,
        "test_accuracy_per_task": res.per_task,
        "curve": result["curve"],
    }
    (ckpt_dir / "bootstrap_record.json").write_text(json.dumps(record, indent=2))
    return record
