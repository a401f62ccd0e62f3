"""Shared by the reliability tests: the tiny run, cache snapshots, subprocess control."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from masters import cache

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"
MODEL = "rel-student"  # the registered model of every reliability run


def overrides(root: Path, paths: dict, cache_uri: str | None = None) -> list[str]:
    """The shared tiny distill run (2 stages x 2 shards, 2 + 2 answers), state under `root`."""
    from conftest import smoke_distill_overrides

    out = [*smoke_distill_overrides(root, paths), f"tracking.registered_model={MODEL}"]
    if cache_uri is not None:
        out = [o for o in out if not o.startswith("storage.cache_uri=")]
        out.append(f"storage.cache_uri={cache_uri}")
    return out


def flags(items: list[str]) -> list[str]:
    return [a for o in items for a in ("--set", o)]


def snapshot(store: cache.Store) -> dict[str, bytes]:
    """Every visible object's payload, checksums verified (a torn object raises here), with
    the store's own URI replaced so runs in different folders or prefixes compare equal."""
    root = store.uri().encode()
    return {k: store.get_bytes(k).replace(root, b"<cache>") for k in store.list()}


def temp_files(store: cache.LocalStore) -> list[str]:
    """Files under the cache root that are not objects: temp files of interrupted writes."""
    return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*")
                  if p.is_file() and cache._TMP_MARK in p.name)


def versions(tracking_uri: str, name: str = MODEL) -> list[str]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    return sorted(str(mv.version) for mv in client.search_model_versions(f"name = '{name}'"))


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a `masters` subprocess: the test's Prefect API (no ephemeral
    server to orphan), offline hub, the repository importable."""
    import prefect.settings

    env = dict(os.environ)
    env.update(PREFECT_API_URL=str(prefect.settings.PREFECT_API_URL.value()),
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(
                   os.pathsep))
    env.update(extra)
    return env


class ForkServer:
    """forkserver.py: `masters` processes forked from one pre-imported zygote."""

    def __init__(self, env: dict[str, str]):
        """Starts the zygote and returns at once; the first call waits for its imports."""
        import threading

        self.p = subprocess.Popen([sys.executable, str(Path(__file__).with_name("forkserver.py"))],
                                  cwd=ROOT, env=env, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, start_new_session=True)
        self.lock, self.ready = threading.Lock(), False
        self.children: list[Child] = []

    def call(self, req: dict) -> dict:
        with self.lock:  # one request at a time, from any thread
            if not self.ready:
                if not self.p.stdout.readline():
                    raise RuntimeError("the fork server did not start")
                self.ready = True
            self.p.stdin.write(json.dumps(req) + "\n")
            self.p.stdin.flush()
            line = self.p.stdout.readline()
        if not line:
            raise RuntimeError("the fork server died")
        return json.loads(line)

    def start(self, args: list[str], log: Path, env: dict[str, str] | None = None,
              killpoint: str | None = None) -> Child:
        """`masters ARGS` in a new process (own session); `killpoint`: see killpoint.py."""
        pid = self.call({"op": "run", "argv": args, "env": env or {}, "log": str(log),
                         "killpoint": killpoint})["pid"]
        child = Child(self, pid, log)
        self.children.append(child)
        return child

    def close(self) -> None:
        for c in self.children:
            c.kill()
        self.p.stdin.close()
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait()


class Child:
    def __init__(self, server: ForkServer, pid: int, log: Path):
        self.server, self.pid, self.log, self.rc = server, pid, log, None

    def poll(self, timeout: float = 0.0) -> int | None:
        if self.rc is None:
            self.rc = self.server.call({"op": "wait", "pid": self.pid, "timeout": timeout})["rc"]
        return self.rc

    def kill(self) -> None:
        """SIGKILL the whole process group, then reap the child (a zombie looks alive)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.rc is None:
            self.poll(timeout=30)

    def wait(self, timeout: float) -> int:
        rc = self.poll(timeout)
        if rc is None:
            self.kill()
            raise AssertionError(f"run did not finish in {timeout} s:\n{self.output()[-4000:]}")
        self.kill()  # anything it left running in its group
        return rc

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def run_until_paused(server: ForkServer, args: list[str], point: str, marker: Path, log: Path,
                     env: dict[str, str] | None = None, timeout: float = 180) -> Child:
    """Start `masters ARGS` through killpoint.py and SIGKILL it once it reaches `point`."""
    child = server.start(args, log, {**(env or {}), "RELIABILITY_MARKER": str(marker)}, point)
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if child.poll() is not None:
            raise AssertionError(f"run ended (rc {child.rc}) before its kill point {point}:\n"
                                 + child.output()[-4000:])
        if time.monotonic() > deadline:
            child.kill()
            raise AssertionError(f"kill point {point} not reached:\n{child.output()[-4000:]}")
        time.sleep(0.05)
    child.kill()
    marker.unlink()
    return child


class MlflowServer:
    """An MLflow tracking server process (MLflow's own app on a sqlite store, artifacts
    proxied), forked from the zygote: it can be SIGKILLed and started again on its port."""

    def __init__(self, server: ForkServer, root: Path):
        import socket

        from mlflow import server as mlflow_server

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server, self.root, self.child = server, root, None
        self.env = {mlflow_server.BACKEND_STORE_URI_ENV_VAR: f"sqlite:///{root / 'server.db'}",
                    mlflow_server.ARTIFACT_ROOT_ENV_VAR: "mlflow-artifacts:/",
                    mlflow_server.SERVE_ARTIFACTS_ENV_VAR: "true",
                    mlflow_server.ARTIFACTS_DESTINATION_ENV_VAR: str(root / "artifacts")}

    def start(self, timeout: float = 60) -> MlflowServer:
        import urllib.request

        log = self.root / f"mlflow-server-{time.time_ns()}.log"
        pid = self.server.call({"op": "run", "serve_mlflow": self.port, "env": self.env,
                                "log": str(log), "argv": []})["pid"]
        self.child = Child(self.server, pid, log)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return self
            except OSError:
                if time.monotonic() > deadline or self.child.poll() is not None:
                    raise AssertionError("the MLflow server did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """SIGKILL: the server is gone at once, mid-request or not."""
        if self.child is not None:
            self.child.kill()
            self.child = None


def leaks(secrets: list[str], *, files_under: list[Path], texts: dict[str, str],
          prefect: bool = True, objects: dict[str, bytes] | None = None) -> dict[str, int]:
    """Look for each secret everywhere a run writes; raise naming the place it was found.

    Files (MLflow's sqlite store and artifacts, checkpoints) are read as raw bytes, so every
    param, tag, metric key, run name and registry entry is covered. From Prefect: every flow
    and task run (names, parameters, state messages), every log line and every artifact.
    Returns how many items of each kind were searched (a search over nothing proves nothing).
    """
    found, searched = [], {"files": 0, "texts": len(texts), "objects": 0}
    needles = [s.encode() for s in secrets]
    for root in files_under:
        for path in Path(root).rglob("*"):
            if path.is_file():
                searched["files"] += 1
                data = path.read_bytes()
                found += [f"file {path}" for n in needles if n in data]
    for name, text in texts.items():
        found += [f"text {name}" for s in secrets if s in text]
    for key, data in (objects or {}).items():
        searched["objects"] += 1
        found += [f"cache object {key}" for n in needles if n in data]
    if prefect:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import LogFilter

        def every(read, page=200):
            out, offset = [], 0
            while True:
                got = read(limit=page, offset=offset)
                out += got
                offset += len(got)
                if len(got) < page:
                    return out

        with get_client(sync_client=True) as client:
            items = {
                "flow runs": [r.model_dump_json() for r in every(client.read_flow_runs)],
                "task runs": [r.model_dump_json() for r in every(client.read_task_runs)],
                "artifacts": [a.model_dump_json() for a in every(client.read_artifacts)],
                "logs": [log.message for log in every(
                    lambda **kw: client.read_logs(log_filter=LogFilter(), **kw))],
            }
        for kind, values in items.items():
            searched[f"prefect {kind}"] = len(values)
            found += [f"prefect {kind}" for v in values for s in secrets if s in v]
    assert not found, f"credentials found in: {sorted(set(found))}"
    return searched
