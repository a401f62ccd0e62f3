"""The registry lock under the interleavings that broke it, driven deterministically on a real
sqlite store (docs/registry.md, "Concurrency")."""

from __future__ import annotations

import threading
import time

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS
from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

from masters import registry_lock as rl
from masters.config import TrackingConfig
from masters.tracking import Tracker

NAME = "locked-model"
LOCK = NAME + rl.LOCK_SUFFIX


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("lock")
    return Tracker(TrackingConfig(tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
                                  artifact_location=str(root / "art"),
                                  experiment="lock")).tracking_uri


@pytest.fixture
def client(store_uri):
    c = MlflowClient(tracking_uri=store_uri)
    yield c
    for m in c.search_registered_models():
        c.delete_registered_model(m.name)


def _locks(client) -> list[str]:
    return sorted(m.name for m in client.search_registered_models() if NAME in m.name)


def _live_owner() -> str:
    return rl._owner()  # this process: alive, so never broken as dead


def test_holder_releases_between_the_contenders_insert_and_its_read(client, monkeypatch):
    """MLflow's create is insert-then-read: the holder's delete lands between the two, and the
    contender's create raises RESOURCE_DOES_NOT_EXIST. That means "free now", not a failure."""
    client.create_registered_model(LOCK, tags={rl.LOCK_OWNER_TAG: _live_owner()})
    original = SqlAlchemyStore.get_registered_model
    interleaved = []

    def read_after_holder_released(self, name):
        if name == LOCK and not interleaved:  # the first read is the one inside create
            interleaved.append(name)
            self.delete_registered_model(name)  # the holder releases exactly here
        return original(self, name)

    monkeypatch.setattr(SqlAlchemyStore, "get_registered_model", read_after_holder_released)
    with rl.registry_lock(client, NAME, wait_s=5):
        assert _locks(client) == [LOCK]
    assert interleaved == [LOCK]  # the interleaving did happen
    assert _locks(client) == []


def test_a_create_whose_reply_was_lost_holds_the_lock(client):
    """A client-side retry of a create that had succeeded gets ALREADY_EXISTS for our own
    lock: we hold it (no waiting for ourselves until the lock goes stale)."""

    class LostReply:
        def __init__(self, c):
            self._c = c

        def create_registered_model(self, name, **kwargs):
            self._c.create_registered_model(name, **kwargs)
            raise MlflowException("already exists", error_code=RESOURCE_ALREADY_EXISTS)

        def __getattr__(self, attr):
            return getattr(self._c, attr)

    start = time.monotonic()
    with rl.registry_lock(LostReply(client), NAME, wait_s=5):
        assert _locks(client) == [LOCK]
    assert time.monotonic() - start < 3
    assert _locks(client) == []


def test_a_breaker_with_a_stale_view_never_deletes_a_fresh_lock(client):
    """Two contenders saw the same dead holder; the first broke it and took the lock. The
    second, acting on what it read before, must leave the first one's lock alone."""
    dead = f"{rl.socket.gethostname()}:{2 ** 22 + 4321}:x"
    client.create_registered_model(LOCK, tags={rl.LOCK_OWNER_TAG: dead})
    with rl.registry_lock(client, NAME, wait_s=5):  # first contender: breaks, then holds
        fresh = client.get_registered_model(LOCK).tags[rl.LOCK_OWNER_TAG]
        assert fresh != dead
        rl._break(client, LOCK, dead, rl.LOCK_TTL_S)  # second contender, stale view
        assert client.get_registered_model(LOCK).tags[rl.LOCK_OWNER_TAG] == fresh
    assert _locks(client) == []


def test_only_one_breaker_at_a_time(client):
    """While another contender holds the breaker, a stale lock is left for it to break."""
    dead = f"{rl.socket.gethostname()}:{2 ** 22 + 4321}:x"
    client.create_registered_model(LOCK, tags={rl.LOCK_OWNER_TAG: dead})
    client.create_registered_model(LOCK + rl.BREAKER_SUFFIX,
                                   tags={rl.LOCK_OWNER_TAG: _live_owner()})
    rl._break(client, LOCK, dead, rl.LOCK_TTL_S)
    assert _locks(client) == [LOCK, LOCK + rl.BREAKER_SUFFIX]
    # A breaker older than the TTL died mid-break: it is cleared, and the next try breaks.
    rl._break(client, LOCK, dead, ttl_s=0.0)
    assert _locks(client) == [LOCK]
    rl._break(client, LOCK, dead, rl.LOCK_TTL_S)
    assert _locks(client) == []


def test_mutual_exclusion_under_contention(store_uri, client):
    """Four threads, each with its own client, take the lock 8 times: never two inside."""
    inside, most, errors = [0], [0], []
    guard = threading.Lock()

    def worker():
        c = MlflowClient(tracking_uri=store_uri)
        try:
            for _ in range(8):
                with rl.registry_lock(c, NAME, wait_s=120):
                    with guard:
                        inside[0] += 1
                        most[0] = max(most[0], inside[0])
                    time.sleep(0.005)
                    with guard:
                        inside[0] -= 1
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert errors == [] and most[0] == 1
    assert _locks(client) == []


def test_busy_lock_times_out_naming_the_holder(client):
    owner = _live_owner()
    client.create_registered_model(LOCK, tags={rl.LOCK_OWNER_TAG: owner})
    with pytest.raises(rl.RegistryBusyError, match=owner):
        with rl.registry_lock(client, NAME, wait_s=0.2):
            pass
    assert _locks(client) == [LOCK]  # a live holder's lock is never taken from it
