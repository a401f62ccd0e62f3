"""Shared fixtures: isolated Prefect API, project-local state in tmp dirs, offline hub."""

from __future__ import annotations

import os
from contextlib import contextmanager

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def prefect_api():
    """A temporary Prefect API (real server process, throwaway database) for flow tests."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def smoke_overrides(tmp_path):
    """--set overrides that send every artefact of a smoke run to tmp_path."""
    return [
        f"bootstrap.out_dir={tmp_path / 'bootstrap'}",
        f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"tracking.artifact_location={tmp_path / 'mlartifacts'}",
        f"storage.cache_uri={tmp_path / 'cache'}",
    ]


@pytest.fixture(scope="session")
def moto_s3():
    """moto's S3 server over HTTP on 127.0.0.1 (real boto3 calls): (endpoint URL, bucket).

    Credentials are fake and unchecked; give each test its own prefix in the bucket.
    """
    import boto3
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        endpoint = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                     aws_access_key_id="AKIAFAKEFAKEFAKE0002",
                     aws_secret_access_key="fake-secret").create_bucket(Bucket="masters-gen")
        yield endpoint, "masters-gen"
        server.stop()


@contextmanager
def moto_iam_user(endpoint: str, prefix: str, admin_key_id: str, admin_secret: str):
    """moto checking signatures against a fresh IAM user (allowed all of S3), then back off.

    Creates the user (named `prefix` + a random suffix) with an access key, turns moto's
    signature checks on through its `/moto-api/reset-auth` API, yields (key id, secret), and
    restores the previous setting. The admin keys only have to pass while checks are off.
    """
    import json
    import urllib.request
    import uuid

    import boto3

    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id=admin_key_id, aws_secret_access_key=admin_secret)
    user = f"{prefix}{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }))
    key = iam.create_access_key(UserName=user)["AccessKey"]

    def set_auth(count: str) -> str:
        req = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=count.encode(),
                                     headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(req) as resp:
            return json.load(resp)["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]

    previous = set_auth("0")
    try:
        yield key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        set_auth(previous)


def corrupt_object(store, key: str) -> None:
    """Flip one payload byte of a cache object behind the store's back (local folder or S3):
    the stored checksum no longer matches, so the next read must detect it."""
    from masters import cache

    if isinstance(store, cache.LocalStore):
        path = store.root / key
        blob = bytearray(path.read_bytes())
        blob[-2] ^= 0x20
        path.write_bytes(bytes(blob))
        return
    name = f"{store.prefix}/{key}"
    blob = bytearray(store.client.get_object(Bucket=store.bucket, Key=name)["Body"].read())
    blob[-2] ^= 0x20
    store.client.put_object(Bucket=store.bucket, Key=name, Body=bytes(blob))


def save_smoke_models(folder, seeds: dict[str, int]) -> dict:
    """Random smoke-sized LLaVA checkpoints, saved like real ones: {name: path}."""
    from masters import embedded

    out = {}
    for name, seed in seeds.items():
        model, processor = embedded.build("smoke", seed=seed)
        out[name] = embedded.save(model, processor, folder / name)
    return out


@pytest.fixture
def checkpoints(tmp_path):
    """A smoke teacher and student."""
    return save_smoke_models(tmp_path, {"teacher": 1, "student": 2})


def smoke_distill_overrides(tmp_path, paths) -> list[str]:
    """The tiny distill run the flow tests share: 2 stages of 4 questions, 2 + 2 answers."""
    return [
        f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"tracking.artifact_location={tmp_path / 'mlartifacts'}",
        f"storage.cache_uri={tmp_path / 'cache'}",
        f"training.output_dir={tmp_path / 'train'}",
        f"teachers=[{{name: t, path: {paths['teacher']}, r_max: 0.05}}]",
        f"student.path={paths['student']}",
        "masking.sweep_ratios=[0]", "data.train_size=8", "data.test_size=14",
        "generation.shard_size=2", "generation.teacher_answers=2",
        "generation.student_answers=2", "generation.max_new_tokens=2",
        "training.lr=0.001", "training.batch_groups=2",
    ]
