"""The one place the library talks to MLflow.

Explicit run ids through `MlflowClient` rather than the fluent API's thread-local active run:
Prefect may run tasks in worker threads, and a run must never be picked up by the wrong task.
The default tracking URI is a project-local sqlite file, so `MLFLOW_TRACKING_URI` is never
required and `mlflow ui --backend-store-uri sqlite:///.masters/mlflow.db` opens it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from masters.config import TrackingConfig

MAX_PARAM_LEN = 6000


def _prepare_local_store(cfg: TrackingConfig) -> tuple[str, str | None]:
    uri = cfg.tracking_uri
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        db_path = Path(uri[len("sqlite:///") :])
        db_path.parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{db_path.resolve()}"
    artifacts = None
    remote = parsed.scheme in ("http", "https", "databricks")
    local_artifacts = urlparse(cfg.artifact_location or "").scheme in ("", "file")
    # A tracking server stores artifacts where it was told to (--artifacts-destination): a
    # local folder here would hold files the server and its UI cannot see.
    if cfg.artifact_location and not (remote and local_artifacts):
        loc = cfg.artifact_location
        if urlparse(loc).scheme in ("", "file"):
            path = Path(loc.removeprefix("file://")).resolve()
            path.mkdir(parents=True, exist_ok=True)
            loc = path.as_uri()
        artifacts = loc
    return uri, artifacts


@contextmanager
def _creation_lock(tracking_uri: str) -> Iterator[None]:
    """An exclusive lock beside a sqlite store (`<db>.lock`); other stores need none."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    with open(tracking_uri[len("sqlite:///") :] + ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config to MLflow params: dotted keys, values as short strings."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            text = v if isinstance(v, str) else json.dumps(v, default=str)
            out[key] = text[:MAX_PARAM_LEN]
    return out


class Tracker:
    """Runs, params, metrics and artifacts for one experiment."""

    def __init__(self, cfg: TrackingConfig):
        import mlflow
        from mlflow import MlflowClient

        self.cfg = cfg
        self.tracking_uri, artifact_location = _prepare_local_store(cfg)
        mlflow.set_tracking_uri(self.tracking_uri)
        # Two runs starting at once: a fresh sqlite store is created (migrated, by the client)
        # once, and an experiment created by the other run meanwhile is used, not made twice.
        with _creation_lock(self.tracking_uri):
            self.client = MlflowClient(tracking_uri=self.tracking_uri)
            exp = self.client.get_experiment_by_name(cfg.experiment)
            if exp is None:
                try:
                    self.experiment_id = self.client.create_experiment(
                        cfg.experiment, artifact_location=artifact_location
                    )
                except mlflow.exceptions.MlflowException as exc:
                    if "ALREADY_EXISTS" not in str(exc.error_code):
                        raise
                    exp = self.client.get_experiment_by_name(cfg.experiment)
            if exp is not None:
                self.experiment_id = exp.experiment_id

    def start_run(
        self, name: str, *, parent_run_id: str | None = None, tags: dict[str, str] | None = None
    ) -> str:
        tags = dict(tags or {})
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        return run.info.run_id

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        """Mark the run ended. Closing a FAILED run happens while an error propagates (often
        the tracking server being down): a failure to close it is logged, not raised, so that
        first error is the one the user sees."""
        try:
            self.client.set_terminated(run_id, status=status)
        except Exception as exc:
            if status != "FAILED":
                raise
            logging.getLogger(__name__).warning(
                "could not mark MLflow run %s as FAILED (%s: %s)", run_id,
                type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")

    @contextmanager
    def ended(self, run_id: str) -> Iterator[str]:
        """End `run_id` when the block exits: FINISHED, or FAILED if the block raised."""
        try:
            yield run_id
        except BaseException:
            self.end_run(run_id, "FAILED")
            raise
        self.end_run(run_id, "FINISHED")

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        self.log_metric_steps(run_id, [(metrics, step)])

    def log_metric_steps(
        self, run_id: str, entries: Iterable[tuple[Mapping[str, float], int]]
    ) -> None:
        """(metrics, step) pairs in as few calls as MLflow allows; None and non-finite skipped."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(_metric_key(k), float(v), now, step)
            for metrics, step in entries
            for k, v in metrics.items()
            if v is not None and math.isfinite(float(v))
        ]
        for i in range(0, len(items), 900):  # MLflow caps a batch at 1000 metrics
            self.client.log_batch(run_id, metrics=items[i : i + 900])

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, str(v))

    def log_dict(self, run_id: str, data: Any, artifact_file: str) -> None:
        self.client.log_dict(run_id, data, artifact_file)

    def log_figure(self, run_id: str, figure, artifact_file: str) -> None:
        self.client.log_figure(run_id, figure, artifact_file)

    def log_table(self, run_id: str, rows: list[dict], artifact_file: str) -> None:
        """Rows as an MLflow table artifact (shown in the UI's artifact and evaluation views)."""
        columns = {k: [r.get(k) for r in rows] for k in (rows[0] if rows else {})}
        self.client.log_table(run_id, data=columns, artifact_file=artifact_file)

    def log_artifacts(self, run_id: str, local_dir: str | Path, artifact_path: str) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)


def _metric_key(key: str) -> str:
    # MLflow keys allow / . - _ and spaces; anything else from a task type name becomes _.
    return "".join(c if c.isalnum() or c in "/._- " else "_" for c in key)


class BufferedMetrics:
    """Per-step metrics flushed in batches: one sqlite write per step would dominate a tiny run."""

    def __init__(self, tracker: Tracker, run_id: str, every: int = 25):
        self.tracker, self.run_id, self.every = tracker, run_id, every
        self._buffer: list[tuple[dict[str, float], int]] = []

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        self._buffer.append((dict(metrics), step))
        if len(self._buffer) >= self.every:
            self.flush()

    def flush(self) -> None:
        self.tracker.log_metric_steps(self.run_id, self._buffer)
        self._buffer.clear()
