"""# masters-promote: move the `champion` alias by hand

`masters-distill` promotes automatically through the gate (docs/registry.md). This flow is
for the human in the loop:

- **promote a named version**: `champion` moves to it, gate or not (`gated=True` applies the
  configured gate instead, like the pipeline does). The version it replaces is remembered on
  the new champion, so the move can be undone.
- **roll back**: `champion` goes back to the version the current champion replaced.

Every move is a tag on the version and a markdown artifact in Prefect.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.params import PromoteParams
from masters import registry
from masters.config import from_public
from masters.tracking import Tracker
from tasks.register import REGISTRY_TAG


@task(name="move-champion", tags=[REGISTRY_TAG])
def move_champion(cfg_json: dict, version: str | None, rollback: bool, gated: bool) -> dict:
    cfg = from_public(cfg_json)
    client = Tracker(cfg.tracking).client
    name = cfg.tracking.registered_model
    before = registry.champion_version(client, name)
    if rollback:
        registry.rollback(client, name)
        reason = f"rolled back from version {before}"
    elif gated:
        p = cfg.promotion
        d = registry.promote(client, name, version, p.gate_metric, p.margin, p.greater_is_better)
        reason = f"gate: {d['decision']} ({d['reason']})"
    else:
        registry.set_champion(client, name, version)
        reason = f"version {version} set by hand"
    return {"name": name, "champion": registry.champion_version(client, name),
            "previous": before, "reason": reason}


@flow(name="masters-promote", log_prints=True)
def promote_flow(params: PromoteParams = PromoteParams(), config: dict | None = None) -> dict:
    """Champion to `params.version` (by hand, or through the gate with `gated`), or roll back.

    `config`, a resolved `public_dict()`, replaces the preset when given (CLI, tests)."""
    version, rollback, gated = params.version, params.rollback, params.gated
    if rollback == (version is not None):
        raise ValueError("give exactly one of: a version to promote, or rollback=True")
    cfg = from_public(config) if config is not None else params.to_config()
    out = move_champion(cfg.public_dict(), None if version is None else str(version),
                        rollback, gated)
    text = (f"# masters-promote: {out['name']}\n\n"
            f"champion: version {out['previous'] or 'none'} -> version {out['champion']}\n\n"
            f"{out['reason']}\n")
    get_run_logger().info(text)
    create_markdown_artifact(key="promotion", markdown=text,
                             description=f"{out['name']} champion")
    return out
