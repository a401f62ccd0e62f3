"""Prefect task: train the student over every stage, from cached answers and rewards."""

from __future__ import annotations

from prefect import get_run_logger, task

from masters.config import from_public
from masters.train_job import run_training
from tasks.common import PERSIST, flow_run_tags


@task(name="train-student", **PERSIST, log_prints=False)
def train_student(cfg_json: dict, manifests: list[dict], scores: list[dict],
                  teachers: list[dict], parent_run_id: str | None,
                  progress: bool = False) -> dict:
    """One process; for several, rerun the logged train_inputs.json under torchrun."""
    return run_training(from_public(cfg_json), manifests, scores, teachers, parent_run_id,
                        get_run_logger(), progress=progress, tags=flow_run_tags())
