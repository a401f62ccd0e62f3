"""Prefect task: train the student over every stage, from cached answers and rewards."""

from __future__ import annotations

import gc
from collections import OrderedDict
from pathlib import Path

import numpy as np
from prefect import get_run_logger, task

from masters import cache, models, training
from masters.config import from_public
from masters.masking import MaskedTeacher, ThresholdTable
from masters.schedule import build_schedule
from masters.tracking import BufferedMetrics, Tracker
from tasks.common import flow_run_tags
from tasks.generate import RESIDENT


def run_key(manifests: list[dict], scores: list[dict], cfg) -> str:
    """Names the training run by its inputs, so a re-run resumes the same checkpoints."""
    parts = {"answers": [s["key"] for m in manifests for s in m["shards"]],
             "scores": [s["score_key"] for sc in scores for s in sc["scores"]],
             "training": cfg.training.model_dump(mode="json", exclude={"output_dir"}),
             "student": manifests[0]["student_fingerprint"] if manifests else None}
    return cache.content_key("train", parts).split("/", 1)[1]


class _Teachers:
    """One masked teacher resident at a time, moved along its staircase in place."""

    def __init__(self, cfg, tables: dict[str, dict], student_processor):
        self.cfg, self.tables, self.student_processor = cfg, tables, student_processor
        self.store = cache.open_store(cfg.storage)
        self.current: tuple[str, MaskedTeacher] | None = None

    def __call__(self, stage):
        if self.current is None or self.current[0] != stage.teacher:
            self.current = None
            gc.collect()
            (t,) = [t for t in self.cfg.teachers if t.name == stage.teacher]
            model, processor = models.load(t.path, trust_remote_code=t.trust_remote_code,
                                           device=models.pick_device(self.cfg.device))
            training.shared_vocab(self.student_processor, processor)
            table = ThresholdTable.from_dict(
                cache.get_json(self.store, self.tables[stage.teacher]["key"]))
            self.current = (stage.teacher, MaskedTeacher(model, table))
        self.current[1].set_ratio(stage.ratio)
        return self.current[1].model


def _groups_for(cfg, manifest: dict, scores: dict, split, index: dict[str, int]):
    store = cache.open_store(cfg.storage)
    acc = {}
    for s in scores["scores"]:
        for r in cache.get_jsonl(store, s["score_key"]):
            acc[(r["question_id"], r["source"], r["answer_index"])] = r["accuracy"]
    groups: OrderedDict[str, training.Group] = OrderedDict()
    for shard in manifest["shards"]:
        for r in cache.get_jsonl(store, shard["key"]):
            qid = r["question_id"]
            if qid not in groups:
                row = split[index[qid]]
                groups[qid] = training.Group(qid, np.asarray(row["image"].convert("RGB")),
                                             row["question"], [], [], [])
            g = groups[qid]
            g.answers.append(r["token_ids"])
            g.accuracy.append(acc[(qid, r["source"], r["answer_index"])])
            g.sources.append(r["source"])
    return list(groups.values())


@task(name="train-student", log_prints=False)
def train_student(cfg_json: dict, manifests: list[dict], scores: list[dict],
                  tables: list[dict], parent_run_id: str | None) -> dict:
    logger = get_run_logger()
    cfg = from_public(cfg_json)
    split = RESIDENT.split(cfg.data)
    index = {str(q): i for i, q in enumerate(split["id"])}
    stages = build_schedule(cfg.teachers, len(split))
    if [m["stage"] for m in manifests] != [s.index for s in stages]:
        raise ValueError("stage manifests do not match the schedule of this config")
    by_stage = {m["stage"]: (m, sc) for m, sc in zip(manifests, scores, strict=True)}
    student, processor = models.load(cfg.student.path, device=models.pick_device(cfg.device),
                                     trust_remote_code=cfg.student.trust_remote_code)
    key = run_key(manifests, scores, cfg)
    out_dir = Path(cfg.training.output_dir) / key
    tracker = Tracker(cfg.tracking)
    run_id = tracker.start_run("train", parent_run_id=parent_run_id,
                               tags={**flow_run_tags(), "train_key": key})
    status = "FAILED"
    try:
        tracker.log_params(run_id, {"training": cfg.public_dict()["training"],
                                    "stages": len(stages), "checkpoints": str(out_dir)})
        metrics = BufferedMetrics(tracker, run_id)
        trainer = training.MastersTrainer(student, processor, cfg.training, log_metrics=metrics)
        result = training.train(
            trainer, stages,
            lambda st: _groups_for(cfg, *by_stage[st.index], split, index),
            _Teachers(cfg, {t["teacher"]: t for t in tables}, processor),
            out_dir / "checkpoints",
        )
        metrics.flush()
        final = out_dir / "student"
        trainer.student.save_pretrained(final, safe_serialization=True)
        processor.save_pretrained(final)
        tracker.set_tags(run_id, {"student_path": str(final.resolve())})
        tracker.log_dict(run_id, result, "training_summary.json")
        status = "FINISHED"
    finally:
        tracker.end_run(run_id, status)
    logger.info("trained %d steps over %d stages (resumed after stage %s) -> %s",
                result["steps"], len(stages), result["resumed_after"], final)
    return {"student_path": str(final.resolve()), "train_key": key, "steps": result["steps"],
            "stages": result["stages"], "resumed_after": result["resumed_after"],
            "mlflow_run_id": run_id}
