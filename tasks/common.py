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
