"""One quality-benchmark run: the masters-distill pipeline's steps, called as library code.

`run_config(cfg)` does what `masters distill` does for one config, minus Prefect, MLflow and
the registry: threshold tables of the teachers, offline generation of every stage into the
content-addressed cache (so answers are generated once and shared by every row and seed that
asks for the same stage), rule-based accuracy rewards, training with `MastersTrainer` over the
mask-progressive schedule, then greedy test accuracy of the trained student.

The functions it calls are the pipeline's own (`masters.generation.plan_stage` /
`write_shard`, `masters.scoring.score_records`, `masters.training`, `masters.evaluation`), so
a row measures the pipeline, not a re-implementation; only the orchestration is inline.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import numpy as np

from masters import cache, data, distributions, evaluation, generation, models, scoring, training
from masters.config import MastersConfig
from masters.generation import LoadedModel
from masters.masking import MaskedTeacher, MaskScope, compute_thresholds
from masters.schedule import build_schedule

_SPLITS: dict[tuple[str, str], Any] = {}
_MODELS: dict[str, tuple[Any, Any, str]] = {}  # path -> (model, processor, fingerprint)
_TABLES: dict[str, MaskedTeacher] = {}  # teacher fingerprint -> masked teacher
_EVALS: dict[tuple[str, str], dict] = {}


def load_split(cfg: MastersConfig, split: str):
    key = (cfg.data.model_dump_json(), split)
    if key not in _SPLITS:
        _SPLITS[key] = data.load_split(cfg.data, split)
    return _SPLITS[key]


def _frozen(path: str):
    """A model that is never trained (teachers, the generating initial student), kept loaded."""
    if path not in _MODELS:
        model, processor = models.load(path)
        _MODELS[path] = (model, processor, models.fingerprint(model))
    return _MODELS[path]


ALL_RATIOS = tuple(round(0.05 * i, 2) for i in range(19))  # 0 .. 0.9


def _masked_teacher(cfg: MastersConfig, teacher) -> tuple[MaskedTeacher, Any, str]:
    """One threshold table per teacher covering every ratio a row may ask for."""
    model, processor, fp = _frozen(teacher.path)
    ratios = tuple(sorted(set(ALL_RATIOS) | set(teacher.ratios())))
    masked = _TABLES.get(fp)
    if masked is None or not set(teacher.ratios()) <= set(masked.table.ratios):
        if masked is not None:
            masked.restore()
        scope = MaskScope(cfg.masking.include_embeddings, cfg.masking.include_lm_head)
        masked = _TABLES[fp] = MaskedTeacher(model, compute_thresholds(model, ratios, scope))
    return masked, processor, fp


def stage_groups(cfg: MastersConfig, store, stats: dict) -> tuple[list, dict[int, list]]:
    """The schedule and, per stage, its question groups (answers from the cache, R_acc)."""
    split = load_split(cfg, "train")
    stages = build_schedule(cfg.teachers, len(split))
    ids = [str(i) for i in split["id"]]
    index = {q: i for i, q in enumerate(ids)}
    s_model, s_proc, s_fp = _frozen(cfg.student.path)
    student = LoadedModel(s_model, s_proc)

    def rows_of(shard):
        part = split[shard.start : shard.stop]
        return [{"id": i, "question": q, "image": np.asarray(im.convert("RGB"))}
                for i, q, im in zip(part["id"], part["question"], part["image"], strict=True)]

    by_stage: dict[int, list] = {}
    for stage in stages:
        (t,) = [t for t in cfg.teachers if t.name == stage.teacher]
        masked, t_proc, t_fp = _masked_teacher(cfg, t)
        planned = generation.plan_stage(store, stage, ids, rows_of, cfg.generation,
                                        teacher_fingerprint=t_fp, student_fingerprint=s_fp,
                                        vocab=len(s_proc.tokenizer.get_vocab()))
        missing = [p for p in planned if not p["cached"]]
        if missing:
            t0 = time.perf_counter()
            masked.set_ratio(stage.ratio)
            for p in missing:
                generation.write_shard(store, p, stage, LoadedModel(masked.model, t_proc),
                                       student, rows_of(generation.shard_from_dict(p)),
                                       cfg.generation)
            stats["generation_s"] = stats.get("generation_s", 0.0) + time.perf_counter() - t0
            stats["shards_generated"] = stats.get("shards_generated", 0) + len(missing)
        groups: OrderedDict[str, training.Group] = OrderedDict()
        labels, digest = scoring.stage_labels(split, {q for p in planned
                                                      for q in p["question_ids"]})
        for p in planned:
            records = cache.get_jsonl(store, p["key"])
            dists = distributions.from_bytes(store.get_bytes(p["dists_key"]))
            key = scoring.score_key(p["key"], cfg.rewards, digest)
            scored = cache.get_jsonl(store, key) if store.exists(key) else None
            if scored is None:
                scored = scoring.score_records(records, labels, cfg.rewards)
                cache.put_jsonl(store, key, scored)
            for r, s, d in zip(records, scored, dists, strict=True):
                training.add_answer(groups, split, index, r, s["accuracy"], d)
        by_stage[stage.index] = list(groups.values())
    return stages, by_stage


def prepare(cfg: MastersConfig, stats: dict | None = None) -> None:
    """Generate and score every stage of `cfg` into the cache (what workers then only read)."""
    stage_groups(cfg, cache.open_store(cfg.storage), stats if stats is not None else {})


def label_groups(cfg: MastersConfig, processor) -> tuple[list, dict[int, list]]:
    """The supervised baseline's data: each stage's slice with the dataset answer."""
    split = load_split(cfg, "train")
    stages = build_schedule(cfg.teachers, len(split))
    by_stage = {}
    for st in stages:
        part = split[st.start : st.stop]
        by_stage[st.index] = [
            training.label_group(processor.tokenizer, str(i), np.asarray(im.convert("RGB")), q, a)
            for i, im, q, a in zip(part["id"], part["image"], part["question"], part["answer"],
                                   strict=True)]
    return stages, by_stage


def evaluate(cfg: MastersConfig, model, processor, split: str = "test") -> dict:
    result = evaluation.evaluate_dataset(
        model, processor, load_split(cfg, split), batch_size=cfg.evaluation.batch_size,
        max_new_tokens=cfg.evaluation.max_new_tokens)
    return {"accuracy": result.accuracy, "per_task": result.per_task, "n": result.n,
            "params": sum(p.numel() for p in model.parameters()),
            # answers of more than one word are wrong by exact match whatever their first word
            "multiword": float(np.mean([len(p.split()) != 1 for p in result.predictions])),
            "predictions": result.predictions}


def evaluate_path(cfg: MastersConfig, path: str, split: str = "test") -> dict:
    """Accuracy of an untrained model (a teacher, the initial student), once per data."""
    key = (path, cfg.data.model_dump_json() + split)
    if key not in _EVALS:
        model, processor, _ = _frozen(path)
        for m in _TABLES.values():  # evaluate teachers unmasked
            if m.model is model and m.ratio:
                m.restore()
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
    trainer = training.MastersTrainer(student, processor, cfg.training)
    trainer.setup()
    t1 = time.perf_counter()
    sums: dict[str, list[float]] = {}
    for stage in stages:  # the student alone: teachers ran in generation (distributions)
        for res in trainer.train_stage(stage, by_stage[stage.index]):
            for k, v in {**res.terms, **res.rewards}.items():
                sums.setdefault(k, []).append(v)
    stats["train_s"] = time.perf_counter() - t1
    stats["steps"] = trainer.step
    stats["answers"] = sum(len(g.answers) for gs in by_stage.values() for g in gs)
    stats["means"] = {k: float(np.mean(v)) for k, v in sums.items()}
    t2 = time.perf_counter()
    result = evaluate(cfg, student, processor)
    stats["eval_s"] = time.perf_counter() - t2
    log(f"  acc {result['accuracy']:.3f} multiword {result['multiword']:.2f} "
        + " ".join(f"{k}={v:.2f}" for k, v in sorted(result["per_task"].items()))
        + f" | steps {stats['steps']} train {stats['train_s']:.0f}s prep "
        f"{stats['prepare_s']:.0f}s")
    return {**result, **stats}
