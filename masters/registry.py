"""The MLflow model registry: register distilled students, gate the `champion` alias.

Every distilled student becomes a new version of one registered model, tagged with where it
came from (teachers, schedule, data, cached answers, rewards, code, flow run) and how it
scored. Promotion is by aliases, not stages:

- the new version always takes `challenger`;
- it takes `champion` only if its gate metric beats the current champion's by at least the
  margin, or there is no champion;
- the decision and the numbers compared are written on the version as `promotion.*` tags.

MLflow is reached through an `MlflowClient` (or a `Tracker`, whose client is used), as in
`masters.tracking`; no Prefect here.

Concurrency: MLflow has no compare-and-set for aliases, but a registered model's name is
unique in every backing store, so creating the registered model `<name>_registry_lock`
succeeds for one caller at a time: `registry_lock` is that mutex. Every alias move
(`promote`, `set_champion`, `rollback`) and every version creation runs under it, so two
promotions at once are serialised and the second compares with the first's result; two runs
registering the same training find one version (`masters.registry_lock` says why it holds
under every interleaving). `promote` still re-reads the champion before and after its write,
for writers outside this module (the MLflow UI).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from masters.registry_lock import (  # noqa: F401 - part of this module's API
    LOCK_OWNER_TAG,
    LOCK_SUFFIX,
    RegistryBusyError,
    registry_lock,
)

log = logging.getLogger("masters.registry")

CHAMPION, CHALLENGER = "champion", "challenger"
# MLflow allows 100k characters per version tag value, but a tag is for reading in the UI; the
# full lineage is also logged as a JSON artifact of the register run.
TAG_VALUE_MAX = 5000
METRIC_TAG = "metrics."
PREVIOUS = "promotion.previous_champion"


def _client(tracker_or_client):
    return getattr(tracker_or_client, "client", tracker_or_client)


def tag_value(value: Any, limit: int = TAG_VALUE_MAX) -> str:
    """Any value as a tag string: JSON for non-strings, cut to `limit` with a visible mark."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    if len(text) <= limit:
        return text
    mark = f"...[truncated, {len(text)} chars]"
    return (text[: max(0, limit - len(mark))] + mark)[:limit]


def split_fingerprint(dataset) -> str:
    """Content hash of a canonical split: ids, questions, answers and encoded image bytes
    (read without decoding, so a large split costs a read, not a decode)."""
    import datasets

    h = hashlib.sha256()
    for col in ("id", "question", "answer"):
        h.update(json.dumps([str(x) for x in dataset[col]]).encode())
    for img in dataset.cast_column("image", datasets.Image(decode=False))["image"]:
        h.update(img.get("bytes") or str(img.get("path")).encode())
    return h.hexdigest()[:16]


def lineage_tags(public_cfg: Mapping[str, Any], *, schedule: list[dict],
                 split_fingerprints: Mapping[str, str], manifests: list[dict],
                 teachers: list[dict], extra: Mapping[str, Any] | None = None
                 ) -> dict[str, str]:
    """Version tags that say where a student came from.

    Built from `MastersConfig.public_dict()` only, so no secret can reach a tag.
    """
    fps = {t["teacher"]: t.get("fingerprint") for t in teachers}
    teachers = public_cfg["teachers"]
    tags: dict[str, Any] = {
        "masters.student.base": public_cfg["student"]["path"],
        "masters.student.base_fingerprint": next(
            (m["student_fingerprint"] for m in manifests if m.get("student_fingerprint")), None),
        "masters.teachers": [t["name"] for t in teachers],
        "masters.schedule": [[s["teacher"], s["ratio"], s["stop"] - s["start"]]
                             for s in schedule],
        "masters.data": public_cfg["data"],
        "masters.rewards": public_cfg["rewards"],
        "masters.training": public_cfg["training"],
        "masters.cache.manifests": [m.get("manifest_uri") for m in manifests],
    }
    for t in teachers:
        prefix = f"masters.teacher.{t['name']}"
        tags[f"{prefix}.path"] = t["path"]
        tags[f"{prefix}.r_max"] = str(t["r_max"])
        tags[f"{prefix}.step"] = str(t["step"])
        if fps.get(t["name"]):
            tags[f"{prefix}.fingerprint"] = fps[t["name"]]
    for split, fp in split_fingerprints.items():
        tags[f"masters.data.fingerprint.{split}"] = fp
    tags.update(extra or {})
    return {k: tag_value(v) for k, v in tags.items() if v is not None}


def register_student(tracker_or_client, run_id: str, checkpoint_path: str | Path, name: str,
                     lineage: Mapping[str, str], metrics: Mapping[str, float], *,
                     model_config: dict | None = None) -> str:
    """Log the checkpoint as a pyfunc model of `run_id` and register it; returns the version.

    A version from the same training (`masters.train_key`) evaluated on the same test split is
    returned instead of registering a duplicate: a retried task, or a re-run that changed
    nothing, adds no version.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from masters import pyfunc_model

    client = _client(tracker_or_client)
    tags = {**lineage, **{METRIC_TAG + k: repr(float(v)) for k, v in metrics.items()},
            "masters.run_id": run_id}
    existing = _same_student(client, name, tags)
    if existing is not None:
        return existing
    # Model.log resolves the tracking URI globally (as Tracker sets it): keep it on the client's.
    mlflow.set_tracking_uri(client.tracking_uri)
    info = pyfunc_model.log_student(client, run_id, checkpoint_path, model_config=model_config)
    with registry_lock(client, name):
        # Checked again under the lock: a concurrent run of the same training may have won.
        existing = _same_student(client, name, tags)
        if existing is not None:
            return existing
        try:
            client.create_registered_model(name, description="Students distilled with "
                                           "Masters (masking teachers, reinforcing the "
                                           "student).")
        except MlflowException as exc:
            if "ALREADY_EXISTS" not in str(exc.error_code):
                raise
        mv = client.create_model_version(name, source=info.model_uri, run_id=run_id,
                                         tags=tags, model_id=info.model_id)
    return str(mv.version)


def _same_student(client, name: str, tags: Mapping[str, str]) -> str | None:
    # The training key names the checkpoint folder by every input of training (answers,
    # rewards, training config, initial weights): equal keys, equal student.
    key = ("masters.train_key", "masters.data.fingerprint.test")
    if not all(tags.get(k) for k in key):
        return None
    for mv in client.search_model_versions(f"name = '{name}'"):
        if all(mv.tags.get(k) == tags[k] for k in key):
            return str(mv.version)
    return None


def _alias(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        # A missing alias is INVALID_PARAMETER_VALUE, a missing model RESOURCE_DOES_NOT_EXIST;
        # anything else (a store that cannot be reached) must not read as "no champion".
        if exc.error_code in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST"):
            return None
        raise


def gate_value(client, name: str, version: str, metric: str) -> float | None:
    """The version's gate metric: its `metrics.*` tag, else the metric of its run."""
    mv = client.get_model_version(name, str(version))
    if METRIC_TAG + metric in mv.tags:
        return float(mv.tags[METRIC_TAG + metric])
    if mv.run_id:
        value = client.get_run(mv.run_id).data.metrics.get(metric)
        return None if value is None else float(value)
    return None


def promote(client, name: str, version: str | int, gate_metric: str, margin: float = 0.0,
            greater_is_better: bool = True, baseline: float | None = None) -> dict:
    """Challenger always; champion only if the gate passes. Returns the decision.

    Idempotent: a version that already has a decision gets it back, and no alias moves.
    Runs under `registry_lock`: a concurrent promotion waits and then compares with ours.
    """
    client, version = _client(client), str(version)
    mv = client.get_model_version(name, version)
    if "promotion.json" in mv.tags:
        return json.loads(mv.tags["promotion.json"])
    with registry_lock(client, name):
        return _promote_locked(client, name, version, gate_metric, margin, greater_is_better,
                               baseline)


def _promote_locked(client, name: str, version: str, gate_metric: str, margin: float,
                    greater_is_better: bool, baseline: float | None) -> dict:
    mv = client.get_model_version(name, version)
    if "promotion.json" in mv.tags:  # decided by a concurrent call while we waited
        return json.loads(mv.tags["promotion.json"])
    value = gate_value(client, name, version, gate_metric)
    client.set_registered_model_alias(name, CHALLENGER, version)
    decision: dict[str, Any] = {}
    for _ in range(3):  # a champion that moved under us is compared again, at most twice
        current = _alias(client, name, CHAMPION)
        decision = _decide(client, name, version, value, current, gate_metric, margin,
                           greater_is_better, baseline)
        if not decision["promoted"] or decision["compared"] == version:
            break
        # Re-read immediately before the write: the comparison must be with what we replace.
        now = _alias(client, name, CHAMPION)
        if _ver(now) != _ver(current):
            continue
        client.set_registered_model_alias(name, CHAMPION, version)
        after = _alias(client, name, CHAMPION)
        if _ver(after) == version:
            if current is not None:
                client.set_model_version_tag(name, version, PREVIOUS, str(current.version))
            break
        # Someone moved it between our write and the re-read: compare with theirs.
    else:
        decision.update(promoted=False, decision=CHALLENGER,
                        reason="the champion kept moving during promotion; promote again")
        _record(client, name, version, decision, final=False)
        return decision
    _record(client, name, version, decision)
    return decision


def _ver(mv) -> str | None:
    return None if mv is None else str(mv.version)


def _decide(client, name, version, value, current, metric, margin, greater,
            baseline=None) -> dict:
    d = {"name": name, "version": version, "gate_metric": metric, "value": value,
         "margin": margin, "compared": _ver(current), "champion_value": None,
         "promoted": False, "decision": CHALLENGER, "reason": ""}
    if value is None:
        d["reason"] = f"version {version} has no {metric}"
    elif current is None and baseline is not None:
        # No champion yet: the model we started from is the bar, so the registry never
        # crowns a student that distillation made worse.
        gain = value - baseline if greater else baseline - value
        passed = gain >= margin
        d.update(promoted=passed, decision=CHAMPION if passed else CHALLENGER,
                 champion_value=baseline,
                 reason=f"no champion yet; {metric} {value:.4f} vs initial student "
                        f"{baseline:.4f}: gain {gain:+.4f} {'>=' if passed else '<'} margin "
                        f"{margin}")
    elif current is None:
        d.update(promoted=True, decision=CHAMPION, reason="no champion yet")
    elif _ver(current) == version:
        d.update(promoted=True, decision=CHAMPION, reason="already champion")
        d["champion_value"] = value
    else:
        champ = gate_value(client, name, current.version, metric)
        d["champion_value"] = champ
        if champ is None:
            d["reason"] = f"champion {current.version} has no {metric}; set it by hand"
        else:
            gain = value - champ if greater else champ - value
            passed = gain >= margin
            d.update(promoted=passed, decision=CHAMPION if passed else CHALLENGER,
                     reason=f"{metric} {value:.4f} vs champion {champ:.4f}: gain {gain:+.4f} "
                            f"{'>=' if passed else '<'} margin {margin}")
    return d


def _record(client, name: str, version: str, decision: dict, final: bool = True) -> None:
    tags = {"promotion.decision": decision["decision"],
            "promotion.compared": decision["compared"] or "none",
            "promotion.gate_metric": decision["gate_metric"],
            "promotion.value": decision["value"],
            "promotion.champion_value": decision["champion_value"],
            "promotion.margin": decision["margin"],
            "promotion.reason": decision["reason"],
            "promotion.decided_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, tag_value("none" if v is None else v))
    # Written last: its presence is what makes a later promote() of this version a no-op.
    if final:
        client.set_model_version_tag(name, version, "promotion.json", tag_value(decision))


def set_champion(client, name: str, version: str | int) -> dict:
    """Move `champion` to a version by hand (no gate); the one it replaces is remembered."""
    client, version = _client(client), str(version)
    client.get_model_version(name, version)  # fails clearly on an unknown version
    with registry_lock(client, name):
        return _set_champion_locked(client, name, version)


def _set_champion_locked(client, name: str, version: str) -> dict:
    current = _alias(client, name, CHAMPION)
    if _ver(current) == version:
        return {"name": name, "version": version, "previous": None, "changed": False}
    client.set_registered_model_alias(name, CHAMPION, version)
    if current is not None:
        client.set_model_version_tag(name, version, PREVIOUS, str(current.version))
    client.set_model_version_tag(name, version, "promotion.manual_at",
                                 time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return {"name": name, "version": version, "previous": _ver(current), "changed": True}


def rollback(client, name: str) -> dict:
    """Give `champion` back to the version it replaced (the current champion's tag)."""
    client = _client(client)
    with registry_lock(client, name):
        return _rollback_locked(client, name)


def _rollback_locked(client, name: str) -> dict:
    current = _alias(client, name, CHAMPION)
    if current is None:
        raise ValueError(f"registered model {name!r} has no champion to roll back")
    previous = current.tags.get(PREVIOUS)
    if not previous:
        raise ValueError(f"champion version {current.version} of {name!r} replaced no "
                         "earlier champion; nothing to roll back to")
    client.get_model_version(name, previous)
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_model_version_tag(name, current.version, "promotion.rolled_back_at",
                                 time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return {"name": name, "version": previous, "previous": str(current.version),
            "changed": True}


def champion_version(client, name: str) -> str | None:
    return _ver(_alias(_client(client), name, CHAMPION))


def model_uri(name: str, version: str | int | None = None, alias: str | None = None) -> str:
    return f"models:/{name}@{alias}" if alias else f"models:/{name}/{version}"


def resolve_version(client, name: str, ref: str) -> str:
    """A version number, or an alias (`champion`, `challenger`), to the version number."""
    client = _client(client)
    if str(ref).isdigit():
        client.get_model_version(name, str(ref))  # raises a clear RESOURCE_DOES_NOT_EXIST
        return str(ref)
    mv = _alias(client, name, str(ref))
    if mv is None:
        raise ValueError(f"registered model {name!r} has no version with alias {ref!r}")
    return str(mv.version)


def download_student(client, name: str, version: str, dst: str | Path) -> Path:
    """The checkpoint folder inside a registered student version, downloaded under `dst`."""
    import mlflow

    client = _client(client)
    mlflow.set_tracking_uri(client.tracking_uri)
    root = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=model_uri(name, version), dst_path=str(dst)))
    found = sorted(p.parent for p in (root / "artifacts").rglob("config.json")
                   if any(p.parent.glob("*.safetensors")))
    if not found:
        raise FileNotFoundError(f"version {version} of {name!r} holds no safetensors checkpoint "
                                f"under artifacts/ (downloaded to {root})")
    return found[0]
