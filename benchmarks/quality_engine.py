"""One quality-benchmark run: the masters-distill pipeline's steps, called as library code.

`run_config(cfg)` does what `masters distill` does for one config, minus Prefect, MLflow and
the registry: the masked teachers, offline generation of every stage into the
content-addressed cache (so answers are generated once and shared by every row and seed that
asks for the same stage), rule-based accuracy rewards, training with `MastersTrainer` over the
mask-progressive schedule, then greedy test accuracy of the trained student.

The functions it calls are the pipeline's own (`masters.pipeline`, `masters.generation.plan_stage`
/ `write_shard`, `masters.training`, `masters.evaluation`), so
a row measures the pipeline, not a re-implementation; only the orchestration is inline.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from masters import cache, evaluation, generation, models, pipeline, train_job, training
from masters.config import MastersConfig
from masters.generation import LoadedModel
from masters.schedule import build_schedule, generation_order

_MODELS: dict[str, tuple[Any, Any, str]] = {}  # path -> (model, processor, fingerprint)
_TEACHER = pipeline.StageTeacher()  # one masked teacher at a time, ratios increasing
_EVALS: dict[tuple[str, str], dict] = {}


def load_split(cfg: MastersConfig, split: str):
    return pipeline.load_split(cfg.data, split)


def _frozen(path: str):
    """A model that is never trained or masked (the generating initial student, an evaluated
    teacher), kept loaded."""
    if path not in _MODELS:
        model, processor = models.load(path)
        _MODELS[path] = (model, processor, models.fingerprint(model))
    return _MODELS[path]


def stage_groups(cfg: MastersConfig, store, stats: dict) -> tuple[list, dict[int, list]]:
    """The schedule and, per stage, its question groups (answers from the cache, R_acc)."""
    split = load_split(cfg, "train")
    stages = build_schedule(cfg.teachers, len(split))
    ids = [str(i) for i in split["id"]]
    index = {q: i for i, q in enumerate(ids)}
    s_model, s_proc, s_fp = _frozen(cfg.student.path)
    student = LoadedModel(s_model, s_proc)
    by_stage: dict[int, list] = {}
    for stage in generation_order(stages):
        # The fingerprint keys the shards, so the teacher is loaded even for a cached stage.
        teacher, t_fp = _TEACHER.get(cfg, stage)
        planned = generation.plan_stage(store, stage, ids, lambda s: pipeline.shard_rows(split, s),
                                        cfg.generation, teacher_fingerprint=t_fp,
                                        student_fingerprint=s_fp,
                                        vocab=len(s_proc.tokenizer.get_vocab()))
        missing = [p for p in planned if not p["cached"]]
        if missing:
            t0 = time.perf_counter()
            for p in missing:
                generation.write_shard(store, p, stage, teacher, student,
                                       pipeline.shard_rows(split, generation.shard_from_dict(p)),
                                       cfg.generation)
            stats["generation_s"] = stats.get("generation_s", 0.0) + time.perf_counter() - t0
            stats["shards_generated"] = stats.get("shards_generated", 0) + len(missing)
        scored = pipeline.score_shards(store, planned, split, cfg.rewards)
        by_stage[stage.index] = pipeline.stage_groups(
            store, planned, [s["score_key"] for s in scored["scores"]], split, index)
    return stages, by_stage


def prepare(cfg: MastersConfig, stats: dict | None = None) -> None:
    """Generate and score every stage of `cfg` into the cache (what workers then only read)."""
    stage_groups(cfg, cache.open_store(cfg.storage), stats if stats is not None else {})


def label_groups(cfg: MastersConfig, processor) -> tuple[list, dict[int, list]]:
    """The supervised baseline's data: each stage's slice with the dataset answer."""
    split = load_split(cfg, "train")
    stages = build_schedule(cfg.teachers, len(split))
    return stages, {st.index: pipeline.label_groups(split, st, processor.tokenizer)
                    for st in stages}


def evaluate(cfg: MastersConfig, model, processor, split: str = "test") -> dict:
    result = evaluation.evaluate_dataset(
        model, processor, load_split(cfg, split), batch_size=cfg.evaluation.batch_size,
        max_new_tokens=cfg.evaluation.max_new_tokens, **cfg.eval_scorer())
    return {"accuracy": result.accuracy, "per_task": result.per_task, "n": result.n,
            "params": sum(p.numel() for p in model.parameters()),
            "words": float(np.mean([len(p.split()) for p in result.predictions])),
            "predictions": result.predictions}


def evaluate_path(cfg: MastersConfig, path: str, split: str = "test") -> dict:
    """Accuracy of an untrained model (a teacher, the initial student), once per data."""
    key = (path, cfg.data.model_dump_json() + split)
    if key not in _EVALS:
        model, processor, _ = _frozen(path)  # never the masked teacher: its own load
        _EVALS[key] = evaluate(cfg, model, processor, split)
    return _EVALS[key]


def run_config(cfg: MastersConfig, log=print) -> dict:
    """Generate (cached), score, train and evaluate one config; returns accuracy and costs."""
    stats: dict[str, Any] = {}
    store = cache.open_store(cfg.storage)
    t0 = time.perf_counter()
    student, processor = models.load(cfg.student.path)
    supervised = cfg.training.objective == "supervised"
    if supervised:
        stages, by_stage = label_groups(cfg, processor)
    else:
        stages, by_stage = stage_groups(cfg, store, stats)
    stats["prepare_s"] = time.perf_counter() - t0
    trainer = training.MastersTrainer(student, processor, cfg.training,
                                      evaluate=train_job.validation_accuracy(cfg))
    trainer.setup(training.planned_steps(stages, cfg.training))
    trainer.curve_point()  # step 0 (when training.eval_every is set)
    t1 = time.perf_counter()
    sums: dict[str, list[float]] = {}
    for stage in stages:  # the student alone: teachers ran in generation (distributions)
        for res in trainer.train_stage(stage, by_stage[stage.index]):
            for k, v in {**res.terms, **res.rewards}.items():
                sums.setdefault(k, []).append(v)
    stats["train_s"] = time.perf_counter() - t1
    stats["steps"] = trainer.step
    stats["curve"] = trainer.curve
    stats["answers"] = sum(len(g.answers) for gs in by_stage.values() for g in gs)
    stats["means"] = {k: float(np.mean(v)) for k, v in sums.items()}
    t2 = time.perf_counter()
    result = evaluate(cfg, student, processor)
    stats["eval_s"] = time.perf_counter() - t2
    log(f"  acc {result['accuracy']:.3f} words {result['words']:.1f} "
        + " ".join(f"{k}={v:.2f}" for k, v in sorted(result["per_task"].items()))
        + f" | steps {stats['steps']} train {stats['train_s']:.0f}s prep "
        f"{stats['prepare_s']:.0f}s")
    return {**result, **stats}
