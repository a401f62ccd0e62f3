"""The cache store, run against both backends: a tmp folder and moto's S3 server over HTTP.

The S3 side uses real boto3 calls to a real HTTP endpoint on 127.0.0.1; only the failure
injection reaches inside (a botocore event hook or a patched os function).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ConnectionClosedError
from conftest import moto_iam_user
from pydantic import SecretStr

from masters import cache
from masters.cache import (
    CacheError,
    CorruptObjectError,
    LocalStore,
    MissingObjectError,
    S3Store,
    content_key,
    get_json,
    get_jsonl,
    make_s3_client,
    open_store,
    put_json,
    put_jsonl,
)
from masters.config import StorageConfig

BUCKET = "masters-test"
FAKE_KEY_ID = "AKIAFAKEFAKEFAKE0001"
FAKE_SECRET = "Zx9-DISTINCTIVE-fake-secret-value-Qw7"


@pytest.fixture(scope="module")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        endpoint = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
        make_s3_client(_s3_cfg(endpoint)).create_bucket(Bucket=BUCKET)
        yield endpoint
        server.stop()


def _s3_cfg(endpoint: str, uri: str = f"s3://{BUCKET}", **kw: Any) -> StorageConfig:
    kw.setdefault("access_key_id", SecretStr(FAKE_KEY_ID))
    kw.setdefault("secret_access_key", SecretStr(FAKE_SECRET))
    return StorageConfig(cache_uri=uri, endpoint_url=endpoint, **kw)


@dataclass
class Backend:
    store: cache.Store
    raw_put: Any  # (key, bytes) -> None, bypassing the framing
    raw_get: Any  # key -> bytes
    fail_writes: Any  # monkeypatch -> None: make the next write fail mid-way
    leftovers: Any  # () -> list of anything stored, temp files included


@pytest.fixture(params=["local", "s3"])
def backend(request, tmp_path, monkeypatch):
    if request.param == "local":
        store = open_store(StorageConfig(cache_uri=str(tmp_path / "cache")))
        assert isinstance(store, LocalStore)

        def raw_put(key, data):
            (store.root / key).parent.mkdir(parents=True, exist_ok=True)
            (store.root / key).write_bytes(data)

        def fail_writes(mp):
            def boom(*a, **k):
                raise OSError(28, "No space left on device")

            mp.setattr(os, "link", boom)
            mp.setattr(os, "replace", boom)

        def leftovers():
            return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*")
                          if p.is_file())

        return Backend(store, raw_put, lambda k: (store.root / k).read_bytes(), fail_writes,
                       leftovers)

    endpoint = request.getfixturevalue("moto_endpoint")
    prefix = f"t-{uuid.uuid4().hex[:12]}"  # one prefix per test: no cleanup needed
    store = open_store(_s3_cfg(endpoint, f"s3://{BUCKET}/{prefix}/"))
    assert isinstance(store, S3Store) and store.prefix == prefix
    raw = make_s3_client(_s3_cfg(endpoint))

    def fail_writes(mp):
        def drop(**kwargs):
            raise ConnectionClosedError(endpoint_url=endpoint)

        store.client.meta.events.register_first("before-send.s3.PutObject", drop)

    def leftovers():
        pages = raw.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return sorted(o["Key"] for p in pages for o in p.get("Contents", []))

    return Backend(
        store,
        lambda k, d: raw.put_object(Bucket=BUCKET, Key=f"{prefix}/{k}", Body=d),
        lambda k: raw.get_object(Bucket=BUCKET, Key=f"{prefix}/{k}")["Body"].read(),
        fail_writes,
        leftovers,
    )


# --- behaviour shared by both backends -------------------------------------------------------


def test_round_trip_and_uri(backend):
    s = backend.store
    payload = bytes(range(256)) * 3
    assert s.put_bytes("shards/a.bin", payload) is True
    assert s.get_bytes("shards/a.bin") == payload
    assert s.exists("shards/a.bin") and not s.exists("shards/b.bin")
    raw = backend.raw_get("shards/a.bin")
    assert raw == b"MSTR1\n" + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload
    assert s.uri("shards/a.bin").endswith("/shards/a.bin")
    assert s.uri("shards/a.bin").startswith("file:///" if isinstance(s, LocalStore) else "s3://")
    with pytest.raises(MissingObjectError, match="shards/b.bin"):
        s.get_bytes("shards/b.bin")
    assert s.get_or_none("shards/b.bin") is None
    s.delete("shards/a.bin")
    s.delete("shards/a.bin")  # idempotent
    assert not s.exists("shards/a.bin") and backend.leftovers() == []


def test_empty_payload(backend):
    assert backend.store.put_bytes("e", b"")
    assert backend.store.get_bytes("e") == b""


def test_if_absent(backend):
    s = backend.store
    assert s.put_bytes("k.json", b"first") is True
    assert s.put_bytes("k.json", b"second") is False
    assert s.get_bytes("k.json") == b"first"
    assert s.put_bytes("k.json", b"third", if_absent=False) is True
    assert s.get_bytes("k.json") == b"third"


def test_list_by_prefix(backend):
    s = backend.store
    for key in ["tables/aa.json", "tables/ab.json", "shards/aa.jsonl", "top"]:
        s.put_bytes(key, b"x")
    assert s.list() == ["shards/aa.jsonl", "tables/aa.json", "tables/ab.json", "top"]
    assert s.list("tables/") == ["tables/aa.json", "tables/ab.json"]
    assert s.list("tables/ab") == ["tables/ab.json"]
    assert s.list("t") == ["tables/aa.json", "tables/ab.json", "top"]
    assert s.list("nothing/") == []


def _flip(b: bytes) -> bytes:
    return b[:-1] + bytes([b[-1] ^ 0x01])


CORRUPTIONS = {
    "flipped payload byte": _flip,
    "truncated payload": lambda b: b[:-3],
    "truncated header": lambda b: b[:20],
    "flipped checksum": lambda b: b[:10] + (b"0" if b[10:11] != b"0" else b"1") + b[11:],
    "no frame": lambda b: b'{"plain": "json"}',
    "empty": lambda b: b"",
}


@pytest.mark.parametrize("how", list(CORRUPTIONS))
def test_corruption_detected(backend, how):
    s = backend.store
    s.put_bytes("tables/x.json", b'{"answer": 42}')
    backend.raw_put("tables/x.json", CORRUPTIONS[how](backend.raw_get("tables/x.json")))
    with pytest.raises(CorruptObjectError, match="tables/x.json") as info:
        s.get_bytes("tables/x.json")
    assert isinstance(info.value, CacheError) and isinstance(info.value, ValueError)


def test_get_or_none_deletes_corrupt(backend, caplog):
    s = backend.store
    put_json(s, "tables/x.json", {"a": 1})
    backend.raw_put("tables/x.json", _flip(backend.raw_get("tables/x.json")))
    with caplog.at_level(logging.WARNING, logger="masters.cache"):
        assert s.get_or_none("tables/x.json") is None
    assert "tables/x.json" in caplog.text and "corrupt" in caplog.text
    assert not s.exists("tables/x.json")
    assert put_json(s, "tables/x.json", {"a": 1}) is True  # regenerated, if_absent passes
    assert get_json(s, "tables/x.json") == {"a": 1}


@pytest.mark.parametrize(
    "key", ["../x", "/abs", "a//b", "a\\b", "a b", "", "a/./b", "a/../../b", "tables/", "é", "a:b"]
)
def test_invalid_keys_rejected(backend, key):
    s = backend.store
    ops = [
        lambda: s.put_bytes(key, b"x"),
        lambda: s.get_bytes(key),
        lambda: s.get_or_none(key),
        lambda: s.exists(key),
        lambda: s.delete(key),
    ]
    if key:  # uri("") is the store's own root
        ops.append(lambda: s.uri(key))
    for op in ops:
        with pytest.raises(CacheError, match="invalid cache key") as info:
            op()
        assert repr(key) in str(info.value)
    with pytest.raises(CacheError):
        s.list("../")
    assert backend.leftovers() == []


def test_failed_write_leaves_nothing(backend, monkeypatch):
    s = backend.store
    backend.fail_writes(monkeypatch)
    for if_absent in (True, False):
        with pytest.raises(CacheError, match="shards/x.jsonl"):
            s.put_bytes("shards/x.jsonl", b"payload" * 1000, if_absent=if_absent)
    monkeypatch.undo()
    assert not s.exists("shards/x.jsonl") and s.list() == []
    assert [p for p in backend.leftovers() if "shards" in p] == []
    if isinstance(s, LocalStore):
        assert backend.leftovers() == []


def test_concurrent_if_absent_writers(backend):
    s = backend.store
    n = 8
    results: dict[int, bool] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def write(i: int) -> None:
        try:
            barrier.wait()
            results[i] = s.put_bytes("shards/race.jsonl", f"writer {i} ".encode() * 5000)
        except Exception as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    winners = [i for i, won in results.items() if won]
    assert len(winners) == 1, results
    assert s.get_bytes("shards/race.jsonl") == f"writer {winners[0]} ".encode() * 5000
    assert backend.leftovers() == [k for k in backend.leftovers() if k.endswith("race.jsonl")]
    assert len(backend.leftovers()) == 1


def test_json_helpers(backend):
    s = backend.store
    records = [{"id": 1, "answer": "Ünïcode ✓", "reward": 0.5}, {"id": 2, "nested": {"b": [1]}}]
    assert put_jsonl(s, "shards/r.jsonl", records) is True
    assert get_jsonl(s, "shards/r.jsonl") == records
    assert put_jsonl(s, "shards/empty.jsonl", []) is True
    assert get_jsonl(s, "shards/empty.jsonl") == []
    put_json(s, "tables/t.json", {"z": 1, "a": [1.5, None]})
    assert get_json(s, "tables/t.json") == {"z": 1, "a": [1.5, None]}
    s.put_bytes("bad.json", b"{not json")
    with pytest.raises(CacheError, match="bad.json"):
        get_json(s, "bad.json")


# --- content keys ----------------------------------------------------------------------------

PARTS = {"teacher": "mid", "ratio": 0.15, "question_ids": [3, 1, 2], "sampling": {"top_p": 0.9}}


def test_content_key_known_value():
    canonical = json.dumps({"format": cache.FORMAT_VERSION, "parts": PARTS},
                           sort_keys=True, separators=(",", ":"))
    expected = "shards/" + hashlib.sha256(canonical.encode()).hexdigest()[:32] + ".jsonl"
    assert content_key("shards", PARTS, ".jsonl") == expected
    # Same dict in another insertion order: same key.
    assert content_key("shards", dict(reversed(PARTS.items())), ".jsonl") == expected


def test_content_key_pinned_across_processes():
    # Pinned literal: a change here means every existing cache entry is orphaned.
    assert content_key("tables", {"a": 1}) == "tables/" + hashlib.sha256(
        b'{"format":1,"parts":{"a":1}}').hexdigest()[:32]


@pytest.mark.parametrize("change", [
    {"teacher": "large"}, {"ratio": 0.1}, {"question_ids": [1, 2, 3]},
    {"sampling": {"top_p": 0.95}}, {"extra": None},
])
def test_content_key_sensitive(change):
    assert content_key("shards", {**PARTS, **change}) != content_key("shards", PARTS)


def test_content_key_changes_with_format_version(monkeypatch):
    base = content_key("shards", PARTS)
    monkeypatch.setattr(cache, "FORMAT_VERSION", cache.FORMAT_VERSION + 1)
    assert content_key("shards", PARTS) != base


def test_content_key_rejects_non_json_and_bad_kind():
    with pytest.raises(CacheError, match="plain JSON"):
        content_key("shards", {"path": Path("/x")})
    with pytest.raises(CacheError, match="plain JSON"):
        content_key("shards", {"x": float("nan")})
    with pytest.raises(CacheError, match="invalid cache key"):
        content_key("../shards", {})


# --- local backend specifics -----------------------------------------------------------------


def test_local_root_created_and_file_uri(tmp_path):
    root = tmp_path / "deep" / "er" / "cache"
    store = open_store(StorageConfig(cache_uri=root.as_uri()))
    assert isinstance(store, LocalStore) and root.is_dir()
    assert store.uri("a/b.json") == (root / "a" / "b.json").as_uri()


@pytest.mark.parametrize("layout", ["root is a file", "parent is a file"])
def test_local_unwritable_root(tmp_path, layout):
    # Tests run as root here, so chmod cannot make a folder unwritable: a file in the way can.
    (tmp_path / "blocker").write_text("")
    root = tmp_path / "blocker" if layout == "root is a file" else tmp_path / "blocker" / "c"
    with pytest.raises(CacheError, match="storage.cache_uri") as info:
        open_store(StorageConfig(cache_uri=str(root)))
    assert str(root) in str(info.value)


# --- S3 connection errors: clear, fast, and never showing the secret -------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _assert_no_secret(exc: BaseException, caplog) -> None:
    ours = "".join(traceback.format_exception(exc)) + repr(exc)
    assert FAKE_SECRET not in ours and FAKE_KEY_ID not in ours
    # botocore's own DEBUG log shows the key id (in the Authorization header), never the secret.
    assert FAKE_SECRET not in caplog.text


def test_unknown_bucket(moto_endpoint, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(CacheError, match="storage.cache_uri") as info:
        open_store(_s3_cfg(moto_endpoint, "s3://no-such-bucket/p"))
    assert "'no-such-bucket'" in str(info.value)
    _assert_no_secret(info.value, caplog)


def test_unreachable_endpoint(caplog):
    caplog.set_level(logging.DEBUG)
    start = time.monotonic()
    with pytest.raises(CacheError, match="storage.endpoint_url") as info:
        open_store(_s3_cfg(f"http://127.0.0.1:{_free_port()}"))
    assert time.monotonic() - start < 15  # bounded retries, not botocore's default patience
    _assert_no_secret(info.value, caplog)


def test_half_configured_credentials():
    with pytest.raises(CacheError, match="storage.secret_access_key"):
        make_s3_client(StorageConfig(cache_uri="s3://abc", access_key_id=SecretStr("x")))


@pytest.fixture
def moto_auth(moto_endpoint):
    """Make moto check signatures against a fresh IAM user (moto's reset-auth API), then undo."""
    with moto_iam_user(moto_endpoint, "cache-", FAKE_KEY_ID, FAKE_SECRET) as key:
        yield key


def test_wrong_credentials(moto_endpoint, moto_auth, caplog):
    caplog.set_level(logging.DEBUG)
    good_id, good_secret = moto_auth
    # Control: moto really is checking now, and the real key pair passes.
    store = open_store(_s3_cfg(moto_endpoint, access_key_id=SecretStr(good_id),
                               secret_access_key=SecretStr(good_secret)))
    assert store.put_bytes(f"auth/{uuid.uuid4().hex}", b"ok")
    for key_id in (FAKE_KEY_ID, good_id):  # unknown key id; known id with a wrong secret
        with pytest.raises(CacheError, match="storage.access_key_id") as info:
            open_store(_s3_cfg(moto_endpoint, access_key_id=SecretStr(key_id)))
        assert "403" in str(info.value)
        _assert_no_secret(info.value, caplog)
    # The same mapping holds past open_store, on an object operation.
    store.client = make_s3_client(_s3_cfg(moto_endpoint))
    with pytest.raises(CacheError, match="storage.access_key_id") as info:
        store.get_bytes("auth/x")
    assert "InvalidAccessKeyId" in str(info.value)
    _assert_no_secret(info.value, caplog)


def test_s3_without_conditional_writes(moto_endpoint, caplog):
    """Servers that answer 501 to If-None-Match get check-then-put, and are asked only once."""
    from botocore.awsrequest import AWSResponse

    store = open_store(_s3_cfg(moto_endpoint, f"s3://{BUCKET}/t-{uuid.uuid4().hex[:12]}"))
    refused: list[str] = []

    class Body:
        def stream(self):
            yield b"<Error><Code>NotImplemented</Code><Message>no</Message></Error>"

    def no_conditionals(request, **kwargs):
        if "If-None-Match" in request.headers:
            refused.append(request.url)
            return AWSResponse(request.url, 501, {}, Body())
        return None

    store.client.meta.events.register_first("before-send.s3.PutObject", no_conditionals)
    with caplog.at_level(logging.WARNING, logger="masters.cache"):
        assert store.put_bytes("k", b"one") is True
        assert store.put_bytes("k", b"two") is False
    assert store.get_bytes("k") == b"one" and len(refused) == 1
    assert "conditional writes" in caplog.text
