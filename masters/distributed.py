"""Multi-process training through torch.distributed, launched by torchrun or accelerate.

Both launchers export RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; with
WORLD_SIZE unset or 1 everything here is a no-op, so one code path serves a plain `python`
run and an N-process run. gloo on CPU, nccl on GPU. Two engines (`training.sharding`): DDP
(every rank holds the whole student) and torch's FSDP2 (`fully_shard`: each rank holds
1 / world of the weights, gradients and optimizer state; the engine accelerate's FSDP2 plugin
also calls, used directly because accelerate refuses FSDP on CPU ranks, where CI checks it).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Sequence

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


def engine(requested: str = "auto") -> str:
    """"ddp" or "fsdp" for this launch; "auto": fsdp when `accelerate launch` ran an FSDP
    config (it exports ACCELERATE_USE_FSDP=true), else ddp."""
    if requested != "auto":
        return requested
    return "fsdp" if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" else "ddp"


def wrap(model: torch.nn.Module, sharding: str = "ddp") -> torch.nn.Module:
    """The student under its engine when there is more than one rank, else the model itself.

    fsdp: `fully_shard` on every block the model declares unsplittable (`_no_split_modules`:
    decoder and vision layers, as accelerate's transformer auto-wrap policy picks them), then
    on the root (embeddings, head, norms); the model is sharded in place and returned.

    find_unused_parameters: a VLM runs parameters whose output never reaches the answer logits
    (CLIP's pooled-output layer norm), and DDP would otherwise wait for their gradients.
    """
    if world_size() == 1:
        return model
    dev = next(model.parameters()).device
    if sharding == "fsdp":
        return _fully_shard(model, dev)
    from torch.nn.parallel import DistributedDataParallel

    ids = [dev.index] if dev.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def fsdp_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The submodules FSDP shards as units of their own: every module whose class the model
    lists in `_no_split_modules` (masters plan counts the same units)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    return [m for m in list(model.modules())[1:] if type(m).__name__ in names]


def _fully_shard(model: torch.nn.Module, dev: torch.device) -> torch.nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    blocks = fsdp_blocks(model)
    if not blocks:
        raise ValueError(f"training.sharding=fsdp: {type(model).__name__} names no "
                         "_no_split_modules, so there are no blocks to shard")
    # FSDP warns that the root returns a view (the logits at the answer positions): an
    # in-place op on it would skip the backward all-gather; answer_logits only reads it.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view")
    mesh = init_device_mesh(dev.type, (world_size(),))
    for module in blocks:
        fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def root_gathered(model: torch.nn.Module) -> Iterator[None]:
    """Keep a sharded model's root weights (embeddings, head, norms outside the blocks)
    gathered for a while. FSDP gathers them in the root's forward, but generate() also calls
    submodules directly (LLaVA's get_image_features runs the vision tower before the first
    forward), which would meet sharded weights. The blocks gather in their own forwards."""
    if not is_sharded(model):
        yield
        return
    # FSDP marks as root the first module to run forward; before any training step that
    # would be the vision embeddings, so settle the root first (torch 2.14, private call).
    model._get_fsdp_state()._lazy_init()
    model.set_reshard_after_forward(False, recurse=False)
    model.unshard()
    try:
        yield
    finally:
        model.reshard()
        model.set_reshard_after_forward(True, recurse=False)


def inference(model: torch.nn.Module):
    """inference_mode, or no_grad for a sharded model: FSDP reuses the buffers it gathers
    weights into, and buffers first filled under inference_mode cannot be written by the
    training steps after an evaluation."""
    return torch.no_grad() if is_sharded(model) else torch.inference_mode()


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
