"""A zygote for `masters` processes: import once, fork a fresh process per run.

Starting `masters` costs seconds of imports (torch, transformers, MLflow, Prefect) before any
work; the kill tests start many. This process imports everything once, runs nothing, and
forks one child per request. Each child is its own process in its own session (like
`start_new_session=True`), writes to its own log, runs `flows.cli.main(argv)` (through a
killpoint.py wrapper when asked) and exits; the test SIGKILLs its process group like any
other process. Only imports happen before the fork (no torch op, no Prefect client, no
thread started by Python code), so each child starts as clean as a fresh interpreter.

Protocol: one JSON object per line on stdin, one reply per line on stdout.
    {"op": "run", "argv": [...], "env": {...}, "log": PATH, "killpoint": NAME|null}
        -> {"pid": PID}
    {"op": "run", "serve_mlflow": PORT, "env": {...}, "log": PATH} -> {"pid": PID}
        (an MLflow tracking server process instead of `masters`)
    {"op": "wait", "pid": PID, "timeout": S}  -> {"rc": CODE|null}  (null: still running)
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def preload() -> None:
    import datasets  # noqa: F401
    import mlflow.pyfunc  # noqa: F401
    import mlflow.server  # noqa: F401  (for serve_mlflow; no server state before a request)
    import mlflow.store.model_registry.sqlalchemy_store  # noqa: F401
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    import safetensors.torch  # noqa: F401
    import transformers.models.clip.image_processing_pil_clip  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401
    import transformers.models.llava.modeling_llava  # noqa: F401
    import transformers.models.llava.processing_llava  # noqa: F401
    import werkzeug.serving  # noqa: F401
    from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: F401

    import flows.cli  # noqa: F401
    import flows.distill  # noqa: F401
    import flows.promote  # noqa: F401
    import masters.checks  # noqa: F401
    import masters.pyfunc_model  # noqa: F401


def child(req: dict) -> None:
    os.setsid()
    fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(req.get("env") or {})
    rc = 1
    try:
        if req.get("serve_mlflow"):
            serve_mlflow(req["serve_mlflow"])
        if req.get("killpoint"):
            import killpoint

            killpoint.install(req["killpoint"])
        from flows.cli import main

        rc = main(req["argv"])
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - the child reports everything and exits
        traceback.print_exc()
        rc = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)


def serve_mlflow(port: int) -> None:
    """MLflow's tracking server (its Flask app; stores from the _MLFLOW_SERVER_* env)."""
    from mlflow.server import app
    from werkzeug.serving import make_server

    make_server("127.0.0.1", port, app, threaded=True).serve_forever()


def serve() -> None:
    preload()
    out = sys.stdout
    print(json.dumps({"ready": os.getpid()}), file=out, flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "run":
            pid = os.fork()
            if pid == 0:
                child(req)
            reply = {"pid": pid}
        elif req["op"] == "wait":
            deadline, rc = time.monotonic() + req.get("timeout", 0), None
            while True:
                done, status = os.waitpid(req["pid"], os.WNOHANG)
                if done:
                    rc = os.waitstatus_to_exitcode(status)
                    break
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
            reply = {"rc": rc}
        else:
            raise SystemExit(f"unknown op {req['op']!r}")
        print(json.dumps(reply), file=out, flush=True)


if __name__ == "__main__":
    serve()
