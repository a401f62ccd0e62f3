"""Prefect tasks: plan a stage's shards, generate one shard, write a stage's manifest.

Tasks pass cache keys, fingerprints and small dicts, never models. The models a shard needs
stay resident in the worker process between shard tasks (`RESIDENT`): loading a checkpoint
per shard would cost more than generating it. Nothing is loaded before a shard is missing.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from prefect import get_run_logger, task

from masters import cache, generation, models, pipeline
from masters.config import DataConfig, MastersConfig, from_public
from masters.generation import LoadedModel, Shard
from masters.schedule import Stage
from tasks.common import PERSIST, TRANSIENT_RETRIES, retry_transient


class Resident:
    """The current stage's masked teacher and the student of one process.

    One teacher at a time: the flow runs each teacher's stages with ratios increasing
    (`schedule.generation_order`), so it is loaded once and its mask only grows in place
    (`pipeline.StageTeacher`). `lock` serialises the shard tasks of a process, which share
    these models (a teacher holds one ratio at a time); process-based task runners (Dask,
    Ray) give each worker its own copy.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._teacher = pipeline.StageTeacher()
        self.clear()

    def clear(self) -> None:
        with self.lock:
            self._student: tuple[tuple, LoadedModel] | None = None
            self._vocab: tuple[tuple, int] | None = None
            self._teacher.clear()

    def split(self, cfg: DataConfig):
        return pipeline.load_split(cfg, "train")

    def vocab(self, cfg: MastersConfig) -> int:
        """Tokens of the student's tokenizer: the vocabulary distributions are kept over."""
        ident = (cfg.student.path, cfg.student.trust_remote_code, repr(cfg.student.processor))
        with self.lock:
            if self._vocab is None or self._vocab[0] != ident:
                processor = models.load_processor(models.resolve_path(cfg.student.path),
                                                  cfg.student.trust_remote_code,
                                                  cfg.student.processor)
                self._vocab = (ident, len(processor.tokenizer.get_vocab()))
            return self._vocab[1]

    def ids(self, cfg: DataConfig) -> list[str]:
        return [str(i) for i in self.split(cfg)["id"]]

    def rows(self, cfg: DataConfig, shard: Shard) -> list[dict[str, Any]]:
        return pipeline.shard_rows(self.split(cfg), shard)

    def teacher(self, cfg: MastersConfig, stage: Stage, fingerprint: str) -> LoadedModel:
        with self.lock:
            return self._teacher.get(cfg, stage, fingerprint)[0]

    def student(self, cfg: MastersConfig, fingerprint: str) -> LoadedModel:
        place = models.inference_placement(cfg)
        ident = (cfg.student.path, cfg.student.trust_remote_code, repr(cfg.student.processor),
                 str(place), fingerprint)
        with self.lock:
            if self._student is None or self._student[0] != ident:
                self._student = None
                model, processor = models.load_ref(cfg.student, **place)
                if models.fingerprint(model) != fingerprint:
                    raise ValueError(f"student at {cfg.student.path} changed since it was "
                                     f"fingerprinted ({fingerprint}); re-run the flow")
                self._student = (ident, LoadedModel(model, processor))
            return self._student[1]

    def __reduce__(self):
        # A task sent to another process (Dask pickles it with the globals its function
        # uses) means that process's own resident models, never a copy of these.
        return (_resident, ())


RESIDENT = Resident()


def _resident() -> Resident:
    return RESIDENT


# log_prints off where the split may be built: dill (under `datasets`) captures a bytecode
# disassembly from stdout, which a flow's log_prints would otherwise send to the run log.
@task(name="train-question-ids", **PERSIST, log_prints=False)
def train_question_ids(cfg_json: dict) -> list[str]:
    return RESIDENT.ids(from_public(cfg_json).data)


@task(name="fingerprint-model", **PERSIST)
def fingerprint_model(path: str, trust_remote_code: bool = False,
                      dtype: str = "float32") -> str:
    """Weight hash of a checkpoint as held in `dtype` (a torch dtype's name): part of every
    shard key that model's answers go into."""
    model, _ = models.load(path, trust_remote_code=trust_remote_code, dtype=getattr(torch, dtype))
    return models.fingerprint(model)


@task(name="plan-stage", retries=TRANSIENT_RETRIES, retry_condition_fn=retry_transient,
      log_prints=False, **PERSIST)
def plan_stage(cfg_json: dict, stage: dict, teacher_fingerprint: str,
               student_fingerprint: str) -> dict:
    """The stage's shards, keys and cache status; loads no model."""
    cfg = from_public(cfg_json)
    st = Stage(**stage)
    store = cache.open_store(cfg.storage)
    shards = generation.plan_stage(
        store, st, RESIDENT.ids(cfg.data), lambda s: RESIDENT.rows(cfg.data, s), cfg.generation,
        teacher_fingerprint=teacher_fingerprint, student_fingerprint=student_fingerprint,
        vocab=RESIDENT.vocab(cfg),
        processors={"teacher": next(t.processor for t in cfg.teachers if t.name == st.teacher),
                    "student": cfg.student.processor})
    cached = sum(s["cached"] for s in shards)
    get_run_logger().info("stage %d (%s, ratio %s): %d shards, %d cached", st.index, st.teacher,
                          st.ratio, len(shards), cached)
    return {"stage": stage, "teacher_fingerprint": teacher_fingerprint,
            "student_fingerprint": student_fingerprint, "shards": shards}


@task(name="generate-shard", retries=TRANSIENT_RETRIES, retry_condition_fn=retry_transient,
      log_prints=False, **PERSIST)
def generate_shard(cfg_json: dict, stage: dict, shard: dict, teacher_fingerprint: str,
                   student_fingerprint: str) -> dict:
    """Sample one shard's answers (masked teacher, then student) into the cache, then the
    teacher's distributions and the reference's log-probs on them (what training reads)."""
    cfg = from_public(cfg_json)
    st = Stage(**stage)
    store = cache.open_store(cfg.storage)
    if store.exists(shard["key"]) and store.exists(shard["dists_key"]):
        return {"key": shard["key"], "generated": False}  # a concurrent run, or a retry
    with RESIDENT.lock:
        rows = RESIDENT.rows(cfg.data, generation.shard_from_dict(shard))
        teacher = RESIDENT.teacher(cfg, st, teacher_fingerprint)
        reference = RESIDENT.student(cfg, student_fingerprint)  # the initial student
        student = reference if cfg.generation.student_answers else None
        written = generation.write_shard(store, shard, st, teacher, student, rows,
                                         cfg.generation, reference=reference)
    return {"key": shard["key"], "generated": written}


@task(name="stage-manifest", retries=TRANSIENT_RETRIES, retry_condition_fn=retry_transient,
      **PERSIST)
def write_stage_manifest(cfg_json: dict, plan: dict) -> dict:
    """Store the stage's manifest once all its shards exist; return it with this run's counts."""
    cfg = from_public(cfg_json)
    st = Stage(**plan["stage"])
    store = cache.open_store(cfg.storage)
    missing = [k for s in plan["shards"] for k in (s["key"], s["dists_key"])
               if not store.exists(k)]
    if missing:
        raise cache.CacheError(f"stage {st.index}: {len(missing)} shard(s) missing after "
                               f"generation, e.g. {store.uri(missing[0])}")
    manifest = generation.stage_manifest(
        st, plan["shards"], cfg.generation, teacher_fingerprint=plan["teacher_fingerprint"],
        student_fingerprint=plan["student_fingerprint"])
    key = generation.manifest_key([s["key"] for s in plan["shards"]],
                                  [s["dists_key"] for s in plan["shards"]])
    if store.get_or_none(key) is None:  # missing, or corrupt (then deleted by the read)
        cache.put_json(store, key, manifest, if_absent=True)
    cached = sum(s["cached"] for s in plan["shards"])
    return {**manifest, "manifest_key": key, "manifest_uri": store.uri(key),
            "cached": cached, "new": len(plan["shards"]) - cached}


