"""Fixtures of the reliability suite: one set of smoke models and one clean reference run
that every fault and concurrency test compares its cache with (started in the background
when the suite starts)."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from masters import cache
from masters.config import load_config

from .helpers import SMOKE, ForkServer, flags, overrides, snapshot, subprocess_env, versions


@pytest.fixture(autouse=True)
def _no_masters_env(monkeypatch):
    """Settings from the developer's shell must not leak into these runs."""
    for key in list(os.environ):
        if key.startswith("MASTERS_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def rel_models(tmp_path_factory):
    """The smoke teacher and student every reliability run distils (same seeds as the
    `checkpoints` fixture), saved once."""
    from conftest import save_smoke_models

    return save_smoke_models(tmp_path_factory.mktemp("rel-models"), {"teacher": 1, "student": 2})


def student_digest(trained_path: str | Path) -> str:
    return hashlib.sha256((Path(trained_path) / "model.safetensors").read_bytes()).hexdigest()


@pytest.fixture(scope="session", autouse=True)
def _reference_in_background(request, tmp_path_factory):
    """Start the reference run in its own process as soon as the suite starts, so it runs
    beside the bad-input tests instead of after them (two cores)."""
    if not any("reference" in getattr(item, "fixturenames", ())
               for item in request.session.items):  # the selected tests need no reference
        yield None
        return
    server = request.getfixturevalue("forkserver")
    models = request.getfixturevalue("rel_models")
    root = tmp_path_factory.mktemp("reference")
    items = overrides(root, models)
    started: dict = {"root": root, "items": items}

    def start():
        try:
            started["child"] = server.start(
                ["distill", "--no-progress", "--config", str(SMOKE), *flags(items)],
                root / "run.log")
        except Exception as exc:  # noqa: BLE001 - reported by `reference`
            started["error"] = exc

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    started["thread"] = thread
    yield started


@pytest.fixture(scope="session")
def reference(_reference_in_background):
    """One clean, uninterrupted `masters distill`: its cache (keys and bytes), its student."""
    started = _reference_in_background
    started["thread"].join(120)
    assert "child" in started, started.get("error", "the reference run did not start")
    child = started["child"]
    assert child.wait(timeout=600) == 0, child.output()[-4000:]
    cfg = load_config(SMOKE, started["items"])
    snap = snapshot(cache.open_store(cfg.storage))
    assert {k.split("/")[0] for k in snap} == {"shards", "dists", "scores", "manifests"}
    assert versions(cfg.tracking.tracking_uri) == ["1"]
    student = next(line.split(": ", 1)[1] for line in child.output().splitlines()
                   if line.startswith("distilled student: "))
    return {"snapshot": snap, "student": student_digest(student)}


@pytest.fixture(scope="session")
def forkserver(prefect_api):
    """Pre-imported zygote that starts the `masters` processes of the kill and concurrency
    tests (forkserver.py); every child is killed at teardown."""
    server = ForkServer(subprocess_env())
    yield server
    server.close()
