"""Figures for MLflow: people would rather look at a curve than read a table of numbers."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: workers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402


def accuracy_vs_ratio(rows: Sequence[dict], title: str):
    """Overall and per-task accuracy of a masked teacher against the mask ratio."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ratios = [r["ratio"] for r in rows]
    for task in sorted({t for r in rows for t in r["per_task"]}):
        ax.plot(ratios, [r["per_task"].get(task, float("nan")) for r in rows], lw=1, alpha=0.6,
                marker=".", label=task)
    ax.plot(ratios, [r["accuracy"] for r in rows], lw=2.5, color="black", marker="o",
            label="all")
    ax.set(xlabel="mask ratio r (fraction of each weight tensor zeroed)", ylabel="accuracy",
           title=title, ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    fig.tight_layout()
    return fig


def thresholds_by_tensor(by_ratio: dict, title: str):
    """Per-tensor magnitude threshold lambda_r for each ratio: why the threshold is per layer.

    `by_ratio`: ratio -> {tensor name -> masking.TensorMask}, as `MaskedTeacher.set_ratio`
    returns them."""
    names = list(next(iter(by_ratio.values())))
    fig, ax = plt.subplots(figsize=(max(7, len(names) * 0.12), 4.5))
    for ratio, stats in by_ratio.items():
        if ratio == 0:
            continue
        ys = [stats[n].threshold or 0.0 for n in names]
        ax.plot(range(len(names)), ys, marker=".", lw=1, label=f"r={ratio:g}")
    ax.set_yscale("log")
    ax.set(xlabel="weight tensor (model order)", ylabel="|w| threshold", title=title)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([_short(n) for n in names], rotation=90, fontsize=5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _short(name: str) -> str:
    return (name.replace("model.", "").replace("language_model.", "lm.")
            .replace("vision_tower.", "vt.").replace(".weight", ""))


def close(fig) -> None:
    plt.close(fig)


def bootstrap_curves(records: dict[str, dict], title: str = "bootstrap: validation accuracy"):
    """Validation accuracy against steps and wall time for each bootstrapped model."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, rec in records.items():
        steps = [p["step"] for p in rec["curve"]]
        secs = [p["seconds"] / 60 for p in rec["curve"]]
        acc = [p["val/accuracy"] for p in rec["curve"]]
        label = f"{name} ({rec['params'] / 1e6:.2f}M)"
        axes[0].plot(steps, acc, marker=".", label=label)
        axes[1].plot(secs, acc, marker=".", label=label)
    axes[0].set(xlabel="optimizer steps", ylabel="validation accuracy", ylim=(0, 1))
    axes[1].set(xlabel="wall time (minutes, 2 CPU cores)", ylim=(0, 1))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def reward_histogram(scored, title: str):
    """Accuracy reward (0, 1, abstain) by answer source: how often each model is right."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    sources = sorted({s["model"] for s in scored})
    cats = ["0", "1", "abstain"]
    width = 0.8 / max(1, len(sources))
    for i, src in enumerate(sources):
        vals = [s["accuracy"] for s in scored if s["model"] == src]
        counts = [sum(v == 0 for v in vals), sum(v == 1 for v in vals),
                  sum(v is None for v in vals)]
        ax.bar([j + i * width for j in range(3)], counts, width, label=src)
    ax.set_xticks([j + width * (len(sources) - 1) / 2 for j in range(3)])
    ax.set_xticklabels(cats)
    ax.set(ylabel="answers", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def stage_starts(history: dict[str, list[tuple[int, float]]]) -> list[tuple[int, int]]:
    """(first step, stage index) of every stage, from the logged `stage` metric."""
    out: list[tuple[int, int]] = []
    for step, value in sorted(history.get("stage", [])):
        if not out or out[-1][1] != int(value):
            out.append((step, int(value)))
    return out


def step_curves(history: dict[str, list[tuple[int, float]]], keys: Sequence[str], title: str,
                ylabel: str):
    """Metrics per optimizer step, a dashed line where each stage (teacher, ratio) begins:
    a jump in the loss at a boundary is the new teacher, not instability."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in keys:
        points = sorted(history.get(key, []))
        if points:
            ax.plot(*zip(*points, strict=True), marker=".", lw=1.2, label=key)
    for step, index in stage_starts(history):
        ax.axvline(step, color="grey", ls="--", lw=0.8)
        ax.annotate(f"stage {index}", (step, 1), xycoords=("data", "axes fraction"),
                    fontsize=7, rotation=90, va="top", ha="right", color="grey")
    ax.set(xlabel="optimizer step", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def accuracy_by_model(results: Sequence[dict], title: str = "accuracy by task type"):
    """Grouped bars: for each task type, one bar per model (teachers, student, distilled)."""
    types = ["all", *sorted({k for r in results for k in r["per_task"]} - {"all"})]
    width = 0.8 / max(1, len(results))
    fig, ax = plt.subplots(figsize=(max(6, len(types) * 0.9), 4))
    for i, r in enumerate(results):
        values = [r["accuracy"] if t == "all" else r["per_task"].get(t, float("nan"))
                  for t in types]
        ax.bar([j + i * width for j in range(len(types))], values, width, label=r["label"])
    ax.set_xticks([j + width * (len(results) - 1) / 2 for j in range(len(types))])
    ax.set_xticklabels(types, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="accuracy", ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def accuracy_by_stage(scores: Sequence[dict], title: str = "accuracy of generated answers"):
    """Mean accuracy reward per stage, one line per answer source (masked teacher, student).

    Each stage is one teacher at one mask ratio: the curve shows how good the answers the
    student learns from are as the teacher is restored and the chain moves up.
    """
    fig, ax = plt.subplots(figsize=(7, 3.8))
    labels = [f"{s['teacher']}@{s['ratio']:g}" for s in scores]
    series: dict[str, list[float]] = {}
    for i, s in enumerate(scores):
        for key, value in s["stats"].items():
            if key.startswith("accuracy_reward/"):
                source = "student" if key.split("/", 1)[1].startswith("student@") else "teacher"
                series.setdefault(source, [float("nan")] * len(scores))[i] = value
    for source, values in sorted(series.items()):
        ax.plot(range(len(scores)), values, marker="o", label=f"{source} answers")
    ax.set_xticks(range(len(scores)))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
    ax.set(ylabel="mean accuracy reward", title=title, ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def learning_curves(curves: dict[str, list[dict] | list[list[dict]]], title: str,
                    ylabel: str = "validation accuracy"):
    """Held-out accuracy against optimizer steps, one line per method: where each one leaves
    its plateau is the comparison. A method with several curves (seeds) is drawn as their
    mean with a band from the lowest to the highest seed."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, runs in curves.items():
        runs = [runs] if runs and isinstance(runs[0], dict) else runs
        steps = sorted({p["step"] for run in runs for p in run})
        by_step = [[p["accuracy"] for run in runs for p in run if p["step"] == s]
                   for s in steps]
        mean = [float(np.mean(v)) for v in by_step]
        line, = ax.plot(steps, mean, marker=".", lw=1.6, label=name)
        if len(runs) > 1:
            ax.fill_between(steps, [min(v) for v in by_step], [max(v) for v in by_step],
                            color=line.get_color(), alpha=0.15, lw=0)
    ax.set(xlabel="optimizer steps", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig
