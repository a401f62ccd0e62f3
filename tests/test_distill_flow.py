"""masters-distill end to end on smoke models: prune, generate, score, train, evaluate."""

from __future__ import annotations

from pathlib import Path

from conftest import smoke_distill_overrides
from mlflow import MlflowClient

import tasks.score as score_tasks
from flows.distill import distill_flow
from masters import cache, rewards
from masters.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def _cfg(tmp_path, paths):
    return load_config(ROOT / "configs" / "smoke.yaml", smoke_distill_overrides(tmp_path, paths))


def test_distill_flow_end_to_end(prefect_api, tmp_path, checkpoints, monkeypatch):
    cfg = _cfg(tmp_path, checkpoints)
    cfg.training.eval_every = 2
    out = distill_flow(config=cfg.public_dict())
    assert [m["ratio"] for m in out["manifests"]] == [0.05, 0.0]
    # Scores: one per generated answer, equal to the scorer applied to the answer text.
    store = cache.open_store(cfg.storage)
    for manifest, scored in zip(out["manifests"], out["scores"], strict=True):
        for shard, s in zip(manifest["shards"], scored["scores"], strict=True):
            answers = cache.get_jsonl(store, shard["key"])
            got = cache.get_jsonl(store, s["score_key"])
            assert len(got) == len(answers) == 2 * 4
            assert [g["accuracy"] for g in got] == rewards.exact_match(
                [a["text"] for a in answers], [_label(cfg, a["question_id"]) for a in answers])
    trained = out["trained"]
    assert trained["steps"] == 4 and trained["resumed_after"] == -1
    # The learning curve: validation accuracy at step 0, every 2nd step and the last.
    assert [p["step"] for p in trained["curve"]] == [0, 2, 4]
    assert all(0.0 <= p["accuracy"] <= 1.0 and p["per_task"] for p in trained["curve"])
    # The Prefect UI shows training's progress like generation's.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        progress = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["training-progress"])))
    latest = max(progress, key=lambda a: a.created)
    assert latest.data == 100.0 and "of 4" in latest.description
    assert (Path(trained["student_path"]) / "model.safetensors").is_file()
    labels = [r["label"] for r in out["results"]]
    assert labels == ["distilled", "student", "teacher:t"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = {r.info.run_name: r for r in client.search_runs(
        [client.get_experiment_by_name("masters-smoke").experiment_id])}
    assert {"distill-smoke", "train", "score-stage-0", "score-stage-1",
            "evaluate-distilled"} <= set(runs)
    history = client.get_metric_history(runs["train"].info.run_id, "mask_ratio")
    assert [h.value for h in history] == [0.05, 0.05, 0.0, 0.0]
    for name in ("loss/grpo", "loss/kl", "loss/jsd", "reward/distill"):
        assert len(client.get_metric_history(runs["train"].info.run_id, name)) == 4
    # Figures for people: training curves on the train run, accuracy bars on the parent.
    def pngs(run):
        return {a.path for a in client.list_artifacts(run.info.run_id, "plots")}

    curve = client.get_metric_history(runs["train"].info.run_id, "val/accuracy")
    assert [(h.step, h.value) for h in curve] == [(p["step"], p["accuracy"])
                                                  for p in trained["curve"]]
    assert pngs(runs["train"]) == {"plots/loss_curves.png", "plots/rewards.png",
                                   "plots/learning_curve.png"}
    assert pngs(runs["distill-smoke"]) == {"plots/accuracy_by_task.png",
                                           "plots/accuracy_by_stage.png"}

    # A re-run does no scoring and no training work: everything is cached or checkpointed.
    def no_scoring(*a, **k):
        raise AssertionError("re-scored a cached shard")

    monkeypatch.setattr(score_tasks.scoring, "score_records", no_scoring)
    again = distill_flow(config=cfg.public_dict())
    assert all(s["new"] == 0 for s in again["scores"])
    assert again["trained"]["resumed_after"] == 1 and again["trained"]["steps"] == 4
    assert again["trained"]["curve"] == trained["curve"]  # kept in the stage checkpoint


def _label(cfg, qid):
    from masters import data

    ds = data.load_split(cfg.data, "train")
    return ds[[str(i) for i in ds["id"]].index(qid)]["answer"]


def test_distill_flow_in_bf16(prefect_api, tmp_path, checkpoints):
    """`dtype: bfloat16` (what `auto` picks on a GPU) through the whole flow, here on the CPU:
    teachers are masked, answer and are fingerprinted in bf16, the trained student keeps
    float32 weights."""
    import torch

    from masters import models

    cfg = load_config(ROOT / "configs" / "smoke.yaml",
                      [*smoke_distill_overrides(tmp_path, checkpoints), "dtype=bfloat16",
                       "promotion.register=false"])
    out = distill_flow(config=cfg.public_dict())
    teacher, _ = models.load(checkpoints["teacher"], dtype=torch.bfloat16)
    (masked,) = out["teachers"]
    assert masked["fingerprint"] == models.fingerprint(teacher)
    assert {m["teacher_fingerprint"] for m in out["manifests"]} == {masked["fingerprint"]}
    fp32, _ = models.load(checkpoints["teacher"])
    assert models.fingerprint(fp32) != masked["fingerprint"]  # dtype is in it
    from safetensors import safe_open

    assert out["trained"]["steps"] == 4
    path = Path(out["trained"]["student_path"]) / "model.safetensors"
    with safe_open(path, "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}


def test_dtype_auto_is_float32_on_cpu_and_named_values_pass():
    import torch

    from masters import models

    assert models.pick_dtype("auto", "cpu") == torch.float32
    assert models.pick_dtype("bfloat16", "cpu") == torch.bfloat16
    assert models.dtype_name(load_config(overrides=["device=cpu"])) == "float32"


def test_progress_outside_prefect_counts_without_an_artifact():
    from masters.progress import Progress

    bar = Progress(8, key="training-progress", desc="train", unit="step", what="steps")
    assert bar.artifact is None  # torchrun ranks run without a Prefect context
    for step in (1, 2, 5):
        bar.update_to(step)
    assert bar.done == 5 and bar.percent() == 62.5
    bar.advance(3)
    assert bar.done == 8 and bar.percent() == 100.0
    bar.close()


def test_training_needs_no_teacher_once_generated(prefect_api, tmp_path, checkpoints):
    """The teacher side (masking, forwards) ran in generation: training after it succeeds
    with the teacher's folder gone, and equals the training of the full flow."""
    import shutil

    from masters.train_job import run_training

    cfg = _cfg(tmp_path, checkpoints)
    out = distill_flow(config=cfg.public_dict())
    first = Path(out["trained"]["student_path"])
    shutil.rmtree(checkpoints["teacher"])
    again = load_config(ROOT / "configs" / "smoke.yaml", [
        *smoke_distill_overrides(tmp_path, checkpoints),
        f"training.output_dir={tmp_path / 'train-again'}"])
    trained = run_training(again, out["manifests"], out["scores"], out["teachers"])
    second = Path(trained["student_path"])
    assert second != first and trained["steps"] == out["trained"]["steps"]
    assert (second / "model.safetensors").read_bytes() == (
        first / "model.safetensors").read_bytes()
