"""What the CLI and the tracker do when a run fails: one line naming the cause, the run FAILED.

Not capsys: Prefect's log handler would keep its stream, closed after the test.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import pytest
from conftest import smoke_distill_overrides

from flows import cli
from masters.config import load_config
from masters.tracking import Tracker

ROOT = Path(__file__).resolve().parents[1]


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


def test_generate_checks_inputs_first_and_fails_in_one_line(prefect_api, tmp_path, checkpoints):
    overrides = smoke_distill_overrides(tmp_path, checkpoints)
    overrides.append(f"student.path={tmp_path / 'no-such-student'}")
    rc, out, err = _cli(["generate", "--config", str(ROOT / "configs/smoke.yaml"),
                         "--no-progress", *[x for o in overrides for x in ("--set", o)]])
    assert rc == 1 and out == ""
    last = err.strip().splitlines()[-1]  # Prefect's log above it keeps the traceback
    assert last.startswith("masters: ModelLoadError: student.path: ")
    assert "no-such-student" in last and "does not exist" in last
    # Checked before any work: no threshold table, no shard, nothing in the cache.
    cache = tmp_path / "cache"
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))


def test_config_errors_still_exit_2(tmp_path):
    rc, _, err = _cli(["config", "--set", "training.lr=-1"])
    assert rc == 2 and err.startswith("masters: ") and "training.lr" in err


def test_unknown_dtype_is_a_config_error_naming_the_field():
    rc, out, err = _cli(["config", "--set", "dtype=float8"])
    assert rc == 2 and out == "" and "dtype" in err and "float8" in err
    assert "'auto', 'float32', 'bfloat16' or 'float16'" in err


def _tracker(tmp_path) -> Tracker:
    return Tracker(load_config(overrides=[
        f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"tracking.artifact_location={tmp_path / 'art'}"]).tracking)


def test_a_run_ends_failed_when_its_block_raises(tmp_path):
    tracker = _tracker(tmp_path)
    with pytest.raises(KeyError, match="boom"):
        with tracker.ended(tracker.start_run("r")) as run:
            raise KeyError("boom")
    assert tracker.client.get_run(run).info.status == "FAILED"
    with tracker.ended(tracker.start_run("ok")) as ok:
        pass
    assert tracker.client.get_run(ok).info.status == "FINISHED"


def test_tracking_down_while_closing_a_failed_run_keeps_the_first_error(tmp_path, monkeypatch,
                                                                       caplog):
    tracker = _tracker(tmp_path)
    run = tracker.start_run("r")

    def down(*a, **k):
        raise ConnectionError("tracking server unreachable")

    monkeypatch.setattr(tracker.client, "set_terminated", down)
    with caplog.at_level(logging.WARNING, logger="masters.tracking"):
        with pytest.raises(ValueError, match="the first error"):
            with tracker.ended(run):
                raise ValueError("the first error")
    assert "could not mark MLflow run" in caplog.text and "unreachable" in caplog.text
    # Closing a run that succeeded: the tracking failure is the error.
    with pytest.raises(ConnectionError):
        tracker.end_run(run)
