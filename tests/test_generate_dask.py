"""Generation over Dask workers (`generation.task_runner: dask`) fills the same cache as one
process, and the shards really run on more than one worker.

A local cluster of 2 worker processes (one thread each) stands in for an existing one: the
flow reaches it through `generation.dask_address`, so the test can watch its task stream.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from masters import generation
from masters.config import GenerationConfig, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_the_switch_picks_the_runner_and_keeps_the_keys():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from flows.generate import shard_runner

    api = "http://127.0.0.1:4200/api/"
    assert isinstance(shard_runner(GenerationConfig(), api), ThreadPoolTaskRunner)
    remote = shard_runner(GenerationConfig(task_runner="dask", dask_address="tcp://h:8786"), api)
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://h:8786"
    local = shard_runner(GenerationConfig(task_runner="dask", dask_workers=3), api)
    assert local.address is None and local.cluster_kwargs == {
        "n_workers": 3, "threads_per_worker": 1, "processes": True,
        "env": {"PREFECT_API_URL": api}}
    # Where shards run is no part of what they hold: same sampling settings, same keys.
    assert generation.sampling_settings(GenerationConfig()) == generation.sampling_settings(
        GenerationConfig(task_runner="dask", dask_address="tcp://h:8786", dask_workers=5))


@pytest.fixture
def dask_cluster():
    from distributed import LocalCluster

    # No dashboard: it would take a fixed port and import bokeh. Closed even if the test
    # fails, so no worker process outlives it.
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    try:
        yield cluster
    finally:
        cluster.close()


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_dask_workers_fill_the_same_cache_as_one_process(prefect_api, tmp_path, checkpoints,
                                                         dask_cluster, monkeypatch):
    from distributed import Client, get_task_stream

    from flows.generate import generate_flow

    # A relative cache path, from a directory the workers (started before) are not in: the
    # flow must hand them an absolute one.
    monkeypatch.chdir(tmp_path)
    cache_dir = tmp_path / "cache"
    # Two stages (ratio 0.05, then 0) of 4 questions, 2 shards each.
    base = [
        "storage.cache_uri=cache",
        f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"tracking.artifact_location={tmp_path / 'mlartifacts'}",
        f"teachers=[{{name: t, path: {checkpoints['teacher']}, r_max: 0.05}}]",
        f"student.path={checkpoints['student']}",
        "masking.sweep_ratios=[0]", "data.train_size=8",
        "generation.shard_size=2", "generation.teacher_answers=2",
        "generation.student_answers=2", "generation.max_new_tokens=2",
    ]

    def run(*extra: str, **fingerprints) -> list[dict]:
        cfg = load_config(ROOT / "configs" / "smoke.yaml", [*base, *extra])
        return generate_flow(cfg.public_dict(), **fingerprints)

    # One process first, into the same folder (so the manifests' URIs match byte for byte),
    # then moved aside. One torch thread, as in the Dask workers: the comparison is about
    # where the shards run, not about how many threads a matmul takes.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = run()
    finally:
        torch.set_num_threads(threads)
    cache_dir.rename(tmp_path / "one-process")

    with Client(dask_cluster) as client:
        workers = set(client.scheduler_info()["workers"])
        with get_task_stream(client) as stream:
            # The fingerprints of the first run: no second pruning and hashing (time).
            spread = run("generation.task_runner=dask",
                         f"generation.dask_address={dask_cluster.scheduler_address}",
                         teachers=[{"teacher": "t", "fingerprint": one[0]["teacher_fingerprint"]}],
                         student_fingerprint=one[0]["student_fingerprint"])

    assert [m["new"] for m in one] == [m["new"] for m in spread] == [2, 2]
    ran_on = [t["worker"] for t in stream.data if t["key"].startswith("generate_shard")]
    assert len(ran_on) == 4 and set(ran_on) == workers and len(workers) == 2
    assert [m["manifest_key"] for m in spread] == [m["manifest_key"] for m in one]
    expected = _tree(tmp_path / "one-process")
    assert any(k.startswith("shards/") for k in expected)
    assert _tree(cache_dir) == expected  # every key, every byte
