"""Load image-text-to-text checkpoints safely and name their weights (fingerprints).

One path for every checkpoint, embedded or real: `AutoModelForImageTextToText` +
`AutoProcessor`, safetensors only, `trust_remote_code` off unless the config turns it on.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch


class ModelLoadError(ValueError):
    """A checkpoint that cannot be loaded safely (the message names the path and why)."""


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def pick_dtype(requested: str = "auto", device: str | torch.device = "auto") -> torch.dtype:
    """The config's `dtype` for models that are only read (see MastersConfig.dtype)."""
    if requested != "auto":
        return getattr(torch, requested)
    dev = pick_device(device) if isinstance(device, str) else device
    if dev.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def inference_placement(cfg) -> dict:
    """`models.load` keyword arguments for a model the run only reads: device and dtype."""
    device = pick_device(cfg.device)
    return {"device": device, "dtype": pick_dtype(cfg.dtype, device)}


def dtype_name(cfg) -> str:
    """`inference_placement`'s dtype as a name (for task parameters and cache keys)."""
    return str(inference_placement(cfg)["dtype"]).removeprefix("torch.")


CHECKPOINTS = Path(__file__).parent / "checkpoints"
EMBEDDED_PREFIX = "embedded:"


def resolve_path(path: str | Path) -> str:
    """`embedded:<name>` names a checkpoint shipped in masters/checkpoints/; others pass."""
    text = str(path)
    if text.startswith(EMBEDDED_PREFIX):
        name = text[len(EMBEDDED_PREFIX) :]
        local = CHECKPOINTS / name
        if not local.is_dir():
            shipped = sorted(p.name for p in CHECKPOINTS.glob("*") if p.is_dir())
            raise ModelLoadError(
                f"no embedded checkpoint {name!r} (shipped: {', '.join(shipped) or 'none'}); "
                "run `masters bootstrap` to build them"
            )
        return str(local)
    return text


def _check_checkpoint(path: Path, trust_remote_code: bool) -> None:
    if not path.exists():
        raise ModelLoadError(f"model path {str(path)!r} does not exist")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"model path {str(path)!r} has no config.json")
    if not any(path.glob("*.safetensors")):
        raise ModelLoadError(
            f"model path {str(path)!r} has no *.safetensors weights; only safetensors are "
            "loaded (convert pickled .bin weights first)"
        )
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model path {str(path)!r}: config.json is not readable JSON "
                             f"({exc})") from None
    _check_safetensors(path)
    if config.get("auto_map") and not trust_remote_code:
        raise ModelLoadError(
            f"model at {str(path)!r} needs remote code (auto_map in config.json) and "
            "trust_remote_code is off; set it to true in the model's config section only if "
            "you trust this checkpoint"
        )


def _check_safetensors(path: Path) -> None:
    """Every weights file has a sound safetensors header covering the whole file (a truncated
    download is caught here, by name, not deep inside from_pretrained); every shard a
    sharded checkpoint's index names exists. Reads headers only, never the tensors."""
    from safetensors import SafetensorError, safe_open

    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise ModelLoadError(f"model path {str(path)!r}: {index.name} is not a valid "
                                 f"shard index ({exc})") from None
        missing = sorted(s for s in shards if not (path / s).is_file())
        if missing:
            raise ModelLoadError(f"model path {str(path)!r}: weight shard(s) {missing[:3]} "
                                 f"named in {index.name} are missing")
    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), "pt"):
                pass
        except (SafetensorError, OSError) as exc:
            raise ModelLoadError(f"weights file {str(file)!r} is not a complete safetensors "
                                 f"file ({exc}); download or convert it again") from None


def check(path: str | Path, *, trust_remote_code: bool = False) -> str:
    """The checks `load` makes, without loading: the resolved path, or ModelLoadError.

    A local folder (or a path-like string) must be a safe, complete checkpoint; anything
    else is a hub id, left to `from_pretrained`.
    """
    path = resolve_path(path)
    local = Path(path)
    if local.exists() or path.startswith((".", "/")):
        _check_checkpoint(local, trust_remote_code)
    return path


def load(
    path: str | Path,
    *,
    trust_remote_code: bool = False,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    processor_kwargs: dict | None = None,
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
):
    """(model, processor) from a local `save_pretrained` folder or a hub id (when online).

    `processor_kwargs` go to `AutoProcessor.from_pretrained` (a model config's `processor`).
    With `device_map` (and `max_memory`), accelerate places the layers over the devices as
    they load (transformers' big-model inference) and `device` is not used.
    """
    from transformers import AutoModelForImageTextToText

    path = check(path, trust_remote_code=trust_remote_code)
    # copies: from_pretrained rewrites max_memory's sizes in place (the config's own dict)
    spread = {} if device_map is None else {
        "device_map": copy.deepcopy(device_map),
        "max_memory": dict(max_memory) if max_memory else None}
    model = AutoModelForImageTextToText.from_pretrained(
        str(path), dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code,
        **spread)
    processor = load_processor(path, trust_remote_code, processor_kwargs)
    return (model if spread else model.to(device)).eval(), processor



def load_processor(path: str, trust_remote_code: bool = False,
                   processor_kwargs: dict | None = None):
    """The checkpoint's processor, with the config's overrides; one with no chat template
    (every prompt goes through it) is refused, naming the setting that provides one."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(path), trust_remote_code=trust_remote_code,
                                              **(processor_kwargs or {}))
    if not getattr(processor, "chat_template", None):
        raise ModelLoadError(
            f"the processor of {str(path)!r} has no chat template (every prompt is built with "
            "it); set one in the model's config section: processor: {chat_template: '...'}")
    if getattr(processor, "tokenizer", None) is None:
        raise ModelLoadError(f"the processor of {str(path)!r} has no tokenizer")
    return processor


def load_ref(ref, **placement):
    """`load` for a config's model section (ModelRef): path, remote code, processor settings
    and, for a model spread over devices, its device_map / max_memory."""
    return load(ref.path, trust_remote_code=ref.trust_remote_code,
                processor_kwargs=ref.processor, **placement, **ref.spread())


def _hash_state(state_dict) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(state_dict.items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # buffer protocol: no copy
    return h.hexdigest()[:16]


def fingerprint(model) -> str:
    """Content hash of the weights (names, shapes, dtypes, bytes): names a checkpoint as held
    in its load dtype. Hashes every byte (about 1 s per GB): call it once per load."""
    return _hash_state(model.state_dict())


def tokenize_left_padded(tok, texts: Sequence[str]):
    """Left padding for `generate` (it appends on the right); the tokenizer is not changed."""
    return tok(list(texts), add_special_tokens=False, padding=True, padding_side="left",
               return_tensors="pt")
