"""Prefect task: check every input before the run does any work (masters.checks)."""

from __future__ import annotations

from prefect import get_run_logger, task

from masters import checks, data
from masters.config import from_public
from tasks.common import PERSIST
from tasks.generate import RESIDENT


# log_prints off: building the split may print through dill (see tasks.generate).
@task(name="check-inputs", log_prints=False, **PERSIST)
def check_inputs(cfg_json: dict) -> dict:
    """Storage, checkpoints and data; the first bad one fails the run, naming what to fix."""
    cfg = from_public(cfg_json)

    def load_split(data_cfg, split):  # the train split stays resident for generation
        return RESIDENT.split(data_cfg) if split == "train" else data.load_split(data_cfg, split)

    out = checks.check_inputs(cfg, load_split)
    get_run_logger().info("inputs checked: %s", out)
    return out
