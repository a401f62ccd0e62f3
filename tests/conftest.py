"""Shared fixtures: isolated Prefect API, project-local state in tmp dirs, offline hub."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def prefect_api():
    """A temporary Prefect API (real server process, throwaway database) for flow tests."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def smoke_overrides(tmp_path):
    """--set overrides that send every artefact of a smoke run to tmp_path."""
    return [
        f"bootstrap.out_dir={tmp_path / 'bootstrap'}",
        f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"tracking.artifact_location={tmp_path / 'mlartifacts'}",
        f"storage.cache_uri={tmp_path / 'cache'}",
    ]
