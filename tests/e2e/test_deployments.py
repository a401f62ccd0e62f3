"""End to end against real servers: Prefect server + process worker, MLflow server, S3 (moto).

Runs alone with `pytest -m e2e`; part of `make test`. Everything runs as its own process on
127.0.0.1 with its own state under tmp, the way a user deploys: `prefect work-pool create`,
`prefect deploy --all --prefect-file deployments/prefect.yaml`, `prefect worker start`,
`prefect deployment run 'masters-distill/on-demand' --params ...`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from pathlib import Path

import boto3
import pytest
from conftest import save_smoke_models
from services import Services, free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
KEY_ID, SECRET = "AKIAE2EFAKEFAKE00001", "e2e-fake-secret-never-logged"
BUCKET = "masters-e2e"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Prefect server, MLflow server, moto S3, a process work pool with a worker, deployed."""
    tmp = tmp_path_factory.mktemp("e2e")
    prefect_port, mlflow_port, s3_port = free_port(), free_port(), free_port()
    api = f"http://127.0.0.1:{prefect_port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_",
                                                                      "MASTERS_", "AWS_"))}
    env.update(PREFECT_HOME=str(tmp / "prefect-home"), PREFECT_API_URL=api,
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_WORKER_QUERY_SECONDS="2",
               PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_CLI_PROMPT="false",
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               AWS_EC2_METADATA_DISABLED="true", PYTHONUNBUFFERED="1")
    svc = Services(tmp / "logs", env)
    try:
        svc.start("prefect-server", [str(BIN / "prefect"), "server", "start", "--host",
                                     "127.0.0.1", "--port", str(prefect_port)])
        svc.start("mlflow-server", [str(BIN / "mlflow"), "server", "--host", "127.0.0.1",
                                    "--port", str(mlflow_port), "--workers", "1",
                                    "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
                                    "--artifacts-destination", str(tmp / "mlartifacts")])
        svc.start("moto-s3", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)])
        s3_endpoint = f"http://127.0.0.1:{s3_port}"
        svc.wait_http("moto-s3", f"{s3_endpoint}/moto-api/")
        s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                          aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)
        s3.create_bucket(Bucket=BUCKET)
        svc.wait_http("mlflow-server", f"http://127.0.0.1:{mlflow_port}/health")
        svc.wait_http("prefect-server", f"{api}/health", timeout=240)

        out = svc.run([str(BIN / "prefect"), "work-pool", "create", "masters-process",
                       "--type", "process"], cwd=ROOT)
        assert out.returncode == 0, out.stdout + out.stderr
        out = svc.run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all",
                       "--prefect-file", "deployments/prefect.yaml"], cwd=ROOT)
        assert out.returncode == 0, out.stdout + out.stderr
        # The worker's environment is the flow runs' environment: servers and credentials
        # live there, never in deployment parameters.
        tracking = f"http://127.0.0.1:{mlflow_port}"
        svc.start("worker", [str(BIN / "prefect"), "worker", "start", "--pool",
                             "masters-process", "--limit", "1"], cwd=ROOT,
                  env={"MASTERS_TRACKING__TRACKING_URI": tracking,
                       "MASTERS_STORAGE__ACCESS_KEY_ID": KEY_ID,
                       "MASTERS_STORAGE__SECRET_ACCESS_KEY": SECRET})
        yield {"tmp": tmp, "svc": svc, "api": api, "tracking": tracking, "s3": s3,
               "s3_endpoint": s3_endpoint}
    finally:
        svc.stop()


def _prefect(stack, *args, timeout=120):
    return stack["svc"].run([str(BIN / "prefect"), *args], cwd=ROOT, timeout=timeout)


def _flow_run_id(output: str) -> str:
    m = re.search(r"UUID:\s*([0-9a-f-]{36})", output)
    assert m, f"no flow run id in:\n{output}"
    return m.group(1)


async def _wait_flow_run(api: str, run_id: str, timeout: float):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}):
        async with get_client() as client:
            deadline = time.monotonic() + timeout
            while True:
                run = await client.read_flow_run(run_id)
                if run.state is not None and run.state.is_final():
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"flow run {run_id} still {run.state} after {timeout}s")
                await asyncio.sleep(2)
            task_runs = await client.read_task_runs()  # this server ran nothing else
            flow_runs = await client.read_flow_runs()
            return run, task_runs, flow_runs


def test_distill_deployment_end_to_end(stack, tmp_path):
    paths = save_smoke_models(tmp_path, {"teacher": 1, "student": 2})
    params = {"params": {
        "preset": "configs/smoke.yaml",
        "run_name": "e2e",
        "r_max": 0.05,
        "cache_uri": f"s3://{BUCKET}/cache",
        "overrides": [
            f"storage.endpoint_url={stack['s3_endpoint']}", "storage.region=us-east-1",
            f"training.output_dir={tmp_path / 'train'}",
            f"teachers=[{{name: t, path: {paths['teacher']}}}]",
            f"student.path={paths['student']}",
            "masking.sweep_ratios=[0]", "data.train_size=8", "data.test_size=14",
            "generation.shard_size=2", "generation.teacher_answers=2",
            "generation.student_answers=2", "generation.max_new_tokens=2",
            "training.lr=0.001", "training.batch_groups=2",
            "tracking.experiment=masters-e2e", "tracking.registered_model=masters-e2e",
        ]}}
    out = _prefect(stack, "deployment", "run", "masters-distill/on-demand",
                   "--params", json.dumps(params))
    assert out.returncode == 0, out.stdout + out.stderr
    run_id = _flow_run_id(out.stdout)
    run, task_runs, flow_runs = asyncio.run(_wait_flow_run(stack["api"], run_id, timeout=600))
    assert run.state.is_completed(), (
        f"{run.state}\n--- worker log ---\n{stack['svc'].log('worker')[-6000:]}")

    # Prefect: the parent and its generate subflow, every step's task runs completed.
    assert {"masters-distill", "masters-generate"} <= {_flow_name(f, run) for f in flow_runs}
    # Task run names are "<task name>-<n>".
    names = {t.name.rsplit("-", 1)[0] for t in task_runs if t.state and t.state.is_completed()}
    for step in ("prune-teacher", "generate-shard", "stage-manifest", "score-stage",
                 "train-student", "evaluate-model", "register-promote"):
        assert step in names, f"no completed {step} task run in {sorted(names)}"

    # S3: the answers, distributions and scores are objects in the bucket, under the prefix.
    keys = [o["Key"] for o in stack["s3"].list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert keys and all(k.startswith("cache/") for k in keys)
    kinds = {k.split("/")[1] for k in keys}
    assert {"shards", "dists", "manifests", "scores"} <= kinds, kinds
    assert sum(k.startswith("cache/shards/") for k in keys) >= 2, keys

    # MLflow server: the run, its metrics, a registered version with the gate's aliases.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack["tracking"])
    exp = client.get_experiment_by_name("masters-e2e")
    runs = client.search_runs([exp.experiment_id], "attributes.run_name = 'distill-e2e'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    metrics = runs[0].data.metrics
    assert 0.0 <= metrics["test/accuracy"] <= 1.0 and "test/accuracy_initial_student" in metrics
    assert runs[0].data.tags["prefect.flow_run_id"] == run_id
    versions = client.search_model_versions("name = 'masters-e2e'")
    assert [v.version for v in versions] == ["1"]
    v1 = client.get_model_version("masters-e2e", "1")
    assert "challenger" in v1.aliases
    decision = v1.tags["promotion.decision"]
    assert ("champion" in v1.aliases) == (decision == "champion"), v1.tags["promotion.reason"]

    shots = os.environ.get("MASTERS_E2E_SCREENSHOTS")  # a folder: look at the UIs once
    if shots:
        base = stack["api"].removesuffix("/api")
        screenshot(f"{base}/runs/flow-run/{run_id}", Path(shots) / "prefect-flow-run.png")
        screenshot(f"{stack['tracking']}/#/models/masters-e2e/versions/1",
                   Path(shots) / "mlflow-model-version.png")

    # Credentials never reach Prefect parameters, MLflow params/tags or the logs.
    assert SECRET not in json.dumps(run.parameters)
    assert SECRET not in json.dumps({**runs[0].data.params, **runs[0].data.tags})
    assert SECRET not in stack["svc"].log("worker")


def screenshot(url: str, out: Path, browser: str = "/usr/bin/chromium") -> None:
    """Headless Chromium (Debian's `chromium` package), flags that keep it off the network."""
    import subprocess
    import tempfile

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", "--window-size=1440,1000",
                        "--virtual-time-budget=20000", f"--screenshot={out}", url],
                       check=True, timeout=120, capture_output=True)


def _flow_name(flow_run, parent) -> str:
    # FlowRun carries the flow id, not its name: the parent is masters-distill, the child
    # (the generate subflow) has a parent task run.
    return "masters-distill" if flow_run.id == parent.id else (
        "masters-generate" if flow_run.parent_task_run_id else "other")


def test_invalid_parameter_rejected_before_any_work(stack):
    before = asyncio.run(_count_flow_runs(stack["api"]))
    out = _prefect(stack, "deployment", "run", "masters-distill/on-demand",
                   "--params", json.dumps({"params": {"r_max": 1.5}}))
    text = out.stdout + out.stderr
    print(text)  # what the user sees; shown with -s
    assert out.returncode != 0, text
    assert "r_max" in text and "1.5" in text, text
    assert asyncio.run(_count_flow_runs(stack["api"])) == before


async def _count_flow_runs(api: str) -> int:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}):
        async with get_client() as client:
            return len(await client.read_flow_runs())
