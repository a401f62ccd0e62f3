"""Quality benchmark: the paper's ablations (Table 5) on the embedded task, 3 seeds per row.

The rows live in `configs/bench/quality_rows.yaml`: each is `configs/bench/quality.yaml` plus
its own overrides (the `masters distill --set` keys), trained with every seed and evaluated on
the test split (mean and sample std over seeds). Reference rows (`model:`) evaluate a model
as shipped. Generated answers and their rewards live in the content-addressed cache
(`storage.cache_uri`), so a stage is generated once and shared by every row and seed that
asks for it; a finished run is stored under `.masters/bench/quality/runs/` by a hash of its
resolved config and the code it ran, so an interrupted `make bench` resumes where it stopped.

    python -m benchmarks.quality [--quick] [--workers N] [--only SECTION]   # prints markdown
    python -m benchmarks.quality probe --set training.lr=3e-5 --seeds 0,1,2  # one config
    python -m benchmarks.run --only quality [--quick]                       # BENCHMARKS.md

Runs go to `--workers` processes (default 2, one torch thread each): on small CPU models one
thread per process is faster than two threads in one process, by a lot when other jobs share
the cores (the threads spin while they wait for each other).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
ROWS_FILE = ROOT / "configs/bench/quality_rows.yaml"
STATE = ROOT / ".masters/bench/quality"
DATASETS = {"v2": STATE / "data/v2"}


# ---- the row table -------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    section: str
    name: str
    overrides: tuple[str, ...] = ()
    model: str | None = None  # a reference row: evaluate this model, train nothing
    paper: Any = None
    quick: bool = False
    dataset: str | None = None


@dataclass
class Spec:
    base: str
    seeds: list[int]
    sections: list[dict]  # id, title, dataset and rows (list[Row])
    quick_seeds: list[int] = field(default_factory=list)
    quick_overrides: tuple[str, ...] = ()

    def rows(self, quick: bool = False, only: list[str] | None = None) -> list[Row]:
        return [r for s in self.sections if not only or s["id"] in only
                for r in s["rows"] if r.quick or not quick]


def to_overrides(settings: dict | None) -> tuple[str, ...]:
    """`{a.b: value}` to `masters --set` strings; values as JSON (which YAML reads back)."""
    return tuple(f"{k}={json.dumps(v)}" for k, v in (settings or {}).items())


def load_spec(path: str | Path = ROWS_FILE) -> Spec:
    raw = yaml.safe_load(Path(path).read_text())
    sections = []
    for sec in raw["sections"]:
        rows = []
        for r in sec["rows"]:
            unknown = set(r) - {"name", "set", "model", "paper", "quick"}
            if unknown:
                raise ValueError(f"row {r.get('name')!r} of section {sec['id']!r}: unknown "
                                 f"key(s) {sorted(unknown)}")
            if "model" in r and r.get("set"):
                raise ValueError(f"row {r['name']!r}: a reference row (model:) trains "
                                 "nothing and takes no overrides")
            rows.append(Row(sec["id"], r["name"], to_overrides(r.get("set")), r.get("model"),
                            r.get("paper"), bool(r.get("quick", False)), sec.get("dataset")))
        sections.append({"id": sec["id"], "title": sec["title"], "dataset": sec.get("dataset"),
                         "rows": rows})
    quick = raw.get("quick", {})
    return Spec(raw["base"], list(raw["seeds"]), sections, list(quick.get("seeds", raw["seeds"])),
                to_overrides(quick.get("set")))


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); std 0 for a single value."""
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) if len(values) > 1 else 0.0)


# ---- running -------------------------------------------------------------------------------


def _code_digest() -> str:
    """The code a run depends on: a change re-runs it instead of serving a stale number."""
    h = hashlib.sha256()
    for p in sorted([*(ROOT / "masters").glob("*.py"), ROOT / "benchmarks/quality_engine.py",
                     ROOT / "benchmarks/quality_data.py"]):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def _dataset_overrides(name: str | None) -> list[str]:
    if name is None:
        return []
    from benchmarks import quality_data

    if name not in DATASETS:
        raise ValueError(f"unknown benchmark dataset {name!r}; known: {sorted(DATASETS)}")
    return quality_data.overrides(DATASETS[name])


def config_for(spec: Spec, row: Row, seed: int | None, quick: bool):
    from masters.config import load_config

    sets = [*_dataset_overrides(row.dataset), *(spec.quick_overrides if quick else ()),
            *row.overrides]
    if seed is not None:
        sets.append(f"training.seed={seed}")
    return load_config(ROOT / spec.base, sets)


def run_key(cfg, code: str) -> str:
    public = cfg.public_dict()
    public.pop("run_name", None)
    blob = json.dumps({"config": public, "code": code}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _train_one(cfg_json: dict, out: str) -> dict:
    """One (row, seed) in a worker process; the result is also written to `out`."""
    from benchmarks import quality_engine
    from masters.config import from_public

    cfg = from_public(cfg_json)
    t0 = time.perf_counter()
    result = quality_engine.run_config(cfg, log=lambda *a: None)
    result["wall_s"] = time.perf_counter() - t0
    result.pop("predictions", None)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out).with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.rename(out)
    return result


def _prepare_datasets(spec: Spec, rows: list[Row], quick: bool) -> None:
    from benchmarks import quality_data

    for name in sorted({r.dataset for r in rows if r.dataset}):
        cfg = config_for(spec, next(r for r in rows if r.dataset == name), None, quick)
        # validation: the learning curve's split (training.eval_every)
        quality_data.write(DATASETS[name], {"train": cfg.data.train_size,
                                            "validation": cfg.data.validation_size,
                                            "test": cfg.data.test_size})


def run(quick: bool = False, workers: int | None = None, only: list[str] | None = None,
        spec_path: str | Path = ROWS_FILE, log=print) -> dict:
    """Every row x seed (cached runs are read back); returns a JSON-able results dict."""
    from benchmarks import quality_engine

    spec = load_spec(spec_path)
    rows = spec.rows(quick, only)
    seeds = spec.quick_seeds if quick else spec.seeds
    workers = workers or int(os.environ.get("BENCH_WORKERS", 2))
    t_start = time.perf_counter()
    _prepare_datasets(spec, rows, quick)
    code = _code_digest()
    jobs: dict[str, dict] = {}  # run key -> {cfg, rows}
    plan: list[tuple[Row, list[str]]] = []
    for row in rows:
        if row.model:
            plan.append((row, []))
            continue
        keys = []
        for seed in seeds:
            cfg = config_for(spec, row, seed, quick)
            key = run_key(cfg, code)
            jobs.setdefault(key, {"cfg": cfg, "rows": []})["rows"].append(row.name)
            keys.append(key)
        plan.append((row, keys))
    todo = {k: j for k, j in jobs.items() if not (STATE / "runs" / f"{k}.json").exists()}
    log(f"quality: {len(rows)} rows, {len(jobs)} distinct runs ({len(jobs) - len(todo)} "
        f"cached), {workers} worker(s)")
    # 1. Generation, once per distinct stage, in this process (workers then only read it).
    t_gen = time.perf_counter()
    gen_stats: dict = {}
    seen = set()
    for j in todo.values():
        cfg = j["cfg"]
        if cfg.training.objective != "masters":
            continue
        ident = json.dumps([cfg.data.model_dump(mode="json"),
                            [t.model_dump(mode="json") for t in cfg.teachers],
                            cfg.generation.model_dump(mode="json")], sort_keys=True)
        if ident not in seen:
            seen.add(ident)
            quality_engine.prepare(cfg, gen_stats)
    gen_s = time.perf_counter() - t_gen
    # 2. Reference models, in this process.
    refs = {}
    for row, _ in plan:
        if row.model:
            cfg = config_for(spec, row, None, quick)
            r = quality_engine.evaluate_path(cfg, row.model)
            refs[(row.section, row.name)] = {k: v for k, v in r.items() if k != "predictions"}
    # 3. Training runs, in worker processes.
    t_train = time.perf_counter()
    done = 0
    if todo:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(1 if workers > 1 else 2,)) as pool:
            futures = {pool.submit(_train_one, j["cfg"].public_dict(),
                                   str(STATE / "runs" / f"{k}.json")): k
                       for k, j in todo.items()}
            for fut in futures:
                r = fut.result()
                done += 1
                k = futures[fut]
                log(f"  [{done}/{len(todo)}] {', '.join(sorted(set(jobs[k]['rows'])))} seed "
                    f"{jobs[k]['cfg'].training.seed}: {r['accuracy']:.3f} "
                    f"({r['wall_s']:.0f} s)")
    train_s = time.perf_counter() - t_train
    runs = {k: json.loads((STATE / "runs" / f"{k}.json").read_text()) for k in jobs}
    out_rows = []
    for row, keys in plan:
        entry = {"section": row.section, "name": row.name, "paper": row.paper,
                 "overrides": list(row.overrides), "dataset": row.dataset}
        if row.model:
            r = refs[(row.section, row.name)]
            entry.update(model=row.model, accuracy=[r["accuracy"]], params=r["params"],
                         per_task={k: [v] for k, v in r["per_task"].items()})
        else:
            rs = [runs[k] for k in keys]
            entry.update(seeds=seeds, accuracy=[r["accuracy"] for r in rs],
                         params=rs[0]["params"], steps=[r["steps"] for r in rs],
                         answers=[r["answers"] for r in rs],
                         per_task={t: [r["per_task"][t] for r in rs] for t in rs[0]["per_task"]},
                         train_s=[r["train_s"] for r in rs], wall_s=[r.get("wall_s") for r in rs],
                         curves=[r.get("curve") or [] for r in rs],
                         distill_untied=[r.get("means", {}).get("reward/distill_untied")
                                         for r in rs], run_keys=keys)
        out_rows.append(entry)
    return {"quick": quick, "seeds": seeds, "base": spec.base, "workers": workers,
            "code_digest": code, "sections": [{k: s[k] for k in ("id", "title", "dataset")}
                                              for s in spec.sections
                                              if not only or s["id"] in only],
            "rows": out_rows, "base_config": _base_summary(spec, quick),
            "timing": {"total_s": time.perf_counter() - t_start, "generation_s": gen_s,
                       "training_s": train_s, "runs_total": len(jobs), "runs_done": done}}


def _base_summary(spec: Spec, quick: bool) -> dict:
    from masters.config import load_config

    cfg = load_config(ROOT / spec.base, list(spec.quick_overrides if quick else ()))
    return {"train_size": cfg.data.train_size, "test_size": cfg.data.test_size,
            "batch_groups": cfg.training.batch_groups, "lr": cfg.training.lr,
            "kl_beta": cfg.training.kl_beta, "jsd_weight": cfg.training.jsd_weight,
            "teacher_answers": cfg.generation.teacher_answers,
            "student_answers": cfg.generation.student_answers,
            "max_new_tokens": cfg.generation.max_new_tokens,
            "warmup_steps": cfg.training.warmup_steps, "lr_decay": cfg.training.lr_decay,
            "epochs": cfg.training.epochs, "scorer": cfg.eval_scorer()["scorer"],
            "teachers": [f"{t.name} (r_max {t.r_max:g})" for t in cfg.teachers]}


# ---- the report ----------------------------------------------------------------------------


def _schedule(b: dict) -> str:
    parts = []
    if b.get("warmup_steps"):
        parts.append(f"{b['warmup_steps']} warm-up steps")
    if b.get("lr_decay", "constant") != "constant":
        parts.append(f"{b['lr_decay']} decay")
    if b.get("epochs", 1) > 1:
        parts.append(f"{b['epochs']} passes over each stage's questions")
    return f" ({', '.join(parts)})" if parts else ""


def fmt(values: list[float]) -> str:
    m, s = mean_std(values)
    return f"{m:.3f}" if len(values) == 1 else f"{m:.3f} ± {s:.3f}"


def _by_name(results: dict, section: str) -> dict[str, dict]:
    return {r["name"]: r for r in results["rows"] if r["section"] == section}


def _family_table(rows: list[dict]) -> list[str]:
    fams = sorted({f for r in rows for f in r["per_task"]})
    out = ["| row | " + " | ".join(fams) + " |", "|---|" + "---:|" * len(fams)]
    for r in rows:
        out.append(f"| {r['name']} | " + " | ".join(
            f"{statistics.fmean(r['per_task'][f]):.2f}" if f in r["per_task"] else ""
            for f in fams) + " |")
    return out


def compare(a: dict, b: dict) -> tuple[float, str]:
    """Mean difference a - b and whether it exceeds the larger of the two seed stds."""
    (ma, sa), (mb, sb) = mean_std(a["accuracy"]), mean_std(b["accuracy"])
    d = ma - mb
    noise = max(sa, sb)
    word = "within noise" if abs(d) <= noise else ("better" if d > 0 else "worse")
    return d, word


def _agreement(results: dict) -> list[str]:
    """Each paper claim of Table 5(d) as a sign test against our means."""
    comp = _by_name(results, "components")
    lines = []
    steps = [("naive distillation", "naive + multi-response"),
             ("naive + multi-response", "naive + multi-response + rewards"),
             ("naive + multi-response + rewards",
              "naive + multi-response + rewards + mid teacher"),
             ("mask-progressive", "mask-progressive + multi-response"),
             ("mask-progressive + multi-response", "mask-progressive + multi-response + rewards"),
             ("mask-progressive + multi-response + rewards", "full Masters"),
             ("naive distillation", "mask-progressive"),
             ("naive + multi-response + rewards + mid teacher", "full Masters")]
    for a, b in steps:
        if a not in comp or b not in comp:
            continue
        pa, pb = comp[a].get("paper"), comp[b].get("paper")
        d, word = compare(comp[b], comp[a])
        paper = f"paper {pb - pa:+.1f}" if isinstance(pa, int | float) and isinstance(
            pb, int | float) else "paper: n/a"
        verdict = ("agrees" if word == "better" else "disagrees" if word == "worse"
                   else "not resolved (difference within the seed std)")
        lines.append(f"- {a} -> {b}: ours {d:+.3f} ({word}); {paper}: {verdict}")
    return lines


def targets(results: dict) -> list[str]:
    """The issue's targets, checked from the numbers (met / missed, never typed by hand)."""
    ref, comp = _by_name(results, "reference"), _by_name(results, "components")
    full, naive = comp.get("full Masters"), comp.get("naive distillation")
    label, large = ref.get("label-trained student"), ref.get("large teacher")
    init = ref.get("initial student")
    out = []
    for other, name in ((naive, "naive distillation"), (label, "label-only training"),
                        (init, "the initial student")):
        if full and other:  # the goal: ahead by more than 2 seed stds (the larger one)
            d, _ = compare(full, other)
            noise = max(mean_std(full["accuracy"])[1], mean_std(other["accuracy"])[1])
            ok = d > 2 * noise
            out.append(f"- full Masters vs {name}: {d:+.3f} (goal: > 2 x the larger seed std "
                       f"{noise:.3f}): **{'met' if ok else 'missed'}**")
    shares = [v for v in (full or {}).get("distill_untied") or [] if v is not None]
    if shares:
        share = statistics.fmean(shares)
        out.append(f"- groups whose distillation reward is not tied (full Masters, mean over "
                   f"training steps and seeds): {share:.1%}; goal: most groups: "
                   f"**{'met' if share > 0.5 else 'missed'}**")
    out += _r_max_target(_by_name(results, "r_max"))
    topk = _by_name(results, "topk")
    exact = topk.get("whole vocabulary")
    within = []
    for name, r in topk.items():
        if exact and name.startswith("k = "):
            d, _ = compare(r, exact)
            noise = max(mean_std(r["accuracy"])[1], mean_std(exact["accuracy"])[1])
            within.append((int(name[4:]), d, noise))
    if within:
        ok = [k for k, d, noise in within if abs(d) <= noise]
        detail = ", ".join(f"k = {k}: {d:+.3f} (std {noise:.3f})" for k, d, noise in
                           sorted(within))
        out.append(f"- top-k cached distributions vs the whole vocabulary, final accuracy: "
                   f"{detail}; smallest k within the seed std: "
                   f"**{min(ok) if ok else 'none'}**")
    if full and large:
        kept = statistics.fmean(full["accuracy"]) / statistics.fmean(large["accuracy"])
        ratio = full["params"] / large["params"]
        ok = kept >= 0.9 and ratio <= 0.25
        out.append(f"- retention (full Masters / large teacher) {kept:.3f} with "
                   f"{ratio:.3f} of its parameters (1/{1 / ratio:.1f}); target >= 0.90 with "
                   f"<= 1/4: **{'met' if ok else 'missed'}**")
    return out


def _r_max_target(rows: dict[str, dict]) -> list[str]:
    """Goal: the best r_max lies inside the sweep, ahead of both ends by more than the
    larger seed std of the best and the better end."""
    sweep = sorted((float(n.split("=")[1]), r) for n, r in rows.items() if n.startswith("r_max ="))
    if len(sweep) < 3:
        return []
    means = [(x, *mean_std(r["accuracy"])) for x, r in sweep]
    best = max(means, key=lambda m: m[1])
    end = max((means[0], means[-1]), key=lambda m: m[1])
    interior = best[0] not in (means[0][0], means[-1][0])
    margin, noise = best[1] - end[1], max(best[2], end[2])
    ok = interior and margin > noise
    where = "inside the sweep" if interior else "at an end of the sweep"
    return [f"- r_max sweep: best mean at r_max = {best[0]:g} ({best[1]:.3f}, {where}), "
            f"{margin:+.3f} over the better end (r_max = {end[0]:g}; larger seed std "
            f"{noise:.3f}); goal: an interior optimum beyond the seed std: "
            f"**{'met' if ok else 'missed'}**"]


def _curve_table(rows: list[dict]) -> list[str]:
    """Validation accuracy (seed mean) at each recorded step, one line per trained row."""
    rows = [r for r in rows if any(r.get("curves") or [])]
    if not rows:
        return []
    steps = sorted({p["step"] for r in rows for c in r["curves"] for p in c})
    out = ["| row | " + " | ".join(str(s) for s in steps) + " |",
           "|---|" + "---:|" * len(steps)]
    for r in rows:
        at = {s: [p["accuracy"] for c in r["curves"] for p in c if p["step"] == s]
              for s in steps}
        out.append(f"| {r['name']} | " + " | ".join(
            f"{statistics.fmean(v):.3f}" if v else "" for v in at.values()) + " |")
    return out


def curve_figure(rows: list[dict], title: str, path: Path) -> bool:
    """The section's learning curves (seed mean, min-max band) as a PNG; False if none."""
    from masters import plots

    curves = {r["name"]: r["curves"] for r in rows if any(r.get("curves") or [])}
    if not curves:
        return False
    fig = plots.learning_curves(curves, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plots.close(fig)
    return True


def markdown(results: dict, out_dir: str | Path | None = None) -> str:
    """The report; with `out_dir` (the report's folder) each section's learning curves are
    also drawn to `out_dir/docs/images/bench_curves_<section>.png` and linked."""
    b = results["base_config"]
    t = results["timing"]
    lines = [
        f"Embedded task, test split ({b['test_size']} questions, greedy, scored by "
        f"`{b.get('scorer', 'phrase_match')}`). Every "
        f"trained row: {b['train_size']} training questions, {b['batch_groups']} questions "
        f"per step (so the same number of optimizer steps for every row), lr {b['lr']:g}"
        f"{_schedule(b)}, "
        f"KL beta {b['kl_beta']:g}, JSD weight {b['jsd_weight']:g}, answers of at most "
        f"{b['max_new_tokens']} tokens; default chain {', '.join(b['teachers'])}, "
        f"{b['teacher_answers']} + {b['student_answers']} answers per question. "
        f"Seeds {results['seeds']} (`training.seed`: data order and training RNG; the "
        "generated answers are shared by all seeds), mean ± sample std. Rows and overrides: "
        "`configs/bench/quality_rows.yaml`." + (" **Quick mode** (`make bench-quick`): "
                                                "reduced rows and data." if results["quick"]
                                                else ""),
        "",
        f"Time: {t['total_s'] / 60:.1f} min in all ({t['runs_done']} of {t['runs_total']} "
        f"runs trained in this invocation, the rest read from `.masters/bench/quality/`; "
        f"generation {t['generation_s'] / 60:.1f} min, training + evaluation "
        f"{t['training_s'] / 60:.1f} min on {results['workers']} worker(s)).",
    ]
    for sec in results["sections"]:
        rows = [r for r in results["rows"] if r["section"] == sec["id"]]
        if not rows:
            continue
        lines += ["", f"### {sec['title']}", ""]
        if sec.get("dataset"):
            lines += [f"Dataset `{sec['dataset']}` (`benchmarks/quality_data.py`), written to "
                      "local parquet files and read through `data.source=datasets` with a "
                      "column mapping; same base config and rows as above, not re-tuned.", ""]
        large = _large_teacher(results, sec)
        lines += ["| row | params | steps | answers | test accuracy | retention of the large "
                  "teacher | paper |", "|---|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            paper = r.get("paper")
            paper = "" if paper is None else f"{paper}"
            kept = (f"{statistics.fmean(r['accuracy']) / statistics.fmean(large['accuracy']):.3f}"
                    if large else "")
            steps = f"{r['steps'][0]}" if r.get("steps") else ""
            answers = f"{r['answers'][0]:,}" if r.get("answers") else ""
            lines.append(f"| {r['name']} | {r['params']:,} | {steps} | {answers} | "
                         f"{fmt(r['accuracy'])} | {kept} | {paper} |")
        lines += ["", "Per question family (mean over seeds):", "", *_family_table(rows)]
        curve = _curve_table(rows)
        if curve:
            lines += ["", "Learning curve: validation accuracy against optimizer steps (mean "
                      "over seeds):", "", *curve]
            name = f"docs/images/bench_curves_{sec['id']}.png"
            if out_dir is not None and curve_figure(rows, sec["title"], Path(out_dir) / name):
                lines += ["", f"![learning curves: {sec['title']}]({name})"]
        if sec["id"] == "components":
            lines += ["", *_paper_grid(rows)]
    agree = _agreement(results)
    if agree:
        lines += ["", "### Agreement with the paper (Table 5(d) steps)", "", *agree]
    tg = targets(results)
    if tg:
        lines += ["", "### Targets", "", *tg]
    return "\n".join(lines)


def _large_teacher(results: dict, section: dict) -> dict | None:
    """The large teacher's row on the same data: the section's own, else the reference one."""
    own = [r for r in results["rows"] if r["section"] == section["id"]
           and r.get("model") == "embedded:large"]
    if own:
        return own[0]
    if section.get("dataset"):
        return None
    ref = [r for r in results["rows"] if r["section"] == "reference"
           and r.get("model") == "embedded:large"]
    return ref[0] if ref else None


def _paper_grid(rows: list[dict]) -> list[str]:
    """Table 5(d) in the paper's shape: base x added components, ours (paper)."""
    by = {r["name"]: r for r in rows}
    cols = ["", " + multi-response", " + multi-response + rewards"]
    out = ["In the paper's shape (ours, paper in brackets):", "",
           "| | distillation | + multi-response | + rewards | + mid teacher |",
           "|---|---:|---:|---:|---:|"]
    for base, label in (("naive", "naive"), ("mask-progressive", "mask-progressive")):
        names = [f"{base}{'' if base == 'mask-progressive' else ' distillation'}"
                 if not c else f"{base}{c}" for c in cols]
        names.append("naive + multi-response + rewards + mid teacher" if base == "naive"
                     else "full Masters")
        cells = []
        for n in names:
            r = by.get(n)
            cells.append("" if r is None else
                         f"{statistics.fmean(r['accuracy']):.3f} ({r.get('paper', '')})")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return out


def estimate(results: dict) -> str:
    """Projected full-bench time from measured per-run wall times (for sizing)."""
    walls = [w for r in results["rows"] for w in (r.get("wall_s") or []) if w]
    if not walls:
        return "no timed run"
    return f"{len(walls)} runs, mean {statistics.fmean(walls):.0f} s, max {max(walls):.0f} s"


def probe(overrides: list[str], seeds: list[int], base: str | None = None) -> list[dict]:
    """One config (the base + `--set` overrides) for each seed, in this process: the tuning
    experiments in docs/benchmarks.md are such probes."""
    import torch

    from benchmarks import quality_engine
    from masters.config import load_config

    torch.set_num_threads(1)
    spec = load_spec()
    out = []
    for seed in seeds:
        cfg = load_config(ROOT / (base or spec.base), [*overrides, f"training.seed={seed}"])
        r = quality_engine.run_config(cfg, log=lambda *a: None)
        r.pop("predictions", None)
        fams = " ".join(f"{k} {v:.2f}" for k, v in sorted(r["per_task"].items()))
        print(f"seed {seed}: accuracy {r['accuracy']:.3f} | {fams} | {r['steps']} steps, "
              f"{r['answers']} answers, train {r['train_s']:.0f} s", flush=True)
        out.append(r)
    if len(out) > 1:
        m, sd = mean_std([r["accuracy"] for r in out])
        print(f"mean {m:.3f} ± {sd:.3f} over seeds {seeds}")
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["probe"]:
        p = argparse.ArgumentParser(prog="python -m benchmarks.quality probe",
                                    description="train and evaluate one config")
        p.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE")
        p.add_argument("--seeds", default="0", help="comma-separated training seeds")
        p.add_argument("--base", help="base config (default: the row table's)")
        a = p.parse_args(argv[1:])
        probe(a.overrides, [int(x) for x in a.seeds.split(",")], a.base)
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--workers", type=int)
    p.add_argument("--only", action="append", help="section id (repeatable)")
    p.add_argument("--rows", default=str(ROWS_FILE))
    p.add_argument("--json", default=str(STATE / "results.json"))
    args = p.parse_args(argv)
    results = run(args.quick, args.workers, args.only, args.rows)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(markdown(results, Path(args.json).parent))
    print(f"\n(runs: {estimate(results)})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
