"""Prefect retries happen for transient storage errors only (tasks/common.py)."""

from __future__ import annotations

import pytest
from prefect import flow, task

from masters.cache import TransientStorageError
from tasks.common import TRANSIENT_RETRIES, retry_transient


def _flaky(errors: list[BaseException]):
    calls = []

    @task(retries=TRANSIENT_RETRIES, retry_delay_seconds=0, retry_condition_fn=retry_transient)
    def step() -> int:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return len(calls)

    @flow
    def run() -> int:
        return step()

    return run, calls


def test_transient_errors_are_retried_until_success(prefect_api):
    run, calls = _flaky([TransientStorageError("503 SlowDown"),
                         TransientStorageError("read timeout")])
    assert run() == 3 and len(calls) == 3


def test_transient_errors_give_up_after_the_bound(prefect_api):
    run, calls = _flaky([TransientStorageError("503")] * (TRANSIENT_RETRIES + 5))
    with pytest.raises(TransientStorageError):
        run()
    assert len(calls) == TRANSIENT_RETRIES + 1


@pytest.mark.parametrize("error", [ValueError("bad config field"), KeyError("column"),
                                   MemoryError("out of memory"),
                                   RuntimeError("CUDA out of memory")])
def test_deterministic_errors_and_oom_fail_at_once(prefect_api, error):
    run, calls = _flaky([error, error])
    with pytest.raises(type(error)):
        run()
    assert len(calls) == 1
