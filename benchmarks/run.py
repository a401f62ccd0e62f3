"""`make bench`: run the benchmarks and write BENCHMARKS.md.

Every number in BENCHMARKS.md comes from one invocation of this script; ratios are measured
within that run, on that machine. Sections that need a GPU say "not measured" without one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

import torch

from benchmarks import generation, masking, training

SECTIONS = {"masking": masking, "generation": generation, "training": training}


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--only", action="append", choices=sorted(SECTIONS))
    p.add_argument("--out", default="BENCHMARKS.md")
    p.add_argument("--json", default=".masters/bench/results.json")
    args = p.parse_args(argv)
    names = args.only or list(SECTIONS)
    results, parts = {}, []
    for name in names:
        print(f"benchmark: {name} ...", flush=True)
        results[name] = SECTIONS[name].run()
        parts.append(f"## {name}\n\n{SECTIONS[name].markdown(results[name])}\n")
    command = "make bench" if not args.only else "python -m benchmarks.run " + " ".join(
        f"--only {n}" for n in names)
    header = (
        "# Benchmarks\n\n"
        f"- command: `{command}`\n"
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}\n"
        f"- machine: {machine()}\n"
        "- every ratio below is measured within this one run\n\n"
    )
    gpu = ("## GPU\n\nnot measured (no CUDA device in this run)\n" if not torch.cuda.is_available()
           else "")
    Path(args.out).write_text(header + "\n".join(parts) + ("\n" + gpu if gpu else ""))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
