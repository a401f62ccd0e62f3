"""`masters serve`: the deployments of deployments/prefect.yaml, served without a worker.

`prefect deploy` + `prefect worker start` is the way to run on a work pool; serving is the
one-process way (a laptop, a single VM): the same deployments, schedules, parameters and
concurrency limits, read from the same prefect.yaml so the two can never drift apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

PREFECT_YAML = Path(__file__).resolve().parent.parent / "deployments" / "prefect.yaml"


def deployment_specs(path: str | Path = PREFECT_YAML) -> list[dict[str, Any]]:
    """The `deployments:` entries of a prefect.yaml (YAML anchors resolved)."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    specs = data.get("deployments") or []
    if not specs:
        raise ValueError(f"{path} declares no deployments")
    for i, spec in enumerate(specs):
        for key in ("name", "entrypoint"):
            if not spec.get(key):
                raise ValueError(f"{path}: deployments[{i}] has no {key!r}")
    return specs


def runner_deployments(path: str | Path = PREFECT_YAML, root: str | Path | None = None):
    """RunnerDeployments for `prefect.serve`, one per prefect.yaml entry."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.flows import load_flow_from_entrypoint
    from prefect.schedules import Cron, Interval

    root = Path(root or Path(path).resolve().parent.parent)
    out = []
    for spec in deployment_specs(path):
        file, _, func = spec["entrypoint"].partition(":")
        flow = load_flow_from_entrypoint(f"{root / file}:{func}")
        schedules = []
        for s in spec.get("schedules") or []:
            common = {"timezone": s.get("timezone"), "active": s.get("active", True),
                      "parameters": s.get("parameters")}
            if "cron" in s:
                schedules.append(Cron(s["cron"], **common))
            elif "interval" in s:
                schedules.append(Interval(s["interval"], **common))
            else:
                raise ValueError(f"{path}: schedule {s} of {spec['name']!r} needs cron or "
                                 "interval")
        limit = spec.get("concurrency_limit")
        if isinstance(limit, dict):
            limit = ConcurrencyLimitConfig(**limit)
        out.append(flow.to_deployment(
            name=spec["name"], description=spec.get("description"), tags=spec.get("tags"),
            parameters=spec.get("parameters"), schedules=schedules or None,
            concurrency_limit=limit,
            enforce_parameter_schema=spec.get("enforce_parameter_schema", True)))
    return out


def serve(path: str | Path = PREFECT_YAML, limit: int | None = None) -> None:
    """Serve every deployment until interrupted (Ctrl-C pauses their schedules)."""
    from prefect import serve as prefect_serve

    prefect_serve(*runner_deployments(path), limit=limit)
