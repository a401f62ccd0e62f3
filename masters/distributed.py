"""Data-parallel training through torch.distributed (DDP), launched by torchrun or accelerate.

Both launchers export RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; with
WORLD_SIZE unset or 1 everything here is a no-op, so one code path serves a plain `python`
run and an N-process run. gloo on CPU, nccl on GPU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def init(requested: str = "auto") -> torch.device:
    """Join the process group the launcher described (if any); return this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)  # so a plain "cuda" elsewhere means this rank's GPU
    else:
        dev = torch.device("cpu" if requested == "auto" else requested)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return dev


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """DDP around the student when there is more than one rank, else the model itself.

    find_unused_parameters: a VLM runs parameters whose output never reaches the answer logits
    (CLIP's pooled-output layer norm), and DDP would otherwise wait for their gradients.
    """
    if world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    dev = next(model.parameters()).device
    ids = [dev.index] if dev.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def shard(batch: Sequence, r: int | None = None, world: int | None = None) -> list:
    """Rank r's share of a global batch: every world-th item, starting at r."""
    r = rank() if r is None else r
    world = world_size() if world is None else world
    return list(batch[r::world])


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum of a (small) tensor over ranks; the tensor itself when running alone."""
    if not dist.is_initialized():
        return values
    # gloo reduces CPU tensors only; nccl needs them on the rank's GPU.
    dev = torch.device("cuda", torch.cuda.current_device()) if (
        dist.get_backend() == "nccl") else torch.device("cpu")
    out = values.detach().to(dev, torch.float64).clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.cpu()
