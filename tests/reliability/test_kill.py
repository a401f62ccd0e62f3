"""SIGKILL at every step of `masters distill`, then re-run: nothing lost, nothing redone.

One chain of `masters distill` processes on one cache (forked from forkserver.py, each in its
own session). Each is SIGKILLed at the next step, and the next run resumes (killpoint.py):

1. generation: a shard written and fsynced to its temp file, not yet published;
1b. the next run: a shard's answers published, its teacher distributions fsynced to their
   temp file, not yet published (the run after computes them from the cached answers);
2. scoring: two shards' rewards stored, the third being scored;
3. training: stage 0 checkpointed, one optimizer step into stage 1;
4. registration: the student logged and its model version created, no alias set yet.

After every kill the cache holds only whole objects, each byte-identical to the clean
reference run's. The last run completes with exactly the reference cache, the reference
student weights, and one model version.
"""

from __future__ import annotations

import json

from mlflow import MlflowClient

from masters import cache
from masters.config import load_config

from .conftest import student_digest
from .helpers import (
    MODEL,
    SMOKE,
    flags,
    overrides,
    run_until_paused,
    snapshot,
    temp_files,
    versions,
)

POINTS = ["generate", "dists", "score", "train", "register"]


def test_sigkill_at_every_step_then_resume(forkserver, rel_models, reference, tmp_path):
    items = overrides(tmp_path, rel_models)
    cfg = load_config(SMOKE, items)
    store = cache.open_store(cfg.storage)
    args = ["distill", "--no-progress", "--config", str(SMOKE), *flags(items)]
    client = MlflowClient(tracking_uri=cfg.tracking.tracking_uri)
    ref = reference["snapshot"]
    after: dict[str, set[str]] = {}
    runs_of: dict[str, dict] = {}  # MLflow runs each process created
    seen: set[str] = set()

    def new_runs() -> dict:
        exp = client.get_experiment_by_name(cfg.tracking.experiment)
        runs = {r.info.run_id: r for r in client.search_runs([exp.experiment_id],
                                                              max_results=1000)}
        fresh = {k: v for k, v in runs.items() if k not in seen}
        seen.update(runs)
        return fresh

    for i, point in enumerate(POINTS):
        run_until_paused(forkserver, args, point, tmp_path / "paused",
                         tmp_path / f"run{i}-{point}.log")
        got = snapshot(store)  # raises on a torn object
        # Only whole objects, each exactly the reference's: a killed run leaves nothing
        # partial or different behind, and no model version before one is due.
        assert set(got) <= set(ref), point
        assert all(got[k] == ref[k] for k in got), point
        assert versions(cfg.tracking.tracking_uri) == ([] if point != "register" else ["1"])
        after[point] = set(got)
        runs_of[point] = new_runs()

    def count(prefix: str, point: str) -> int:
        return sum(k.startswith(prefix) for k in after[point])

    # What each kill left: 2 of 4 shards (and the third's unpublished temp file, which no
    # reader sees), then 2 of 4 score objects, then the whole cache before training.
    assert (count("shards/", "generate"), count("scores/", "generate")) == (2, 0)
    assert count("dists/", "generate") == 2  # each published shard has its distributions
    assert (count("shards/", "dists"), count("dists/", "dists")) == (3, 2)
    assert [t for t in temp_files(store) if t.startswith(("shards/", "dists/"))]
    assert (count("shards/", "score"), count("scores/", "score")) == (4, 2)
    assert after["train"] == set(ref)

    final = forkserver.start(args, tmp_path / "final.log")
    assert final.wait(timeout=300) == 0, final.output()[-4000:]
    runs_of["final"] = new_runs()
    assert snapshot(store) == ref

    # Each re-run did only what was missing.
    def total(point: str, run_name: str, metric: str) -> float:
        return sum(m.value for r in runs_of[point].values() if r.info.run_name == run_name
                   for m in client.get_metric_history(r.info.run_id, metric))

    # the shard without distributions (answers reused, not resampled) + one more
    assert total("score", "generate", "shards_new") == 2
    assert total("score", "generate", "shards_cached") == 2
    assert total("train", "score-stage-0", "shards_scored") == 0
    assert total("train", "score-stage-1", "shards_scored") == 2
    (train,) = [r for r in runs_of["register"].values() if r.info.run_name == "train"]
    summary = client.download_artifacts(train.info.run_id, "training_summary.json",
                                        str(tmp_path))
    assert json.loads(open(summary).read())["resumed_after"] == 0
    assert total("final", "generate", "shards_new") == 0
    # The interrupted training ends with the weights of the uninterrupted one.
    student = next(line.split(": ", 1)[1] for line in final.output().splitlines()
                   if line.startswith("distilled student: "))
    assert student_digest(student) == reference["student"]
    # Still one version (the re-run found it), now promoted; the registry lock was released.
    assert versions(cfg.tracking.tracking_uri) == ["1"]
    assert "promotion.json" in client.get_model_version(MODEL, "1").tags
    assert {m.name for m in client.search_registered_models()} == {MODEL}
