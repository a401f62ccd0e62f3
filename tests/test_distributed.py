"""Data-parallel training: 2 processes (torchrun, gloo) reproduce 1 process on one global batch.

float64 models: in float32, Adam turns the rounding noise of near-zero gradients into +-lr
steps (group advantages cancel on shared prefixes), so two correct runs differ by ~1e-5 in
weights; in float64 they agree to ~1e-14 and the comparison tests the sharding itself.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from masters import distributed, train_entry

ROOT = Path(__file__).resolve().parents[1]
# 10 groups over 2 stages of 5: batches of 2, 2, 1 per stage, so the short last batch (one
# rank idle, weight 0) is covered too. Ragged groups (4 and 3 answers) give the ranks unequal
# shares of a batch, which only the share-weighted loss turns into the one-process gradient.
ARGS = ["--synthetic", "--dtype", "float64", "--groups", "10", "--batch-groups", "2",
        "--answers", "4", "--ragged", "--lr", "1e-3"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(out: Path, nproc: int, args: list[str] = ARGS) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "masters.train_entry", *args, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def _same_run(one: Path, two: Path, steps: int) -> None:
    """Every logged loss and every final weight of run `two` equal run `one`'s."""
    a_log = json.loads((one / "losses.json").read_text())
    b_log = json.loads((two / "losses.json").read_text())
    assert (a_log["world_size"], b_log["world_size"]) == (1, 2)
    assert len(a_log["steps"]) == len(b_log["steps"]) == steps  # logged once (rank 0)
    for a, b in zip(a_log["steps"], b_log["steps"], strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-9), (a["step"], k)
    w1 = torch.load(one / "student.pt", weights_only=True)
    w2 = torch.load(two / "student.pt", weights_only=True)
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-9, msg=k)


def test_two_processes_reproduce_one(tmp_path):
    train_entry.main([*ARGS, "--out", str(tmp_path / "one")])  # plain python, world size 1
    _torchrun(tmp_path / "two", 2)
    _same_run(tmp_path / "one", tmp_path / "two", 6)
    # Rank 0 alone wrote each stage's checkpoint, whole (no torn .tmp folder left).
    ckpts = tmp_path / "two" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["stage-000", "stage-001"]
    assert torch.load(ckpts / "stage-001" / "trainer_state.pt", weights_only=True)["optimizer"]


def test_two_processes_with_micro_batches_reproduce_one_batch(tmp_path):
    """Each rank's 2 groups of a 4-group batch in micro-batches of 1 (DDP's no_sync on the
    first, one gradient all-reduce per step) equal one process taking all 4 at once; each
    stage's short last batch (1 group) leaves rank 1 idle, with one micro-batch."""
    args = ["--synthetic", "--dtype", "float64", "--groups", "10", "--batch-groups", "4",
            "--answers", "4", "--ragged", "--lr", "1e-3"]
    train_entry.main([*args, "--out", str(tmp_path / "one")])
    _torchrun(tmp_path / "two", 2, [*args, "--micro-batch-groups", "1"])
    _same_run(tmp_path / "one", tmp_path / "two", 4)


def test_shard_takes_every_world_th_group():
    batch = list(range(6))
    assert [distributed.shard(batch, r, 3) for r in range(3)] == [[0, 3], [1, 4], [2, 5]]
    assert distributed.shard([7], 1, 2) == []  # a short last batch can leave a rank idle
    assert distributed.world_size() == 1 and distributed.is_main()  # no group in pytest


# FSDP: micro-batches of one group (so the idle rank of a short last batch pads weight-0
# forwards: every forward gathers weights from all ranks), gradient checkpointing and a
# learning curve (greedy decoding on the sharded model) at once.
FSDP_ARGS = ["--synthetic", "--dtype", "float64", "--groups", "10", "--batch-groups", "4",
             "--answers", "4", "--ragged", "--lr", "1e-3", "--eval-every", "2"]


def test_two_fsdp_processes_reproduce_one(tmp_path):
    """torch FSDP2 over 2 gloo ranks: each holds half of every sharded tensor, and the logged
    losses, the learning curve's greedy answers and the final weights equal one process."""
    train_entry.main([*FSDP_ARGS, "--out", str(tmp_path / "one")])
    _torchrun(tmp_path / "two", 2, [*FSDP_ARGS, "--sharding", "fsdp", "--micro-batch-groups",
                                    "1", "--gradient-checkpointing"])
    one = json.loads((tmp_path / "one" / "losses.json").read_text())
    two = json.loads((tmp_path / "two" / "losses.json").read_text())
    assert (one["sharded"], two["sharded"]) == (False, True)
    _same_run(tmp_path / "one", tmp_path / "two", 7)  # 4 steps + 3 curve points
    curve = [(c["step"], c["answers"]) for c in one["summary"]["curve"]]
    assert [s for s, _ in curve] == [0, 2, 4]
    assert [(c["step"], c["answers"]) for c in two["summary"]["curve"]] == curve
    # The curve moved: the answers at step 4 are not the initial ones (so equality above
    # compares decoding of trained, sharded weights, not of the initial model only).
    assert curve[-1][1] != curve[0][1]
    # A sharded run's checkpoint holds whole tensors by name: one process resumes it after
    # stage 0 and finishes with the weights of the run that never stopped.
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "two" / "checkpoints", resumed / "checkpoints")
    shutil.rmtree(resumed / "checkpoints" / "stage-001")
    train_entry.main([*FSDP_ARGS, "--out", str(resumed)])
    assert json.loads((resumed / "losses.json").read_text())["summary"]["resumed_after"] == 0
    w1 = torch.load(tmp_path / "one" / "student.pt", weights_only=True)
    w3 = torch.load(resumed / "student.pt", weights_only=True)
    for k in w1:
        torch.testing.assert_close(w3[k], w1[k], rtol=1e-4, atol=1e-9, msg=k)


def test_accelerate_launch_with_the_shipped_fsdp_config_shards(tmp_path):
    """`accelerate launch --config_file configs/accelerate/fsdp.yaml` starts the ranks and
    exports ACCELERATE_USE_FSDP; training.sharding=auto reads it as fsdp (the launcher's
    multi-GPU path falls back to gloo ranks on this CPU machine)."""
    args = ["--synthetic", "--dtype", "float64", "--groups", "4", "--batch-groups", "2",
            "--answers", "2", "--lr", "1e-3"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "configs/accelerate/fsdp.yaml"), "--num_processes", "2",
           "--main_process_port", str(_free_port()), "-m", "masters.train_entry", *args,
           "--out", str(tmp_path / "acc")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    log = json.loads((tmp_path / "acc" / "losses.json").read_text())
    assert (log["world_size"], log["sharded"]) == (2, True)
    train_entry.main([*args, "--out", str(tmp_path / "one")])
    _same_run(tmp_path / "one", tmp_path / "acc", 2)


def test_sharding_auto_follows_the_accelerate_launcher(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert distributed.engine("auto") == "ddp"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert distributed.engine("auto") == "fsdp"
    assert distributed.engine("ddp") == "ddp"  # an explicit setting wins


def test_fsdp_refuses_a_model_without_blocks_to_shard():
    with pytest.raises(ValueError, match=r"training.sharding=fsdp: Linear names no "
                                         r"_no_split_modules"):
        distributed._fully_shard(torch.nn.Linear(2, 2), torch.device("cpu"))
