"""Helpers shared by the Prefect tasks."""

from __future__ import annotations

import subprocess
from pathlib import Path


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


class Progress:
    """Work done of a run's step: a tqdm bar (`show`) and, inside a Prefect run, a progress
    artifact `key` for the UI, moved when the done share passes a whole percent (so a long
    training logs at most ~100 updates). Outside Prefect (torchrun ranks) only the bar."""

    def __init__(self, total: int, *, key: str, desc: str, unit: str, what: str,
                 done: int = 0, show: bool = False):
        from prefect.context import get_run_context
        from tqdm.auto import tqdm

        self.total, self.done = total, done
        self.bar = tqdm(total=total, initial=done, desc=desc, unit=unit, disable=not show)
        self.artifact, self._shown = None, self._whole()
        try:
            get_run_context()
        except Exception:  # noqa: BLE001 - MissingContextError: not in a flow or task run
            return
        from prefect.artifacts import create_progress_artifact

        self.artifact = create_progress_artifact(self.percent(), key=key,
                                                 description=f"{what} (of {total})")

    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 100.0

    def _whole(self) -> int:
        return int(self.percent())

    def advance(self, n: int = 1) -> None:
        self.update_to(self.done + n)

    def update_to(self, done: int) -> None:
        self.bar.update(done - self.done)
        self.done = done
        if self.artifact is not None and self._whole() > self._shown:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(self.artifact, self.percent())
        self._shown = max(self._shown, self._whole())

    def close(self) -> None:
        self.bar.close()
