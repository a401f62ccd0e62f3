"""# masters-generate: sample the answers the student will learn from, once

Masters trains on answers generated offline (method.md section 2). For every stage of the
schedule (a teacher at a mask ratio, with its own consecutive slice of the training
questions) the masked teacher samples 4 answers per question and the initial student 4:
the group of 8 that GRPO compares. Nothing here trains; it only fills the cache, so training
and any later run read answers instead of sampling them again.

The flow reads top to bottom like the pipeline:

1. Mask the teachers: the prune tasks give each teacher's weight fingerprint. A parent flow
   that already pruned passes their manifests in (`teachers`).
2. Fingerprint the student: the hash of its weights goes into every shard key.
3. Cut the training split into stages (`masters.schedule`) and each stage into shards.
4. Plan: compute every shard's content key and check the cache with a checksummed read. This
   loads no model, so a fully cached run costs only the reads.
5. Generate the missing shards, stage by stage: one task per shard, submitted together to
   the task runner `generation.task_runner` names: threads of this process, or Dask worker
   processes (`shard_runner`). Models stay loaded between the shards of a worker; each
   teacher's stages go with ratios increasing, so it is loaded once and its mask only grows
   (`schedule.generation_order`).
6. Write one manifest per stage (its shards' keys and URIs, content-addressed): what
   training reads. Counts go to MLflow.

Killing the flow loses at most the shards in flight: a re-run plans again and generates only
what is missing or was found corrupt.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from urllib.parse import urlparse

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.futures import as_completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from masters import models
from masters.config import GenerationConfig, from_public
from masters.schedule import build_schedule, generation_order
from masters.tracking import Tracker
from tasks.check import check_inputs
from tasks.common import Progress, flow_run_tags
from tasks.generate import (
    RESIDENT,
    fingerprint_model,
    generate_shard,
    plan_stage,
    train_question_ids,
    write_stage_manifest,
)
from tasks.prune import prune_teacher


def shard_runner(cfg: GenerationConfig, api_url: str) -> TaskRunner:
    """The task runner the shard tasks go to. Only they do: every other task of the flow is
    called, not submitted, so it runs in the flow's process. `api_url`: this flow run's
    Prefect API."""
    if cfg.task_runner == "threads":
        return ThreadPoolTaskRunner()  # what a flow uses by default
    from prefect_dask import DaskTaskRunner  # imported only when asked for

    if cfg.dask_address:  # its workers are configured where they were started
        return DaskTaskRunner(address=cfg.dask_address)
    # Started on the first shard submitted (a fully cached run starts none), stopped when
    # the runner closes. One thread per worker: the shards of a process share its models.
    # The workers get this flow's API: without a PREFECT_API_URL (the ephemeral mode of
    # `masters run`) each would start a server of its own on the same database.
    return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.dask_workers, "threads_per_worker": 1,
                                          "processes": True,
                                          "env": {"PREFECT_API_URL": api_url}})


def for_workers(public: dict) -> dict:
    """The config as the shard tasks get it: a local cache folder made absolute, since a
    worker may run in another directory. S3 and absolute paths pass unchanged."""
    uri = public["storage"]["cache_uri"]
    if urlparse(uri).scheme:
        return public
    absolute = str(Path(uri).expanduser().absolute())
    return {**public, "storage": {**public["storage"], "cache_uri": absolute}}


@flow(name="masters-generate", log_prints=True)
def generate_flow(
    config: dict | None = None,
    teachers: list[dict] | None = None,
    student_fingerprint: str | None = None,
    progress: bool = False,
) -> list[dict]:
    """Every stage's answers in the cache; returns the stage manifests in stage order."""
    cfg = from_public(config)
    public = cfg.public_dict()
    logger = get_run_logger()
    tracker = Tracker(cfg.tracking)
    parent = tracker.start_run("generate", tags=flow_run_tags())
    status = "FAILED"
    try:
        tracker.log_params(parent, {"generation": public["generation"],
                                    "teachers": public["teachers"], "student": public["student"]})

        # 1-2. Masked teachers and the student, as fingerprints only.
        if teachers is None:  # run on its own (`masters generate`), not as distill's subflow
            check_inputs(public)  # storage, checkpoints, data: before any work
            teachers = [prune_teacher(public, t.name, parent) for t in cfg.teachers]
        by_teacher = {m["teacher"]: m for m in teachers}
        lacking = [t.name for t in cfg.teachers if t.name not in by_teacher]
        if lacking:
            raise ValueError(f"teacher manifests lack {lacking}; given: {sorted(by_teacher)}")
        student_fp = student_fingerprint or fingerprint_model(
            cfg.student.path, cfg.student.trust_remote_code, models.dtype_name(cfg))

        # 3-4. Stages, shards, and what the cache already holds.
        ids = train_question_ids(public)
        stages = build_schedule(cfg.teachers, len(ids))
        plans = [plan_stage(public, asdict(s), by_teacher[s.teacher]["fingerprint"], student_fp)
                 for s in stages]
        total = sum(len(p["shards"]) for p in plans)
        cached = sum(s["cached"] for p in plans for s in p["shards"])
        logger.info("%d stages, %d shards: %d cached, %d to generate", len(stages), total,
                    cached, total - cached)

        # 5. The missing shards, one stage at a time (one teacher resident at a time, its
        # ratios increasing).
        bar = Progress(total, key="generation-progress", desc="generate", unit="shard",
                       what="shards generated or found in the cache", done=cached, show=progress)
        shard_cfg = for_workers(public)
        try:
            api_url = str(FlowRunContext.get().client.api_url)
            with shard_runner(cfg.generation, api_url) as runner:
                by_index = {p["stage"]["index"]: p for p in plans}
                for stage in generation_order(stages):
                    plan = by_index[stage.index]
                    futures = [runner.submit(generate_shard, {
                        "cfg_json": shard_cfg, "stage": plan["stage"], "shard": shard,
                        "teacher_fingerprint": plan["teacher_fingerprint"],
                        "student_fingerprint": student_fp})
                        for shard in plan["shards"] if not shard["cached"]]
                    failures = []
                    for future in as_completed(futures):
                        try:
                            future.result()
                        except Exception as exc:  # noqa: BLE001 - let the other shards finish
                            failures.append(exc)
                        else:
                            bar.advance()
                    if failures:  # the finished shards are stored: a re-run resumes after them
                        raise failures[0]
        finally:
            bar.close()

        # 6. Manifests, and the counts of this run.
        manifests = [write_stage_manifest(public, plan) for plan in plans]
        for m in manifests:
            tracker.log_metrics(parent, {"shards": len(m["shards"]), "shards_cached": m["cached"],
                                         "shards_new": m["new"], "answers": m["answers"]},
                                step=m["stage"])
        tracker.log_dict(parent, [{k: v for k, v in m.items() if k != "shards"}
                                  for m in manifests], "stages.json")
        status = "FINISHED"
    finally:
        RESIDENT.clear()
        tracker.end_run(parent, status)
    return manifests
