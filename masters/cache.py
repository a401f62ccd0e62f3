"""Content-addressed storage for the response cache and other pipeline artefacts.

One `Store` interface, two backends: a local folder and an S3 bucket (AWS, MinIO, Ceph, moto).
`open_store(cfg.storage)` picks one from `storage.cache_uri` and fails fast, naming the setting
to fix, when the bucket, endpoint or credentials are wrong.

Every object is one framed blob, `MSTR1\\n<sha256 hex of payload>\\n<payload>`, so the
checksum travels with the bytes it covers: a write is a single atomic rename / PUT, and a
truncated or bit-flipped object is caught on read (`CorruptObjectError`). `get_or_none`
treats a corrupt object as a miss and deletes it, so the pipeline regenerates it.

Keys are relative POSIX names from a small alphabet (`tables/<hash>.json`); anything else is
refused, so a dataset id or model name can never address a file outside the cache root.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
)

from masters.config import StorageConfig

log = logging.getLogger("masters.cache")

# Bump when the meaning of cached content changes (prompt format, sampling code...): every
# content key changes with it, so stale entries are never reused.
FORMAT_VERSION = 1
MAGIC = b"MSTR1\n"
_HEADER_LEN = len(MAGIC) + 64 + 1

S3_MAX_RETRIES = 2  # botocore's "max_attempts" counts retries after the first try
S3_CONNECT_TIMEOUT = 5.0
S3_READ_TIMEOUT = 60.0

_KEY_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._/-")
# Temp files carry a character keys may not contain, so no key can ever name one.
_TMP_MARK = "~"


class CacheError(ValueError):
    """A cache key, object or backend problem; the message names the key, URI or setting."""


class CorruptObjectError(CacheError):
    """The stored bytes fail the frame or checksum test (truncated, edited, not ours)."""


class TransientStorageError(CacheError):
    """A storage failure that may pass (5xx, throttling, dropped connection): worth a retry."""


def is_transient(exc: BaseException) -> bool:
    """Whether an orchestrator should retry after `exc` (config and data errors never)."""
    return isinstance(exc, TransientStorageError)


_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                    "InternalError", "ServiceUnavailable", "RequestTimeTooSkewed"}


class MissingObjectError(CacheError):
    """No object under that key."""


def validate_key(key: str) -> str:
    if not isinstance(key, str) or not key:
        raise CacheError(f"invalid cache key {key!r}: must be a non-empty string")
    if "\\" in key:
        raise CacheError(f"invalid cache key {key!r}: backslashes are not allowed, use '/'")
    if key.startswith("/"):
        raise CacheError(f"invalid cache key {key!r}: must be relative, not absolute")
    bad = sorted(set(key) - _KEY_ALPHABET)
    if bad:
        raise CacheError(
            f"invalid cache key {key!r}: characters {''.join(bad)!r} are not allowed "
            "(use A-Z a-z 0-9 . _ - /)"
        )
    for segment in key.split("/"):
        if segment == "":
            raise CacheError(f"invalid cache key {key!r}: empty path segment")
        if segment in (".", ".."):
            raise CacheError(f"invalid cache key {key!r}: '.' and '..' segments are not allowed")
    return key


def _validate_prefix(prefix: str) -> str:
    if prefix:
        validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def frame(payload: bytes) -> bytes:
    return MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def unframe(blob: bytes, where: str) -> bytes:
    if len(blob) < _HEADER_LEN or not blob.startswith(MAGIC) or blob[_HEADER_LEN - 1] != 0x0A:
        raise CorruptObjectError(f"corrupt cache object {where}: missing or truncated header")
    expected = blob[len(MAGIC) : _HEADER_LEN - 1].decode("ascii", "replace")
    payload = blob[_HEADER_LEN:]
    if hashlib.sha256(payload).hexdigest() != expected:
        raise CorruptObjectError(
            f"corrupt cache object {where}: sha256 mismatch ({len(payload)} payload bytes)"
        )
    return payload


class Store(ABC):
    """Keyed, checksummed, write-once-friendly blob storage."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = True) -> bool:
        """Store `data`; False (and nothing written) when `if_absent` and the key exists."""

    @abstractmethod
    def _get_raw(self, key: str) -> bytes:
        """The framed object; MissingObjectError when absent."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; a missing key is not an error."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys starting with `prefix` (a plain string prefix, not only folders)."""

    @abstractmethod
    def uri(self, key: str = "") -> str: ...

    def get_bytes(self, key: str) -> bytes:
        return unframe(self._get_raw(validate_key(key)), self.uri(key))

    def get_or_none(self, key: str) -> bytes | None:
        """The payload, or None when missing or corrupt (a corrupt object is deleted)."""
        try:
            return self.get_bytes(key)
        except MissingObjectError:
            return None
        except CorruptObjectError as exc:
            log.warning("%s; deleting it so it is regenerated", exc)
            self.delete(key)
            return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri()!r})"


class LocalStore(Store):
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).expanduser().absolute()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            # Probe now rather than at the first write, hours into a run.
            probe = self.root / f".probe{_TMP_MARK}{secrets.token_hex(8)}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise CacheError(
                f"storage.cache_uri: cache folder {str(self.root)!r} is not a writable "
                f"directory ({exc.strerror or exc})"
            ) from None

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def uri(self, key: str = "") -> str:
        return (self._path(key) if key else self.root).as_uri()

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = True) -> bool:
        path = self._path(key)
        if if_absent and path.exists():
            return False
        tmp = path.with_name(f"{path.name}{_TMP_MARK}{secrets.token_hex(8)}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "xb") as f:
                f.write(frame(bytes(data)))
                f.flush()
                os.fsync(f.fileno())
            if if_absent:
                if not _link_if_absent(tmp, path):
                    return False
            else:
                os.replace(tmp, path)
            _fsync_dir(path.parent)
            return True
        except OSError as exc:
            raise CacheError(
                f"storage.cache_uri: cannot write {str(path)!r} ({exc.strerror or exc})"
            ) from exc
        finally:
            tmp.unlink(missing_ok=True)

    def _get_raw(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise MissingObjectError(f"no cache object {path.as_uri()}") from None
        except OSError as exc:
            raise CacheError(f"cannot read {str(path)!r} ({exc.strerror or exc})") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise CacheError(f"cannot delete {str(path)!r} ({exc.strerror or exc})") from exc

    def list(self, prefix: str = "") -> list[str]:
        _validate_prefix(prefix)
        folder = self.root.joinpath(*prefix.rpartition("/")[0].split("/")) if prefix else self.root
        keys = []
        for dirpath, _dirs, files in os.walk(folder):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in files:
                key = name if rel == "." else f"{rel}/{name}"
                if _TMP_MARK not in key and key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)


def _link_if_absent(tmp: Path, path: Path) -> bool:
    """Publish `tmp` as `path` unless it exists: a hard link fails atomically if it does."""
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        # Some filesystems (SMB, some FUSE mounts) have no hard links: check, then rename.
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        if path.exists():
            return False
        os.replace(tmp, path)
        return True


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not supported everywhere; the file itself is already synced
    finally:
        os.close(fd)


def _error_code(exc: ClientError) -> tuple[str, int | None]:
    response = exc.response or {}
    code = str(response.get("Error", {}).get("Code", ""))
    return code, response.get("ResponseMetadata", {}).get("HTTPStatusCode")


_CREDENTIAL_CODES = {
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken",
    "ExpiredToken", "InvalidClientTokenId", "403",
}


@contextmanager
def _s3_errors(op: str, target: str, endpoint_url: str | None) -> Iterator[None]:
    """Turn botocore exceptions into CacheErrors that name the setting to fix.

    Messages are built from error codes, the endpoint and the URI only, never from the
    request, so neither key of the credential pair can leak into a log.
    """
    endpoint = endpoint_url or "AWS S3 (default endpoint)"
    try:
        yield
    except (EndpointConnectionError, ConnectTimeoutError) as exc:
        raise CacheError(
            f"storage.endpoint_url: cannot reach S3 endpoint {endpoint} "
            f"({type(exc).__name__}) while trying to {op} {target}"
        ) from None
    except (NoCredentialsError, PartialCredentialsError):
        raise CacheError(
            "storage.access_key_id / storage.secret_access_key: no S3 credentials found "
            f"(set both, or configure boto3's default chain) for {target}"
        ) from None
    except ClientError as exc:
        code, status = _error_code(exc)
        if code in _CREDENTIAL_CODES or status == 403:
            raise CacheError(
                f"storage.access_key_id / storage.secret_access_key: credentials rejected by "
                f"{endpoint} ({code or status}) while trying to {op} {target}; check the key "
                "pair and its permissions on the bucket"
            ) from None
        if code == "NoSuchBucket":
            raise CacheError(
                f"storage.cache_uri: the bucket of {target} does not exist at {endpoint}"
            ) from None
        error = (TransientStorageError if code in _TRANSIENT_CODES or (status or 0) >= 500
                 else CacheError)
        raise error(
            f"S3 {op} {target} failed: {code or status} (endpoint {endpoint})"
        ) from None
    except BotoCoreError as exc:
        raise TransientStorageError(
            f"S3 {op} {target} failed: {type(exc).__name__} (endpoint {endpoint})"
        ) from None


class S3Store(Store):
    def __init__(self, bucket: str, prefix: str, client: Any, *, endpoint_url: str | None = None):
        self.bucket = bucket
        self.prefix = _validate_prefix(prefix.strip("/"))
        self.client = client
        self.endpoint_url = endpoint_url
        self._conditional_put = True  # cleared when the server answers 501 to If-None-Match

    def _name(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{self._name(key) if key else self.prefix}"

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = True) -> bool:
        request = {"Bucket": self.bucket, "Key": self._name(key), "Body": frame(bytes(data))}
        with _s3_errors("put", self.uri(key), self.endpoint_url):
            if if_absent and self._conditional_put:
                for attempt in range(3):
                    try:
                        self.client.put_object(**request, IfNoneMatch="*")
                        return True
                    except ClientError as exc:
                        code, status = _error_code(exc)
                        if code == "PreconditionFailed" or status == 412:
                            return False
                        if code == "ConditionalRequestConflict" and attempt < 2:
                            time.sleep(0.1 * (attempt + 1))  # a concurrent write is landing
                            continue
                        if code != "NotImplemented" and status != 501:
                            raise
                        log.warning(
                            "S3 endpoint %s does not support conditional writes; falling back "
                            "to check-then-put (a concurrent writer may overwrite)",
                            self.endpoint_url or "(AWS)",
                        )
                        self._conditional_put = False
                        break
            if if_absent and self.exists(key):
                return False
            self.client.put_object(**request)
            return True

    def _get_raw(self, key: str) -> bytes:
        with _s3_errors("get", self.uri(key), self.endpoint_url):
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=self._name(key))
            except ClientError as exc:
                code, status = _error_code(exc)
                if code in ("NoSuchKey", "404") or status == 404:
                    raise MissingObjectError(f"no cache object {self.uri(key)}") from None
                raise
            return response["Body"].read()

    def exists(self, key: str) -> bool:
        with _s3_errors("head", self.uri(key), self.endpoint_url):
            try:
                self.client.head_object(Bucket=self.bucket, Key=self._name(key))
                return True
            except ClientError as exc:
                if _error_code(exc)[1] == 404:
                    return False
                raise

    def delete(self, key: str) -> None:
        with _s3_errors("delete", self.uri(key), self.endpoint_url):
            self.client.delete_object(Bucket=self.bucket, Key=self._name(key))

    def list(self, prefix: str = "") -> list[str]:
        _validate_prefix(prefix)
        base = f"{self.prefix}/" if self.prefix else ""
        keys = []
        with _s3_errors("list", self.uri(), self.endpoint_url):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base + prefix
            )
            for page in pages:
                keys.extend(obj["Key"][len(base) :] for obj in page.get("Contents", []))
        return sorted(keys)


def make_s3_client(cfg: StorageConfig) -> Any:
    key_id, secret = cfg.access_key_id, cfg.secret_access_key
    if (key_id is None) != (secret is None):
        missing = "storage.secret_access_key" if secret is None else "storage.access_key_id"
        raise CacheError(f"{missing} is not set: give both S3 keys or neither")
    session = boto3.session.Session(
        aws_access_key_id=key_id.get_secret_value() if key_id else None,
        aws_secret_access_key=secret.get_secret_value() if secret else None,
        region_name=cfg.region or "us-east-1",
    )
    config = Config(
        retries={"max_attempts": S3_MAX_RETRIES, "mode": "standard"},
        connect_timeout=S3_CONNECT_TIMEOUT,
        read_timeout=S3_READ_TIMEOUT,
        # Self-hosted endpoints (MinIO, Ceph, moto) rarely have wildcard DNS for buckets.
        s3={"addressing_style": "path"} if cfg.endpoint_url else None,
    )
    return session.client("s3", endpoint_url=cfg.endpoint_url, config=config)


def open_store(cfg: StorageConfig) -> Store:
    """The store for `cfg.cache_uri`, checked now: a bad setting fails here, not mid-run."""
    parsed = urlparse(cfg.cache_uri)
    if parsed.scheme in ("", "file"):
        return LocalStore(parsed.path if parsed.scheme == "file" else cfg.cache_uri)
    if parsed.scheme != "s3":
        raise CacheError(f"storage.cache_uri {cfg.cache_uri!r}: use a local path or s3://")
    bucket, prefix = parsed.netloc, parsed.path
    store = S3Store(bucket, prefix, make_s3_client(cfg), endpoint_url=cfg.endpoint_url)
    endpoint = cfg.endpoint_url or "AWS S3 (default endpoint)"
    with _s3_errors("open", f"s3://{bucket}", cfg.endpoint_url):
        try:
            store.client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            code, status = _error_code(exc)
            if code in ("NoSuchBucket", "404") or status == 404:
                raise CacheError(
                    f"storage.cache_uri {cfg.cache_uri!r}: bucket {bucket!r} does not exist "
                    f"at {endpoint}"
                ) from None
            raise
    return store


def content_key(kind: str, parts: dict[str, Any], ext: str = "") -> str:
    """`<kind>/<32 hex>` + ext, from a canonical JSON of `parts` and FORMAT_VERSION.

    `parts` must be plain JSON (no silent str() of objects: their repr may change between
    versions and quietly invalidate or, worse, alias cache entries).
    """
    try:
        canonical = json.dumps(
            {"format": FORMAT_VERSION, "parts": parts},
            sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False,
        )
    except (TypeError, ValueError) as exc:
        raise CacheError(f"content_key({kind!r}): parts are not plain JSON ({exc})") from None
    digest = hashlib.sha256(canonical.encode("ascii")).hexdigest()[:32]
    return validate_key(f"{kind}/{digest}{ext}")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def put_json(store: Store, key: str, obj: Any, *, if_absent: bool = True) -> bool:
    return store.put_bytes(key, _dumps(obj).encode("utf-8"), if_absent=if_absent)


def get_json(store: Store, key: str) -> Any:
    return _loads(store.get_bytes(key), store.uri(key))


def get_json_or_none(store: Store, key: str) -> Any:
    """The JSON at `key`, or None when it is missing or corrupt (a corrupt one is deleted)."""
    data = store.get_or_none(key)
    return None if data is None else _loads(data, store.uri(key))


def put_jsonl(
    store: Store, key: str, records: Iterable[dict[str, Any]], *, if_absent: bool = True
) -> bool:
    data = "".join(_dumps(r) + "\n" for r in records).encode("utf-8")
    return store.put_bytes(key, data, if_absent=if_absent)


def get_jsonl(store: Store, key: str) -> list[dict[str, Any]]:
    return _lines(store.get_bytes(key), store.uri(key))


def get_jsonl_or_none(store: Store, key: str) -> list[dict[str, Any]] | None:
    """The records at `key`, or None when missing or corrupt (a corrupt one is deleted)."""
    data = store.get_or_none(key)
    return None if data is None else _lines(data, store.uri(key))


def _lines(text: bytes, where: str) -> list[dict[str, Any]]:
    return [_loads(line, where) for line in text.splitlines() if line.strip()]


def _loads(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:  # checksum was fine, so the writer stored bad JSON
        raise CacheError(f"cache object {where} is not valid JSON ({exc})") from None
