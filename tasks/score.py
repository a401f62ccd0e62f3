"""Prefect task: accuracy rewards for every generated answer of a stage, cached beside them."""

from __future__ import annotations

from prefect import get_run_logger, task

from masters import cache, models, pipeline, plots, scoring
from masters.config import from_public
from masters.judge import hf_text_generator
from masters.tracking import Tracker
from tasks.common import PERSIST, TRANSIENT_RETRIES, flow_run_tags, retry_transient
from tasks.generate import RESIDENT


def _judge(cfg, manifest):
    """The judge's text generator and fingerprint: config's judge, else the unmasked teacher."""
    ref = cfg.rewards.judge
    if ref is None:
        (t,) = [t for t in cfg.teachers if t.name == manifest["teacher"]]
        ref = t
    model, processor = models.load_ref(ref, **models.inference_placement(cfg))
    return hf_text_generator(model, processor, cfg.rewards.judge_max_new_tokens), (
        models.fingerprint(model))


@task(name="score-stage", retries=TRANSIENT_RETRIES, retry_condition_fn=retry_transient,
      log_prints=False, **PERSIST)
def score_stage(cfg_json: dict, manifest: dict, parent_run_id: str | None) -> dict:
    """Score each shard of a stage manifest once; a re-run with the same config does no work."""
    logger = get_run_logger()
    cfg = from_public(cfg_json)
    store = cache.open_store(cfg.storage)
    judge_generate, judge_fp = (None, None)
    if cfg.rewards.scorer == "judge":
        judge_generate, judge_fp = _judge(cfg, manifest)
    scored = pipeline.score_shards(store, manifest["shards"], RESIDENT.split(cfg.data),
                                   cfg.rewards, judge_generate, judge_fp)
    out, new, records = scored["scores"], scored["new"], scored["records"]
    stats = scoring.summarize(records)
    tracker = Tracker(cfg.tracking)
    run_id = tracker.start_run(f"score-stage-{manifest['stage']}", parent_run_id=parent_run_id,
                               tags=flow_run_tags())
    with tracker.ended(run_id):
        tracker.log_params(run_id, {"stage": manifest["stage"], "teacher": manifest["teacher"],
                                    "ratio": manifest["ratio"], "scorer": cfg.rewards.scorer,
                                    "labels_digest": scored["labels_digest"]})
        tracker.log_metrics(run_id, {**stats, "shards_scored": new,
                                     "shards_cached": len(out) - new})
        fig = plots.reward_histogram(records, f"stage {manifest['stage']}: accuracy reward")
        tracker.log_figure(run_id, fig, "accuracy_reward.png")
        plots.close(fig)
        sample = _sample_rows(store, manifest, records)
        if sample:
            tracker.log_table(run_id, sample, "sample_answers.json")
    logger.info("stage %s: %d shards scored, %d cached; %s", manifest["stage"], new,
                len(out) - new, {k: round(v, 3) for k, v in stats.items()
                                 if k.startswith("accuracy")})
    return {"stage": manifest["stage"], "teacher": manifest["teacher"],
            "ratio": manifest["ratio"], "scores": out, "new": new, "stats": stats}


def _sample_rows(store, manifest, scored, n: int = 24) -> list[dict]:
    """A few answers with their rewards, for eyeballing in the MLflow UI."""
    records = cache.get_jsonl(store, manifest["shards"][0]["key"])[:n]
    by = {(s["question_id"], s["source"], s["answer_index"]): s["accuracy"] for s in scored}
    return [{"question_id": r["question_id"], "model": r["model"], "ratio": r["ratio"],
             "answer": r["text"],
             "accuracy": by.get((r["question_id"], r["source"], r["answer_index"]))}
            for r in records]
