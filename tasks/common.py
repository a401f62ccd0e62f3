"""Helpers shared by the Prefect tasks."""

from __future__ import annotations

import subprocess
from pathlib import Path

from masters.progress import Progress  # noqa: F401 - the tasks' progress, re-exported


def flow_run_tags() -> dict[str, str]:
    """Lineage tags for MLflow runs: the Prefect flow run and the code version."""
    from prefect.runtime import flow_run

    tags = {"masters.git_sha": git_sha()}
    if flow_run.id:
        tags["prefect.flow_run_id"] = str(flow_run.id)
        tags["prefect.flow_run_name"] = str(flow_run.name)
    return tags


def git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# Task results are small JSON documents (cache keys, URIs, metrics), never models or tensors.
# Persisting them is what Prefect's caching needs: a failed flow run retried from the UI (same
# run id, default cache policy) skips the tasks that had completed. They go to
# PREFECT_RESULTS_LOCAL_STORAGE_PATH, or to S3 with PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK
# (docs/deployments.md). JSON, not pickle: nothing executable is read back.
PERSIST = {"persist_result": True, "result_serializer": "json"}

# Retries are for transient storage/network failures only: a deterministic error (bad config,
# bad data, a bug) or an out-of-memory fails the same way every time.
TRANSIENT_RETRIES = 3


def retry_transient(task, task_run, state) -> bool:
    """Prefect retry_condition_fn: retry only when the failure looks transient."""
    from masters.cache import is_transient

    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - classifying, not handling
        return is_transient(exc)
    return False
