"""Injected faults: S3 errors and outages, corrupted cache objects, a full disk, an MLflow
server that is down at registration. After each, the same run (or its re-run) ends with the
reference cache, byte for byte, and at most one model version (docs/reliability.md)."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import threading
import uuid
from pathlib import Path

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ReadTimeoutError
from conftest import corrupt_object
from mlflow import MlflowClient

from masters import cache
from masters.config import load_config

from .helpers import (
    SMOKE,
    MlflowServer,
    leaks,
    overrides,
    snapshot,
    temp_files,
    versions,
)

FAKE_KEY_ID = "AKIARELIABILITY00001"
FAKE_SECRET = "rel-Zq8-DISTINCTIVE-fake-secret-Vw3"


def distill(cfg, printed: list[str] | None = None):
    """The distill flow in this process: (state, error message or None, result or None)."""
    from flows.distill import distill_flow

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        state = distill_flow(config=cfg.public_dict(), return_state=True)
    if printed is not None:
        printed.append(out.getvalue())
    if state.is_failed():
        return state, str(state.result(raise_on_failure=False)), None
    return state, None, state.result()


def generated(client, experiment: str, run_name: str, metric: str, after: set[str]) -> float:
    """Sum of a metric over the runs named `run_name` that are not in `after`."""
    exp = client.get_experiment_by_name(experiment)
    return sum(m.value for r in client.search_runs([exp.experiment_id], max_results=1000)
               if r.info.run_name == run_name and r.info.run_id not in after
               for m in client.get_metric_history(r.info.run_id, metric))


def run_ids(client, experiment: str) -> set[str]:
    exp = client.get_experiment_by_name(experiment)
    return {r.info.run_id for r in client.search_runs([exp.experiment_id], max_results=1000)}


# ---- S3: transient errors, an outage, corrupted objects -----------------------------------


class _Body:
    def __init__(self, code: str):
        self.data = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()

    def stream(self, **kwargs):
        yield self.data


class S3Faults:
    """Fails S3 requests from a botocore hook, before they reach the server.

    `every`: every n-th request fails once, cycling 500 InternalError / 503 SlowDown / read
    timeout, while `budget` lasts (botocore's own retries absorb these). `burst`: once, the
    first request matching `burst_key` fails `burst` times in a row, past botocore's retries,
    so the storage error reaches the task (Prefect retries transient ones). `outage_ops`:
    every such operation fails (503) until cleared.
    """

    KINDS = ("500", "503", "timeout")

    def __init__(self, every: int = 0, budget: int = 0, burst: int = 0, burst_key: str = ""):
        self.every, self.budget, self.burst, self.burst_key = every, budget, burst, burst_key
        self.outage_ops: set[str] = set()
        self.calls, self.injected, self.lock = 0, [], threading.Lock()

    def install(self, monkeypatch) -> None:
        real = cache.make_s3_client

        def make(cfg):
            client = real(cfg)
            client.meta.events.register_first("before-send.s3", self.hook)
            return client

        monkeypatch.setattr(cache, "make_s3_client", make)

    def hook(self, request, **kwargs):
        op = kwargs.get("event_name", "").rsplit(".", 1)[-1]
        with self.lock:
            self.calls += 1
            kind = None
            if op in self.outage_ops:
                kind = "503"
            elif self.burst and self.burst_key in request.url and op == "PutObject":
                self.burst -= 1
                kind = "500"
            elif self.every and self.budget and self.calls % self.every == 0:
                self.budget -= 1
                kind = self.KINDS[len(self.injected) % len(self.KINDS)]
            if kind is None:
                return None
            self.injected.append((op, kind))
        if kind == "timeout":
            raise ReadTimeoutError(endpoint_url=request.url)
        code = {"500": "InternalError", "503": "SlowDown"}[kind]
        return AWSResponse(request.url, int(kind), {}, _Body(code))


def test_s3_errors_outage_and_corruption(prefect_api, moto_s3, rel_models, reference, tmp_path,
                                         monkeypatch, caplog):
    """Also the credentials check: three runs (one failing) with fake keys from the
    environment, then a search for both keys in everything they wrote."""
    caplog.set_level("INFO")
    caplog.set_level("WARNING", logger="botocore")  # its DEBUG log shows the key id
    # botocore's retries as configured, but without its random backoff sleeps (up to seconds
    # each): the test counts retries, not waits.
    monkeypatch.setattr("botocore.retries.standard.ExponentialBackoff.delay_amount",
                        lambda self, context: 0.01)
    printed: list[str] = []
    endpoint, bucket = moto_s3
    monkeypatch.setenv("MASTERS_STORAGE__ACCESS_KEY_ID", FAKE_KEY_ID)
    monkeypatch.setenv("MASTERS_STORAGE__SECRET_ACCESS_KEY", FAKE_SECRET)
    uri = f"s3://{bucket}/rel-{uuid.uuid4().hex[:8]}"
    cfg = load_config(SMOKE, [*overrides(tmp_path, rel_models, uri),
                              f"storage.endpoint_url={endpoint}"])
    store = cache.open_store(cfg.storage)
    client = MlflowClient(tracking_uri=cfg.tracking.tracking_uri)
    ref = reference["snapshot"]

    # 1. Transient errors on a bounded number of calls: the run rides through them.
    faults = S3Faults(every=7, budget=9, burst=3, burst_key="/shards/")
    faults.install(monkeypatch)
    state, error, out = distill(cfg, printed)
    assert error is None, error
    kinds = {k for _, k in faults.injected}
    assert kinds == {"500", "503", "timeout"} and len(faults.injected) == 9 + 3
    assert faults.burst == 0  # the burst went past botocore into a Prefect task retry
    assert snapshot(store) == ref
    assert versions(cfg.tracking.tracking_uri) == ["1"]

    # 2. One object of every kind corrupted in the bucket (a shard, its teacher
    # distributions, a shard's scores, a manifest), then an outage of every write: the run
    # fails naming the operation, the object and the endpoint, registers nothing new, and
    # serves no corrupt object (the shard it read was dropped, not used).
    picked = {kind: next(k for k in ref if k.startswith(kind + "/"))
              for kind in ("shards", "scores", "manifests")}
    shard_dists = {s["key"]: s["dists_key"] for k in ref if k.startswith("manifests/")
                   for s in json.loads(ref[k])["shards"]}
    picked["dists"] = shard_dists[picked["shards"]]  # that shard's: one shard regenerates
    for key in picked.values():
        corrupt_object(store, key)
    faults = S3Faults()
    faults.outage_ops = {"PutObject"}
    faults.install(monkeypatch)
    state, error, _ = distill(cfg, printed)
    assert state.is_failed()
    assert "S3 put" in error and f"{uri}/shards/" in error and endpoint in error, error
    assert "SlowDown" in error
    assert versions(cfg.tracking.tracking_uri) == ["1"]
    assert not store.exists(picked["shards"])
    failed = run_ids(client, cfg.tracking.experiment)

    # 3. The outage over: the re-run recomputes exactly the corrupted objects (one shard and
    # its distributions, one shard's scores, one manifest), ends with the reference
    # bucket, and adds no version.
    faults.outage_ops = set()
    state, error, out = distill(cfg, printed)
    assert error is None, error
    assert snapshot(store) == ref
    assert generated(client, cfg.tracking.experiment, "generate", "shards_new", failed) == 1
    assert sum(generated(client, cfg.tracking.experiment, f"score-stage-{s}", "shards_scored",
                         failed) for s in (0, 1)) == 1
    assert versions(cfg.tracking.tracking_uri) == ["1"]

    # 4. Neither key is anywhere: MLflow's store and artifacts, checkpoints, the bucket,
    # Prefect's runs, logs and artifacts, what was printed and logged.
    searched = leaks([FAKE_KEY_ID, FAKE_SECRET], files_under=[tmp_path],
                     texts={"stdout": "".join(printed), "python logs": caplog.text},
                     objects={k: store.get_bytes(k) for k in store.list()})
    assert searched["files"] > 30 and searched["objects"] == len(ref)
    assert searched["prefect logs"] > 50 and searched["prefect artifacts"] >= 2
    assert searched["prefect flow runs"] >= 6 and searched["prefect task runs"] > 30


# ---- local: a full disk, then MLflow down at registration ---------------------------------


def _full_disk_after(n_ok: int, monkeypatch) -> list[str]:
    """Writes of shard objects fail with ENOSPC (after half the bytes) once `n_ok` succeeded."""
    hits: list[str] = []
    real_open, lock = open, threading.Lock()

    class Full(io.RawIOBase):
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def close(self):
            self.f.close()

    def fake_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if Path(path).parent.name == "shards" and "x" in mode:
            with lock:
                hits.append(str(path))
                if len(hits) > n_ok:
                    return Full(f)
        return f

    monkeypatch.setattr(cache, "open", fake_open, raising=False)
    return hits


def test_full_disk_then_mlflow_down(forkserver, rel_models, reference, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail now, not in minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    server = MlflowServer(forkserver, tmp_path).start()
    cfg = load_config(SMOKE, [*overrides(tmp_path, rel_models),
                              f"tracking.tracking_uri={server.url}"])
    store = cache.open_store(cfg.storage)
    ref = reference["snapshot"]
    try:
        # 1. The disk fills up after two shards: the run stops naming the file and the cause;
        # what was written is whole and no temp file is left behind.
        with monkeypatch.context() as m:
            _full_disk_after(2, m)
            state, error, _ = distill(cfg)
        assert state.is_failed()
        assert "storage.cache_uri" in error and "No space left on device" in error, error
        assert str(store.root / "shards") in error
        got = snapshot(store)
        assert got and all(ref[k] == v for k, v in got.items())
        assert sum(k.startswith("shards/") for k in got) == 2
        assert temp_files(store) == []
        assert versions(server.url) == []

        # 2. Space again, but the MLflow server goes down as registration starts: the run
        # fails naming the server, the cache is complete, no version exists.
        from masters import registry

        real_register = registry.register_student

        def down_then_register(*args, **kwargs):
            server.stop()
            return real_register(*args, **kwargs)

        with monkeypatch.context() as m:
            m.setattr(registry, "register_student", down_then_register)
            state, error, _ = distill(cfg)
        assert state.is_failed() and f"127.0.0.1:{server.port}" in error, error
        assert snapshot(store) == ref
        server.start()
        assert versions(server.url) == []

        # 3. The server is back: the re-run registers exactly one version.
        state, error, out = distill(cfg)
        assert error is None, error
        assert snapshot(store) == ref
        assert versions(server.url) == ["1"]
        assert out["registered"]["decision"]["decision"] in ("champion", "challenger")
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _quiet_botocore_retries(caplog):
    """botocore logs every retried request at DEBUG; keep the test log readable."""
    caplog.set_level("WARNING", logger="botocore")
