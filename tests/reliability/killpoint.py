"""Run `masters ARGS`, but stop dead at a named point so the test can SIGKILL it there.

    python tests/reliability/killpoint.py POINT ARGS...

Each point sits inside real work: a shard written to its temp file but not yet published, a
shard's answers being scored, a training stage half done, the registration between creating
the model version and promoting it. At the point this
script writes $RELIABILITY_MARKER and sleeps; the test sees the file and kills the process
group. The library knows nothing of this: the wrappers are installed from here.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def pause(point: str) -> None:
    Path(os.environ["RELIABILITY_MARKER"]).write_text(point)
    while True:
        time.sleep(60)


def install(point: str) -> None:
    lock, calls = threading.Lock(), [0]

    def nth(n: int) -> bool:
        with lock:
            calls[0] += 1
            return calls[0] == n

    if point == "generate":  # the third shard: fsynced to its temp file, not yet linked
        from masters import cache

        real_link = cache._link_if_absent

        def link(tmp, path):
            if path.parent.name == "shards" and nth(3):
                pause(point)
            return real_link(tmp, path)

        cache._link_if_absent = link
    elif point == "dists":  # a shard's answers published, its distributions not yet
        from masters import cache

        real_link = cache._link_if_absent

        def link(tmp, path):
            if path.parent.name == "dists" and nth(1):
                pause(point)
            return real_link(tmp, path)

        cache._link_if_absent = link
    elif point == "score":  # two shards scored and stored, the third being scored
        from masters import scoring

        real_score = scoring.score_records

        def score_records(*args, **kwargs):
            if nth(3):
                pause(point)
            return real_score(*args, **kwargs)

        scoring.score_records = score_records
    elif point == "train":  # stage 0 checkpointed; one optimizer step into stage 1
        from masters import training

        real_step = training.MastersTrainer.loss_step

        def loss_step(self, groups, stage, *args, **kwargs):
            if stage.index == 1 and nth(2):
                pause(point)
            return real_step(self, groups, stage, *args, **kwargs)

        training.MastersTrainer.loss_step = loss_step
    elif point == "register":  # the version created (the student logged); no alias set yet
        from masters import registry

        def promote(*args, **kwargs):
            pause(point)

        registry.promote = promote
    else:
        raise SystemExit(f"unknown kill point {point!r}")


if __name__ == "__main__":
    install(sys.argv[1])
    from flows.cli import main

    sys.exit(main(sys.argv[2:]))
