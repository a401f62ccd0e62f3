"""Two runs at once: one cache without duplicate or torn objects; two promotions at once never
leave `champion` on the worse model (docs/reliability.md)."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest

from masters import cache, registry
from masters.config import TrackingConfig, load_config
from masters.tracking import Tracker

from .conftest import student_digest
from .helpers import SMOKE, flags, overrides, snapshot, temp_files, versions


def test_two_distill_runs_at_once_share_the_cache(forkserver, rel_models, reference, tmp_path):
    """Same config, same moment: same cache, checkpoints folder, MLflow store and model."""
    items = overrides(tmp_path, rel_models)
    cfg = load_config(SMOKE, items)
    args = ["distill", "--no-progress", "--config", str(SMOKE), *flags(items)]
    runs = [forkserver.start(args, tmp_path / f"run{i}.log") for i in range(2)]
    codes = [r.wait(timeout=400) for r in runs]
    assert codes == [0, 0], "\n".join(r.output()[-3000:] for r in runs)
    store = cache.open_store(cfg.storage)
    # Content-addressed keys written if absent (hard link / If-None-Match): each object once,
    # whole (snapshot verifies every checksum), no temp file left over.
    assert snapshot(store) == reference["snapshot"]
    assert temp_files(store) == []
    # Stage checkpoints and the student are published by rename: whole, one of each.
    (train_dir,) = (tmp_path / "train").iterdir()
    assert sorted(p.name for p in (train_dir / "checkpoints").iterdir()) == [
        "stage-000", "stage-001"]
    assert sorted(p.name for p in train_dir.iterdir()) == ["checkpoints", "student"]
    students = {line.split(": ", 1)[1] for r in runs for line in r.output().splitlines()
                if line.startswith("distilled student: ")}
    assert len(students) == 1 and student_digest(students.pop()) == reference["student"]
    # One version: the second registration found the first under the registry lock.
    assert versions(cfg.tracking.tracking_uri) == ["1"]


class SlowChampionWrites:
    """An MLflow client whose `champion` writes for one version land late: the classic lost
    update, where a promotion that read the old champion writes after a better one won."""

    def __init__(self, client, slow_version: str, delay: float):
        self._client, self.slow_version, self.delay = client, slow_version, delay

    def set_registered_model_alias(self, name, alias, version):
        if alias == registry.CHAMPION and str(version) == self.slow_version:
            time.sleep(self.delay)
        return self._client.set_registered_model_alias(name, alias, version)

    def __getattr__(self, name):
        return getattr(self._client, name)


@pytest.fixture(scope="module")
def race_store(tmp_path_factory) -> str:
    """One sqlite store for the promotion races (a fresh one costs seconds of migrations)."""
    root = tmp_path_factory.mktemp("race")
    return Tracker(TrackingConfig(tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
                                  artifact_location=str(root / "art"),
                                  experiment="race")).tracking_uri


@pytest.fixture
def three_versions(race_store, tmp_path):
    """(store, model): champion v1 (0.5); v2 (0.6) and v3 (0.8) both beat it, v3 by more."""
    from mlflow import MlflowClient

    client, name = MlflowClient(tracking_uri=race_store), f"race-{tmp_path.name}"
    client.create_registered_model(name)
    for acc in (0.5, 0.6, 0.8):
        client.create_model_version(name, source=str(tmp_path),
                                    tags={"metrics.test/accuracy": repr(acc)})
    registry.promote(client, name, "1", "test/accuracy")
    assert registry.champion_version(client, name) == "1"
    return race_store, name


def _race(uri: str, name: str) -> str:
    """Promote v2 (slow writes) and v3 at the same moment from two threads."""
    from mlflow import MlflowClient

    start, errors = threading.Barrier(2), []

    def promote(version: str):
        client = MlflowClient(tracking_uri=uri)
        if version == "2":
            client = SlowChampionWrites(client, "2", 0.6)
        start.wait()
        if version == "3":
            time.sleep(0.2)  # v2 has read champion v1 and is on its way to write
        try:
            registry.promote(client, name, version, "test/accuracy")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(v,)) for v in ("2", "3")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return registry.champion_version(MlflowClient(tracking_uri=uri), name)


def test_the_race_is_real_without_the_lock(three_versions, monkeypatch):
    """Control: with the registry lock taken out, the late write of v2 wins."""
    monkeypatch.setattr(registry, "registry_lock", lambda *a, **k: contextlib.nullcontext())
    assert _race(*three_versions) == "2"


def test_two_promotions_at_once_keep_the_better_champion(three_versions):
    from mlflow import MlflowClient

    uri, name = three_versions
    assert _race(uri, name) == "3"
    client = MlflowClient(tracking_uri=uri)
    tags = {v: client.get_model_version(name, v).tags for v in ("2", "3")}
    assert tags["3"]["promotion.decision"] == "champion"
    # v2 either lost to v3, or won against v1 first and was then replaced by v3.
    assert tags["2"]["promotion.decision"] in ("challenger", "champion")
    assert tags["3"].get("promotion.previous_champion") in ("1", "2")
    assert not [m.name for m in client.search_registered_models()
                if m.name.endswith(registry.LOCK_SUFFIX)]  # the lock was released


def test_a_dead_holder_does_not_block_the_registry(three_versions):
    """A promotion killed while holding the lock: the next one breaks it at once."""
    from mlflow import MlflowClient

    uri, name = three_versions
    client = MlflowClient(tracking_uri=uri)
    dead = 2 ** 22 + 12345  # beyond pid_max on most systems: no such process
    client.create_registered_model(name + registry.LOCK_SUFFIX,
                                   tags={registry.LOCK_OWNER_TAG: f"{_host()}:{dead}:x"})
    start = time.monotonic()
    assert registry.promote(client, name, "3", "test/accuracy")["decision"] == "champion"
    assert time.monotonic() - start < 10
    assert not [m.name for m in client.search_registered_models()
                if m.name.endswith(registry.LOCK_SUFFIX)]


def _host() -> str:
    import socket

    return socket.gethostname()


def test_a_store_that_refuses_the_lock_still_promotes(three_versions, caplog):
    """No permission to create registered models: a warning, and promotion goes on."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED

    uri, name = three_versions

    class NoNewModels:
        def __init__(self, client):
            self._client = client

        def create_registered_model(self, model, *args, **kwargs):
            raise MlflowException(f"may not create {model}", error_code=PERMISSION_DENIED)

        def __getattr__(self, attr):
            return getattr(self._client, attr)

    client = NoNewModels(MlflowClient(tracking_uri=uri))
    assert registry.promote(client, name, "3", "test/accuracy")["decision"] == "champion"
    assert "going on without it" in caplog.text
