"""The training job: the student over every stage, from the cached answers, distributions and
rewards (or the labels, for the supervised baseline). Called by the Prefect train task and,
on every rank, by `torchrun -m masters.train_entry --spec`: no Prefect here."""

from __future__ import annotations

from pathlib import Path

from masters import cache, distributed, models, pipeline, training
from masters.progress import Progress
from masters.schedule import build_schedule
from masters.tracking import BufferedMetrics, Tracker

# Training settings that do not name a run: where it writes, and the memory switches that
# change what a step holds, not what it computes (docs/training.md), so a run that ran out of
# memory resumes its checkpoints with a smaller micro-batch, with checkpointing on or sharded.
NOT_IN_RUN_KEY = {"output_dir", "micro_batch_groups", "gradient_checkpointing", "sharding"}


def run_key(manifests: list[dict], scores: list[dict], cfg) -> str:
    """Names the training run by its inputs, so a re-run resumes the same checkpoints."""
    parts = {"answers": [s["key"] for m in manifests for s in m["shards"]],
             "scores": [s["score_key"] for sc in scores for s in sc["scores"]],
             "training": cfg.training.model_dump(mode="json", exclude=NOT_IN_RUN_KEY),
             "student": manifests[0]["student_fingerprint"] if manifests else None}
    return cache.content_key("train", parts).split("/", 1)[1]


def label_run_key(cfg, student_fingerprint: str) -> str:
    """Supervised runs have no answers or scores: named by data, schedule and student."""
    parts = {"labels": cfg.data.model_dump(mode="json"),
             "schedule": [[t.name, t.r_max, t.step] for t in cfg.teachers],
             "training": cfg.training.model_dump(mode="json", exclude=NOT_IN_RUN_KEY),
             "student": student_fingerprint}
    return cache.content_key("train", parts).split("/", 1)[1]


def run_training(cfg, manifests: list[dict], scores: list[dict], teachers: list[dict],
                 parent_run_id: str | None = None, log=None, progress: bool = False,
                 tags: dict | None = None) -> dict:
    """Train, save and track the student; rank 0 alone tracks and saves. `tags` go on the
    MLflow run (the Prefect task passes its flow run's)."""
    device = distributed.init(cfg.device)
    main = distributed.is_main()
    split = pipeline.load_split(cfg.data, "train")
    stages = build_schedule(cfg.teachers, len(split))
    supervised = cfg.training.objective == "supervised"
    if not supervised and [m["stage"] for m in manifests] != [s.index for s in stages]:
        raise ValueError("stage manifests do not match the schedule of this config")
    by_stage = {m["stage"]: (m, sc) for m, sc in zip(manifests, scores, strict=True)}
    student, processor = models.load_ref(cfg.student, device=device)
    key = (label_run_key(cfg, models.fingerprint(student)) if supervised
           else run_key(manifests, scores, cfg))
    out_dir = Path(cfg.training.output_dir) / key
    tracker = Tracker(cfg.tracking) if main else None
    run_id = tracker.start_run("train", parent_run_id=parent_run_id, tags={
        **(tags or {}), "train_key": key}) if main else None
    status = "FAILED"
    bar = None
    try:
        metrics = None
        if main:
            tracker.log_params(run_id, {"training": cfg.public_dict()["training"],
                                        "stages": len(stages), "checkpoints": str(out_dir),
                                        "world_size": distributed.world_size()})
            # What `torchrun ... -m masters.train_entry --spec` needs to rerun this job.
            tracker.log_dict(run_id, {"config": cfg.public_dict(), "manifests": manifests,
                                      "scores": scores, "teachers": teachers},
                             "train_inputs.json")
            metrics = BufferedMetrics(tracker, run_id)
        steps = training.planned_steps(stages, cfg.training)
        bar = Progress(steps, key="training-progress", desc="train", unit="step",
                       what="optimizer steps done", show=progress) if main else None

        def log_metrics(values: dict, step: int) -> None:
            metrics(values, step)
            bar.update_to(step)

        trainer = training.MastersTrainer(student, processor, cfg.training,
                                          log_metrics=log_metrics if main else None,
                                          evaluate=validation_accuracy(cfg))
        # Only the student is loaded: the teachers' side is in the cache (distributions).
        if supervised:
            def groups_of(st):
                return pipeline.label_groups(split, st, processor.tokenizer)
        else:
            index = {str(q): i for i, q in enumerate(split["id"])}

            store = cache.open_store(cfg.storage)

            def groups_of(st):
                manifest, scored = by_stage[st.index]
                return pipeline.stage_groups(store, manifest["shards"],
                                             [s["score_key"] for s in scored["scores"]],
                                             split, index)

        result = training.train(trainer, stages, groups_of, out_dir / "checkpoints")
        final = out_dir / "student"
        whole = trainer.full_student()  # under FSDP every rank gathers; rank 0 gets it
        if main:
            bar.update_to(trainer.step)  # a run resumed after its last stage logs no step
            metrics.flush()
            training.save_student(whole, processor, final)  # atomic, write-once
            tracker.set_tags(run_id, {"student_path": str(final.resolve())})
            tracker.log_dict(run_id, result, "training_summary.json")
            log_training_plots(tracker, run_id, result["curve"], log)
        distributed.barrier()
        status = "FINISHED"
    finally:
        if main:
            if bar is not None:
                bar.close()
            tracker.end_run(run_id, status)
    if log is not None:
        log.info("trained %d steps over %d stages (resumed after stage %s) -> %s",
                 result["steps"], len(stages), result["resumed_after"], final)
    return {"student_path": str(final.resolve()), "train_key": key, "steps": result["steps"],
            "stages": result["stages"], "resumed_after": result["resumed_after"],
            "curve": result["curve"], "mlflow_run_id": run_id}


def validation_accuracy(cfg):
    """The learning curve's measure: greedy accuracy on the validation split, scored like
    the final evaluation (`MastersConfig.eval_scorer`)."""
    from masters import evaluation

    def evaluate(model, processor) -> dict:
        split = pipeline.load_split(cfg.data, "validation")
        res = evaluation.evaluate_dataset(model, processor, split,
                                          batch_size=cfg.evaluation.batch_size,
                                          max_new_tokens=cfg.evaluation.max_new_tokens,
                                          **cfg.eval_scorer())
        return {"accuracy": res.accuracy, "per_task": res.per_task}

    return evaluate


LOSS_KEYS = ("loss/loss", "loss/grpo", "loss/kl", "loss/jsd", "loss/sft")
REWARD_KEYS = ("reward/accuracy", "reward/distill", "reward/divergence")


def log_training_plots(tracker, run_id: str, curve: list[dict] | None = None,
                       log=None) -> None:
    """Loss and reward curves from what the trainer logged, read back from MLflow so the
    figure shows exactly the recorded numbers, and the learning curve (validation accuracy
    against optimizer steps) when one was drawn. A figure is a convenience: failing to draw
    one must not fail a finished training run, so errors are logged and swallowed."""
    from masters import plots

    try:
        if curve:
            fig = plots.learning_curves({"student": curve}, "validation accuracy while training")
            tracker.log_figure(run_id, fig, "plots/learning_curve.png")
            plots.close(fig)
        keys = (*LOSS_KEYS, *REWARD_KEYS, "stage")
        history = {k: [(m.step, m.value) for m in tracker.client.get_metric_history(run_id, k)]
                   for k in keys}
        for keys_, name, title, ylabel in (
                (LOSS_KEYS, "loss_curves", "training losses", "loss"),
                (REWARD_KEYS, "rewards", "mean reward per step", "reward")):
            fig = plots.step_curves(history, keys_, title, ylabel)
            tracker.log_figure(run_id, fig, f"plots/{name}.png")
            plots.close(fig)
    except Exception as exc:  # noqa: BLE001 - see docstring
        if log is not None:
            log.warning("could not plot the training curves: %s", exc)


