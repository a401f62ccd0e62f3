"""The quality benchmark's row table and report, on fake results (no model is trained)."""

from __future__ import annotations

import statistics

import pytest

from benchmarks import quality
from masters.config import load_config


def test_shipped_row_table_resolves():
    spec = quality.load_spec()
    rows = spec.rows()
    assert {r.section for r in rows} >= {"reference", "components", "r_max", "rewards"}
    assert spec.seeds == [0, 1, 2]
    for row in rows:  # every override set is a valid config
        if not row.model:
            quality.config_for(spec, row, 0, quick=False)
    quick = spec.rows(quick=True)
    assert 0 < len(quick) < len(rows)
    # r_max = 0.2 and "both rewards" are full Masters: the same run, trained once.
    code = "x"
    key = {r.name: quality.run_key(quality.config_for(spec, r, 0, False), code)
           for r in rows if r.section in ("components", "r_max", "rewards") and not r.model}
    assert key["full Masters"] == key["r_max = 0.2"] == key["both rewards"]
    assert len({key["full Masters"], key["naive distillation"], key["r_max = 0.4"]}) == 3


def test_overrides_round_trip():
    sets = quality.to_overrides({"teachers": [{"name": "large", "path": "embedded:large",
                                               "r_max": 0.0}],
                                 "training.lr": 3e-5, "training.distill_reward": False})
    cfg = load_config(None, list(sets))
    assert [t.name for t in cfg.teachers] == ["large"] and cfg.teachers[0].r_max == 0.0
    assert cfg.training.lr == 3e-5 and cfg.training.distill_reward is False


def test_markdown_and_targets_from_fake_results():
    acc = {"full Masters": [0.70, 0.72, 0.71], "naive distillation": [0.60, 0.61, 0.62],
           "label-trained student": [0.65, 0.65, 0.66]}
    m, s = quality.mean_std(acc["full Masters"])
    assert m == pytest.approx(statistics.fmean(acc["full Masters"]))
    assert s == pytest.approx(statistics.stdev(acc["full Masters"]))

    def row(section, name, values, params, paper=None, model=None):
        return {"section": section, "name": name, "accuracy": values, "params": params,
                "paper": paper, "per_task": {"count": values, "where": values}, "model": model}

    results = {
        "quick": False, "seeds": [0, 1, 2], "workers": 1,
        "sections": [{"id": "reference", "title": "Reference", "dataset": None},
                     {"id": "components", "title": "Table 5(d)", "dataset": None}],
        "rows": [row("reference", "large teacher", [0.98], 1_000_000, model="embedded:large"),
                 row("reference", "initial student", [0.64], 200_000),
                 row("reference", "label-trained student", acc["label-trained student"],
                     200_000),
                 row("components", "naive distillation", acc["naive distillation"], 200_000,
                     75.8),
                 {**row("components", "full Masters", acc["full Masters"], 200_000, 80.0),
                  "distill_untied": [0.9, 0.8, None]}],
        "base_config": {"train_size": 8, "test_size": 4, "batch_groups": 2, "lr": 1e-4,
                        "kl_beta": 0.1, "jsd_weight": 1.0, "teacher_answers": 4,
                        "student_answers": 4, "max_new_tokens": 4,
                        "teachers": ["mid (r_max 0.2)", "large (r_max 0.2)"]},
        "timing": {"total_s": 60.0, "generation_s": 10.0, "training_s": 40.0,
                   "runs_total": 9, "runs_done": 9},
    }
    md = quality.markdown(results)
    assert f"| full Masters | 200,000 |  |  | {m:.3f} ± {s:.3f} | {m / 0.98:.3f} | 80.0 |" in md
    assert "| large teacher | 1,000,000 |  |  | 0.980 | 1.000 |  |" in md
    lines = quality.targets(results)
    assert "vs naive distillation: +0.100" in lines[0] and "**met**" in lines[0]
    assert "**met**" in lines[1]  # +0.057 over label training, stds ~0.006
    retention = 0.71 / 0.98
    assert f"retention (full Masters / large teacher) {retention:.3f}" in lines[4]
    assert "**missed**" in lines[4]  # 0.724 < 0.9
    assert "not tied (full Masters, mean over training steps and seeds): 85.0%" in lines[3]
    assert "**met**" in lines[3]
    assert "goal: > 2 x the larger seed std 0.010" in lines[0]


def test_r_max_target_needs_an_interior_optimum_beyond_the_seed_std():
    def sweep(*means):
        return {f"r_max = {x}": {"accuracy": [m - 0.01, m, m + 0.01]}
                for x, m in zip((0, 0.1, 0.2, 0.3), means, strict=True)}

    met = quality._r_max_target(sweep(0.70, 0.72, 0.75, 0.71))
    assert "best mean at r_max = 0.2 (0.750, inside the sweep), +0.040 over the better end " \
           "(r_max = 0.3; larger seed std 0.010)" in met[0] and "**met**" in met[0]
    assert "**missed**" in quality._r_max_target(sweep(0.70, 0.72, 0.745, 0.74))[0]  # noise
    edge = quality._r_max_target(sweep(0.76, 0.72, 0.74, 0.71))[0]
    assert "at an end of the sweep" in edge and "**missed**" in edge
    assert quality._r_max_target({}) == []


def test_markdown_tabulates_and_draws_the_learning_curves(tmp_path):
    def curve(*acc):
        return [{"step": s, "accuracy": a} for s, a in zip((0, 64, 128), acc, strict=True)]

    rows = [{"section": "components", "name": "naive distillation", "accuracy": [0.7, 0.8],
             "params": 10, "paper": None, "per_task": {"count": [0.7, 0.8]},
             "curves": [curve(0.6, 0.7, 0.7), curve(0.6, 0.8, 0.9)]},
            {"section": "components", "name": "initial student", "accuracy": [0.6],
             "params": 10, "paper": None, "per_task": {"count": [0.6]}, "model": "x"}]
    results = {"quick": False, "seeds": [0, 1], "workers": 1,
               "sections": [{"id": "components", "title": "Table 5(d)", "dataset": None}],
               "rows": rows,
               "base_config": {"train_size": 8, "test_size": 4, "batch_groups": 2, "lr": 3e-4,
                               "warmup_steps": 20, "lr_decay": "cosine", "epochs": 2,
                               "kl_beta": 0.1, "jsd_weight": 1.0, "teacher_answers": 4,
                               "student_answers": 4, "max_new_tokens": 12,
                               "teachers": ["large (r_max 0.2)"]},
               "timing": {"total_s": 6.0, "generation_s": 1.0, "training_s": 4.0,
                          "runs_total": 2, "runs_done": 2}}
    md = quality.markdown(results, tmp_path)
    assert "lr 0.0003 (20 warm-up steps, cosine decay, 2 passes" in md
    assert "| row | 0 | 64 | 128 |" in md
    assert "| naive distillation | 0.600 | 0.750 | 0.800 |" in md  # seed means
    assert "initial student |" not in md.split("Learning curve")[1]  # untrained: no curve
    figure = tmp_path / "docs/images/bench_curves_components.png"
    assert figure.stat().st_size > 0
    assert "](docs/images/bench_curves_components.png)" in md
    assert "bench_curves" not in quality.markdown(results)  # no folder: no figure


def test_engine_run_spans_the_lr_schedule_and_draws_the_curve(tmp_path, checkpoints):
    """The benchmark's engine trains like the pipeline: it knows the planned steps (the lr
    schedule spans them; the curve's last point is the last step) and draws the curve."""
    from pathlib import Path

    from conftest import smoke_distill_overrides

    from benchmarks import quality_engine

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "configs" / "smoke.yaml", smoke_distill_overrides(
        tmp_path, checkpoints) + ["training.objective=supervised", "training.epochs=2",
                                  "training.lr_decay=cosine", "training.eval_every=3",
                                  "data.validation_size=6"])
    out = quality_engine.run_config(cfg, log=lambda *a: None)
    assert out["steps"] == 8
    assert [p["step"] for p in out["curve"]] == [0, 3, 6, 8]
    assert all(0.0 <= p["accuracy"] <= 1.0 for p in out["curve"])
