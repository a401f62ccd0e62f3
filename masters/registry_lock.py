"""A mutex over one registered model's aliases and versions, kept in the MLflow registry itself.

MLflow has no compare-and-set for aliases, but a registered model's name is unique in every
backing store (sqlite, PostgreSQL/MySQL behind `mlflow server`, Databricks), so creating the
registered model `<name>_registry_lock` succeeds for one caller at a time. That is the only
primitive every deployment in the README shares (one host on sqlite, several hosts on one
tracking server, runs under a Prefect server or without one), so the lock is built on it
rather than on a file lock (one host only) or a Prefect concurrency limit (needs a server).

Every interleaving of create / read / delete by concurrent callers is one of:

- the create fails with ALREADY_EXISTS: someone holds it; wait and retry;
- the create fails with RESOURCE_DOES_NOT_EXIST: MLflow's create is insert-then-read, and the
  holder released between the two; retry at once;
- the create fails but the lock now carries our own owner tag: a client-side retry of a create
  that had succeeded (REST timeouts); we hold it;
- a holder is dead (same host, process gone) or older than `ttl_s`: it is broken, but only
  under a second lock (`<lock>_breaker`, never waited for), so two contenders that both saw
  the stale holder cannot each delete a lock: the second would otherwise delete the fresh
  lock the first had just taken, and both would go on.

Residual window, documented in docs/registry.md: a breaker that dies inside its few
milliseconds of breaking leaves `_breaker` behind; it is itself broken after `ttl_s`.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("masters.registry")

LOCK_SUFFIX = "_registry_lock"  # underscores: valid in Unity Catalog's three-part names too
BREAKER_SUFFIX = "_breaker"
LOCK_OWNER_TAG = "masters.lock.owner"
LOCK_TTL_S = 120.0  # a registry operation takes well under a second; a lock this old is stale
LOCK_WAIT_S = 300.0

# Stores that will never let us create the lock model: proceed unlocked rather than not at all.
_LOCK_REFUSED = {"PERMISSION_DENIED", "UNAUTHENTICATED", "INVALID_PARAMETER_VALUE",
                 "FEATURE_DISABLED"}
_HELD = "ALREADY_EXISTS"  # RESOURCE_ALREADY_EXISTS from every store
_JUST_RELEASED = "RESOURCE_DOES_NOT_EXIST"


class RegistryBusyError(RuntimeError):
    """The registered model stayed locked by another live promotion for too long."""


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


@contextmanager
def registry_lock(client, name: str, *, wait_s: float = LOCK_WAIT_S,
                  ttl_s: float = LOCK_TTL_S) -> Iterator[None]:
    """Hold the registered model `name`'s mutex: the registered model `<name>_registry_lock`.

    A store that refuses to create it (no permission to create registered models) gets a
    warning and no lock: the re-reads in `registry.promote` still narrow the race.
    """
    from mlflow.exceptions import MlflowException

    client, lock, owner = getattr(client, "client", client), name + LOCK_SUFFIX, _owner()
    deadline, delay = time.monotonic() + wait_s, 0.02
    while True:
        outcome = _try_create(client, lock, owner, f"mutex of {name!r}'s aliases and versions "
                              "(masters.registry); delete it only if no promotion is running")
        if outcome == "refused":
            yield
            return
        if outcome == "acquired":
            break
        holder = None if outcome == "released" else _holder(client, lock)
        if holder is not None and holder[0] == owner:
            break  # our own create succeeded on the server; its reply was lost
        if holder is not None and _stale(holder, ttl_s):
            _break(client, lock, holder[0], ttl_s)
        if time.monotonic() > deadline:
            raise RegistryBusyError(
                f"registered model {name!r} stayed locked by {holder and holder[0]} for "
                f"{wait_s:.0f} s; if no promotion is running, delete the registered model "
                f"{lock!r}")
        if holder is None:
            continue  # released between our insert and our read: try again now
        time.sleep(delay * (1 + random.random()))
        delay = min(2 * delay, 0.5)
    try:
        yield
    finally:
        try:
            _release(client, lock, owner)
        except MlflowException as exc:  # an outage must not hide the body's own error
            log.warning("could not release the registry lock %r (%s); it is broken as stale "
                        "after %.0f s", lock, exc.error_code, ttl_s)


def _try_create(client, lock: str, owner: str, description: str = "") -> str:
    """'acquired', 'held', 'released' (insert lost to a holder who then deleted) or 'refused'."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(lock, tags={LOCK_OWNER_TAG: owner},
                                       description=description)
        return "acquired"
    except MlflowException as exc:
        code = str(exc.error_code)
        if code in _LOCK_REFUSED:
            log.warning("cannot create the registry lock %r (%s): going on without it",
                        lock, code)
            return "refused"
        if _HELD in code:
            return "held"
        if code == _JUST_RELEASED:
            return "released"
        raise


def _holder(client, lock: str) -> tuple[str, float] | None:
    """(owner tag, creation time in s) of the lock, or None when nobody holds it."""
    from mlflow.exceptions import MlflowException

    try:
        rm = client.get_registered_model(lock)
    except MlflowException as exc:
        if str(exc.error_code) == _JUST_RELEASED:
            return None
        raise
    return rm.tags.get(LOCK_OWNER_TAG, ""), (rm.creation_timestamp or 0) / 1000


def _stale(holder: tuple[str, float], ttl_s: float) -> bool:
    owner, created = holder
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    dead = host == socket.gethostname() and pid.isdigit() and not _alive(int(pid))
    return dead or time.time() - created > ttl_s


def _break(client, lock: str, stale_owner: str, ttl_s: float) -> None:
    """Delete `lock` if it still belongs to `stale_owner`, under the breaker lock."""
    breaker, me = lock + BREAKER_SUFFIX, _owner()
    if _try_create(client, breaker, me) != "acquired":
        old = _holder(client, breaker)
        if old is not None and time.time() - old[1] > ttl_s:  # a breaker died mid-break
            _delete(client, breaker)
        return  # someone else is breaking it; the caller's loop looks again
    try:
        holder = _holder(client, lock)
        if holder is not None and holder[0] == stale_owner and _stale(holder, ttl_s):
            log.warning("breaking the registry lock %r of %s (dead or older than %.0f s)",
                        lock, stale_owner, ttl_s)
            _delete(client, lock)
    finally:
        _release(client, breaker, me)


def _release(client, lock: str, owner: str) -> None:
    holder = _holder(client, lock)
    if holder is not None and holder[0] == owner:
        _delete(client, lock)
    # else: broken as stale meanwhile; nothing of ours to release


def _delete(client, lock: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.delete_registered_model(lock)
    except MlflowException as exc:
        if str(exc.error_code) != _JUST_RELEASED:
            raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
