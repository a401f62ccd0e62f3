"""The catalogue of bad inputs: each stops `masters distill` with a message naming the field,
row or path, before anything is cached or registered (docs/reliability.md).

Config problems stop the CLI (exit code 2) before a flow starts. Everything else (storage,
checkpoints, data) fails the flow's first task, `check-inputs`, so the flow run ends Failed
with the message and the cache and the registry stay empty.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import datasets
import numpy as np
import pytest
from conftest import moto_iam_user
from PIL import Image

from flows import cli
from masters import synthetic
from masters.config import load_config

from .helpers import SMOKE, flags, overrides, versions

# ---- config: the CLI refuses before any flow starts ---------------------------------------

CONFIG_CASES = {
    "type: text for an integer": (["generation.max_new_tokens=abc"],
                                  "generation.max_new_tokens"),
    "range: mask ratio >= 1": (["teachers=[{name: t, path: TEACHER, r_max: 1.5}]"],
                               "teachers.0.r_max"),
    "range: negative learning rate": (["training.lr=-1"], "training.lr"),
    "unknown key": (["generation.nonsense=1"], "generation.nonsense"),
    "contradiction: r_max not a multiple of step": (
        ["teachers=[{name: t, path: TEACHER, r_max: 0.25, step: 0.1}]"],
        "not a multiple of step 0.1"),
    "contradiction: datasets source without a path": (
        ["data.source=datasets", "data.path=null"], "data.path is required"),
    "contradiction: two teachers with one name": (
        ["teachers=[{name: a, path: x}, {name: a, path: y}]"], "teacher names must be unique"),
    "malformed --set": (["generation.top_k"], "--set expects key=value"),
    "storage: unsupported cache URI": (["storage.cache_uri=gs://bucket/x"],
                                       "unsupported cache URI"),
    "storage: malformed S3 URI": (["storage.cache_uri=s3://"], "malformed S3 URI"),
    "storage: endpoint without scheme": (["storage.endpoint_url=minio:9000"],
                                         "storage.endpoint_url"),
    "tracking: unsupported URI": (["tracking.tracking_uri=ftp://host/x"],
                                  "unsupported MLflow tracking URI"),
}


def _cli(args: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = cli.main(args)
    return rc, err.getvalue()


def _assert_nothing_written(root: Path) -> None:
    assert not (root / "cache").exists() and not (root / "mlflow.db").exists()
    assert not (root / "train").exists()


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config(case, tmp_path, rel_models):
    extra, expected = CONFIG_CASES[case]
    extra = [e.replace("TEACHER", str(rel_models["teacher"])) for e in extra]
    rc, err = _cli(["distill", "--config", str(SMOKE),
                    *flags(overrides(tmp_path, rel_models) + extra)])
    assert rc == 2 and expected in err, err
    _assert_nothing_written(tmp_path)


def test_bad_config_file_and_env(tmp_path, rel_models, monkeypatch):
    """A typo'd section in the YAML file, and an out-of-range value from the environment."""
    items = flags(overrides(tmp_path, rel_models))
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMOKE.read_text() + "trainig:\n  lr: 0.1\n")
    rc, err = _cli(["distill", "--config", str(bad), *items])
    assert rc == 2 and "trainig" in err, err
    monkeypatch.setenv("MASTERS_GENERATION__TEMPERATURE", "-1")
    rc, err = _cli(["distill", "--config", str(SMOKE), *items])
    assert rc == 2 and "generation.temperature" in err, err
    _assert_nothing_written(tmp_path)


# ---- storage, checkpoints, data: the flow fails at check-inputs ---------------------------


def _png(array, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rows(split: str, n: int) -> list[dict]:
    ds = synthetic.build_split(0, split, n)
    return [{"id": r["id"], "image": {"bytes": _png(np.asarray(r["image"])), "path": None},
             "question": r["question"], "answer": r["answer"], "task_type": r["task_type"]}
            for r in ds]


def write_dataset(folder: Path, train: list[dict], test: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train), ("test", test)):
        if rows is None:
            continue
        features = datasets.Features({
            "id": datasets.Value("string"), "image": datasets.Image(),
            "question": datasets.Value("string"), "answer": datasets.Value("string"),
            "task_type": datasets.Value("string")})
        if not rows:
            ds = datasets.Dataset.from_dict({k: [] for k in features}, features=features)
        elif set(rows[0]) != set(features):  # a case that drops or renames columns
            ds = datasets.Dataset.from_list(rows)
        else:
            ds = datasets.Dataset.from_list(rows, features=features)
        ds.to_parquet(folder / f"{split}.parquet")
    return folder


@dataclass
class Case:
    expected: list[str]  # fragments of the message (field / row / path)
    extra: list[str] = field(default_factory=list)  # --set items
    env: dict[str, str] = field(default_factory=dict)
    s3: str | None = None  # "prefix" the case writes under, checked empty after


def _data_case(tmp_path, edit_train=None, edit_test=None, n_train=8, n_test=14) -> list[str]:
    train, test = _rows("train", n_train), _rows("test", n_test)
    if edit_train:
        train = edit_train(train)
    if edit_test:
        test = edit_test(test)
    folder = write_dataset(tmp_path / "data", train, test)
    return ["data.source=datasets", f"data.path={folder}"]


def _set(i, **values):
    def edit(rows):
        rows[i] = {**rows[i], **values}
        return rows
    return edit


def _image(i, data: bytes | None = None, path: str | None = None):
    return _set(i, image={"bytes": data, "path": path})


def _copy_model(src: str, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def case_data(name: str, tmp_path: Path, models: dict, monkeypatch) -> Case:
    png = _rows("train", 1)[0]["image"]["bytes"]
    if name == "missing column":
        def drop(rows):
            return [{k: v for k, v in r.items() if k != "answer"} for r in rows]
        return Case(["split 'train'", "answer -> 'answer'"], _data_case(tmp_path, drop))
    if name == "empty split":
        extra = _data_case(tmp_path, edit_test=lambda rows: [])
        return Case(["split 'test'", "is empty"], extra)
    if name == "split file missing":
        extra = _data_case(tmp_path)
        (tmp_path / "data" / "test.parquet").unlink()
        return Case(["no test*.parquet", str(tmp_path / "data")], extra)
    if name == "data path missing":
        return Case(["data.path", "nowhere"],
                    ["data.source=datasets", f"data.path={tmp_path / 'nowhere'}"])
    if name == "corrupt image":
        return Case(["row 3 of split 'train'", "unreadable image"],
                    _data_case(tmp_path, _image(3, png[:60])))
    if name == "image file missing":  # JSON lines naming image files; one file is gone
        folder = tmp_path / "data"
        folder.mkdir()
        for split, n in (("train", 8), ("test", 14)):
            rows = []
            for i, r in enumerate(_rows(split, n)):
                (folder / f"{split}-{i}.png").write_bytes(r["image"]["bytes"])
                rows.append({**r, "image": str(folder / f"{split}-{i}.png")})
            (folder / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        (folder / "test-2.png").unlink()
        return Case(["row 2 of split 'test'", "test-2.png"],
                    ["data.source=datasets", f"data.path={folder}"])
    if name == "truncated JPEG (passes verify, fails decode)":
        jpeg = _png(synthetic.make_sample(0, "train", 0).image, "JPEG", quality=90)
        return Case(["row 5 of split 'train'", "unreadable image"],
                    _data_case(tmp_path, _image(5, jpeg[: len(jpeg) // 2])))
    if name == "decompression bomb":
        extra = _data_case(tmp_path)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64x64 > 2 x 1000 pixels
        return Case(["row 0 of split 'train'", "decompression bomb"], extra)
    if name == "empty answer":
        return Case(["row 4 of split 'train'", "'answer' is empty"],
                    _data_case(tmp_path, _set(4, answer="  ")))
    if name == "question not text":
        return Case(["row 6 of split 'train'", "'question'"],
                    _data_case(tmp_path, _set(6, question=None)))
    if name == "duplicate ids":
        def dup(rows):
            rows[7]["id"] = rows[2]["id"]
            return rows
        return Case(["row 7 of split 'train'", "duplicate id"], _data_case(tmp_path, dup))
    if name == "training split smaller than the schedule":
        return Case(["data.train_size", "cannot fill 2 stages"], ["data.train_size=1"])
    raise AssertionError(name)


def case_model(name: str, tmp_path: Path, models: dict, monkeypatch) -> Case:
    student, teacher = models["student"], models["teacher"]
    if name == "student path missing":
        return Case(["student.path", "does not exist"], [f"student.path={tmp_path / 'nope'}"])
    if name == "unknown embedded model":
        return Case(["student.path", "no embedded checkpoint 'huge'"],
                    ["student.path=embedded:huge"])
    if name == "no config.json":
        bad = _copy_model(student, tmp_path / "noconfig")
        (bad / "config.json").unlink()
        return Case(["student.path", "no config.json"], [f"student.path={bad}"])
    if name == "pickled weights only (no safetensors)":
        bad = _copy_model(teacher, tmp_path / "pickled")
        (bad / "model.safetensors").rename(bad / "pytorch_model.bin")
        return Case(["teachers.0.path", "no *.safetensors"],
                    [f"teachers=[{{name: t, path: {bad}, r_max: 0.05}}]"])
    if name == "truncated safetensors":
        bad = _copy_model(teacher, tmp_path / "truncated")
        weights = bad / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-1000])
        return Case(["teachers.0.path", "model.safetensors", "not a complete safetensors"],
                    [f"teachers=[{{name: t, path: {bad}, r_max: 0.05}}]"])
    if name == "teacher and student vocabularies differ":
        from transformers import AutoProcessor

        bad = _copy_model(teacher, tmp_path / "othervocab")
        processor = AutoProcessor.from_pretrained(bad)
        processor.tokenizer.add_tokens(["zebra"])
        processor.save_pretrained(bad)
        return Case(["teachers.0.path", "student.path", "tokenizers differ"],
                    [f"teachers=[{{name: t, path: {bad}, r_max: 0.05}}]"])
    if name == "checkpoint needs remote code, trust_remote_code off":
        bad = _copy_model(student, tmp_path / "remote")
        cfg = json.loads((bad / "config.json").read_text())
        cfg["auto_map"] = {"AutoModelForImageTextToText": "modeling_evil.Evil"}
        (bad / "config.json").write_text(json.dumps(cfg))
        return Case(["student.path", "trust_remote_code is off"], [f"student.path={bad}"])
    if name == "processor without a chat template":
        bad = _copy_model(teacher, tmp_path / "notemplate")
        for f in bad.glob("*chat_template*"):
            f.unlink()
        for f in bad.glob("*_config.json"):
            cfg = json.loads(f.read_text())
            if cfg.pop("chat_template", None) is not None:
                f.write_text(json.dumps(cfg))
        return Case(["teachers.0.path", "no chat template", "teachers.0", "chat_template"],
                    [f"teachers=[{{name: t, path: {bad}, r_max: 0.05}}]"])
    raise AssertionError(name)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def case_storage(name: str, tmp_path: Path, models: dict, monkeypatch) -> Case:
    if name == "read-only cache folder":
        if os.geteuid() == 0:  # root writes through chmod: use a folder no one may write
            if not Path("/sys/fs").is_dir():
                pytest.skip("no read-only folder to try as root")
            folder = "/sys/fs"
        else:
            folder = tmp_path / "ro"
            folder.mkdir(mode=0o500)
        return Case(["storage.cache_uri", str(folder), "not a writable directory"],
                    [f"storage.cache_uri={folder}"])
    if name == "cache path is a file":
        (tmp_path / "blocker").write_text("")
        return Case(["storage.cache_uri", "blocker"],
                    [f"storage.cache_uri={tmp_path / 'blocker' / 'cache'}"])
    if name == "S3: one key of the pair":
        return Case(["storage.secret_access_key is not set"],
                    ["storage.cache_uri=s3://abc/p"],
                    {"MASTERS_STORAGE__ACCESS_KEY_ID": "AKIAFAKEFAKEFAKE0009"})
    if name == "S3: endpoint unreachable":
        return Case(["storage.endpoint_url", f"127.0.0.1:{(port := _free_port())}"],
                    ["storage.cache_uri=s3://masters-gen/p",
                     f"storage.endpoint_url=http://127.0.0.1:{port}"], _fake_keys())
    raise AssertionError(name)


def _fake_keys(key_id="AKIAFAKEFAKEFAKE0002", secret="fake-secret") -> dict[str, str]:
    return {"MASTERS_STORAGE__ACCESS_KEY_ID": key_id,
            "MASTERS_STORAGE__SECRET_ACCESS_KEY": secret}


FLOW_CASES = {
    **{f"data: {n}": case_data for n in (
        "missing column", "empty split", "split file missing", "data path missing",
        "corrupt image", "image file missing", "truncated JPEG (passes verify, fails decode)",
        "decompression bomb", "empty answer", "question not text",
        "duplicate ids", "training split smaller than the schedule")},
    **{f"model: {n}": case_model for n in (
        "student path missing", "unknown embedded model", "no config.json",
        "pickled weights only (no safetensors)", "truncated safetensors",
        "teacher and student vocabularies differ",
        "checkpoint needs remote code, trust_remote_code off",
        "processor without a chat template")},
    **{f"storage: {n}": case_storage for n in (
        "read-only cache folder", "cache path is a file", "S3: one key of the pair",
        "S3: endpoint unreachable")},
}


@pytest.fixture(scope="module")
def tracking(tmp_path_factory) -> str:
    """One MLflow store for the module: a fresh sqlite store costs seconds of migrations."""
    return f"sqlite:///{tmp_path_factory.mktemp('bad-inputs') / 'mlflow.db'}"


def run_flow(tmp_path: Path, models: dict, extra: list[str], tracking: str
             ) -> tuple[Any, str]:
    """The distill flow in this process; (final state, its error message)."""
    from flows.distill import distill_flow

    cfg = load_config(SMOKE, [*overrides(tmp_path, models), f"tracking.tracking_uri={tracking}",
                              *extra])
    with contextlib.redirect_stdout(io.StringIO()):
        state = distill_flow(config=cfg.public_dict(), return_state=True)
    return state, str(state.result(raise_on_failure=False))


def _check_failed_clean(state, message: str, expected: list[str], tmp_path: Path,
                        tracking: str) -> None:
    assert state.is_failed(), message
    for fragment in expected:
        assert fragment in message, (fragment, message)
    cache = tmp_path / "cache"
    assert not cache.exists() or not [p for p in cache.rglob("*") if p.is_file()]
    assert not (tmp_path / "train").exists()
    assert versions(tracking) == []


@pytest.mark.parametrize("case", list(FLOW_CASES))
def test_bad_input_fails_before_any_work(case, prefect_api, tmp_path, rel_models, monkeypatch,
                                        tracking):
    kind, name = case.split(": ", 1)
    spec = FLOW_CASES[case](name, tmp_path, rel_models, monkeypatch)
    for k, v in spec.env.items():
        monkeypatch.setenv(k, v)
    state, message = run_flow(tmp_path, rel_models, spec.extra, tracking)
    _check_failed_clean(state, message, spec.expected, tmp_path, tracking)


# ---- S3 problems that need the S3 server --------------------------------------------------


@pytest.fixture
def moto_auth(moto_s3):
    """moto checking signatures (its reset-auth API) against one IAM user, then back off."""
    endpoint, _ = moto_s3
    with moto_iam_user(endpoint, "rel-", "AKIAFAKEFAKEFAKE0002", "fake-secret") as key:
        yield key


def _objects(endpoint: str, bucket: str, prefix: str, keys: tuple[str, str]) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id=keys[0], aws_secret_access_key=keys[1])
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get(
        "Contents", [])]


def test_s3_missing_bucket(prefect_api, moto_s3, tmp_path, rel_models, monkeypatch, tracking):
    endpoint, _ = moto_s3
    for k, v in _fake_keys().items():
        monkeypatch.setenv(k, v)
    state, message = run_flow(tmp_path, rel_models, [
        "storage.cache_uri=s3://no-such-bucket/p", f"storage.endpoint_url={endpoint}"],
        tracking)
    _check_failed_clean(state, message, ["storage.cache_uri", "'no-such-bucket'",
                                         "does not exist"], tmp_path, tracking)


@pytest.mark.parametrize("which", ["unknown key id", "wrong secret"])
def test_s3_wrong_credentials(which, prefect_api, moto_s3, moto_auth, tmp_path, rel_models,
                              monkeypatch, tracking):
    endpoint, bucket = moto_s3
    good_id, _ = moto_auth
    key_id = "AKIAFAKEFAKEFAKE0003" if which == "unknown key id" else good_id
    for k, v in _fake_keys(key_id, "not-the-secret").items():
        monkeypatch.setenv(k, v)
    prefix = f"bad-creds-{uuid.uuid4().hex[:8]}"
    state, message = run_flow(tmp_path, rel_models, [
        f"storage.cache_uri=s3://{bucket}/{prefix}", f"storage.endpoint_url={endpoint}"],
        tracking)
    _check_failed_clean(state, message, ["storage.access_key_id / storage.secret_access_key",
                                         "credentials rejected"], tmp_path, tracking)
    assert "not-the-secret" not in message
    assert _objects(endpoint, bucket, prefix, moto_auth) == []


def test_mlflow_unreachable_before_the_run(prefect_api, tmp_path, rel_models, monkeypatch):
    """Nothing starts when the tracking server is down: the flow's first call fails."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    url = f"http://127.0.0.1:{_free_port()}"
    state, message = run_flow(tmp_path, rel_models, [], url)
    assert state.is_failed() and url in message, message
    assert not (tmp_path / "cache").exists() and not (tmp_path / "train").exists()
