"""Shared fixtures: isolated Prefect API, project-local state in tmp dirs, offline hub."""

from __future__ import annotations

import os

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
