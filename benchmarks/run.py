"""`make bench`: run the benchmarks and write BENCHMARKS.md.

Every number in BENCHMARKS.md comes from one invocation of this script; ratios are measured
within that run, on that machine. Sections that need a GPU say "not measured" without one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import json
import os
import platform
import sys
from pathlib import Path

import torch

from benchmarks import generation, gpu, gpu_qwen, masking, quality, topk, training

SECTIONS = {"masking": masking, "generation": generation, "training": training,
            "topk": topk, "quality": quality, "gpu": gpu, "gpu_qwen": gpu_qwen}
TITLES = {"gpu": "GPU (bf16)", "gpu_qwen": "GPU: Qwen2.5-VL-3B student, 7B teacher (bf16)"}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"{cpu}; {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}; "
            f"GPU: {gpu}; Python {platform.python_version()}, torch {torch.__version__}")


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("transformers", "datasets", "prefect", "mlflow", "numpy"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            pass
    return ", ".join(out)


def revision() -> str:
    """The commit the numbers belong to, and whether the tree had uncommitted changes."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (" with uncommitted changes" if dirty else "")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--only", action="append", choices=sorted(SECTIONS))
    p.add_argument("--out", default="BENCHMARKS.md")
    p.add_argument("--json", default=".masters/bench/results.json")
    p.add_argument("--quick", action="store_true",
                   help="make bench-quick: sections with a quick mode (quality: reduced rows "
                   "and data), the others skipped; <= 15 min")
    args = p.parse_args(argv)
    names = args.only or list(SECTIONS)
    results, parts = {}, []
    for name in names:
        quick_ok = "quick" in inspect.signature(SECTIONS[name].run).parameters
        if args.quick and not quick_ok:  # bench-quick must stay within ~15 minutes
            parts.append(f"## {name}\n\nnot run in quick mode (`make bench` runs it)\n")
            continue
        print(f"benchmark: {name} ...", flush=True)
        results[name] = SECTIONS[name].run(**({"quick": args.quick} if quick_ok else {}))
        title = TITLES.get(name, name)
        markdown = SECTIONS[name].markdown
        # a section that draws figures (quality's learning curves) puts them by the report
        figures = "out_dir" in inspect.signature(markdown).parameters
        md = markdown(results[name], **({"out_dir": Path(args.out).parent} if figures else {}))
        parts.append(f"## {title}\n\n{md}\n")
    command = ("make bench-quick" if args.quick else "make bench") if not args.only else (
        "python -m benchmarks.run " + " ".join(f"--only {n}" for n in names)
        + (" --quick" if args.quick else ""))
    header = (
        "# Benchmarks\n\n"
        f"- command: `{command}`\n"
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}\n"
        f"- machine: {machine()}\n"
        f"- versions: {versions()}\n"
        f"- code: {revision()}\n"
        "- every ratio below is measured within this one run\n\n"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(header + "\n".join(parts))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
