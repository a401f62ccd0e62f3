"""Load image-text-to-text checkpoints safely and name their weights (fingerprints).

One path for every checkpoint, embedded or real: `AutoModelForImageTextToText` +
`AutoProcessor`, safetensors only, `trust_remote_code` off unless the config turns it on.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
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
):
    """(model, processor) from a local `save_pretrained` folder or a hub id (when online).

    `processor_kwargs` go to `AutoProcessor.from_pretrained` (a model config's `processor`).

    A model loaded from a local folder remembers where it came from (`CheckpointOrigin`), so
    `fingerprint` and masking can skip work while its weights are untouched (see below).
    """
    from transformers import AutoModelForImageTextToText

    path = check(path, trust_remote_code=trust_remote_code)
    local = Path(path)
    before = _stat_files(local) if local.is_dir() else None
    started_ns = time.time_ns()
    model, info = AutoModelForImageTextToText.from_pretrained(
        str(path), dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code,
        output_loading_info=True,
    )
    processor = load_processor(path, trust_remote_code, processor_kwargs)
    model.to(device).eval()
    # Weights the files lack are initialised at random, differently at every load: such a
    # model is not a function of its files, so it gets no origin (and no cached fingerprint).
    if before is not None and not (info.get("missing_keys") or info.get("mismatched_keys")):
        _remember_origin(model, local, before, started_ns, dtype, trust_remote_code)
    return model, processor


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
    """`load` for a config's model section (ModelRef): path, remote code, processor settings."""
    return load(ref.path, trust_remote_code=ref.trust_remote_code,
                processor_kwargs=ref.processor, **placement)


# Checkpoint provenance and the fingerprint cache.
#
# Hashing every weight (`fingerprint`) costs about 1 s per GB, more than loading them: from a
# warm page cache transformers maps safetensors files zero-copy. Like git's index, the digest
# of a checkpoint folder is stored beside the project state (`.masters/fingerprints/`, or
# $MASTERS_FINGERPRINT_CACHE; "off" disables it) under the folder's path, the load dtype and
# the library versions, together with the stat (size, mtime_ns, ctime_ns, inode, device) of
# every file in the folder. A later `load` of the same, unchanged files reuses the digest
# instead of hashing. It is used only when both hold:
#   * no file of the folder changed since the load: same stat, checked at every use. Files
#     modified less than RACY_NS before a load are not trusted (git's "racily clean" rule: a
#     rewrite within the same timestamp tick would keep the stat), so a checkpoint written
#     moments ago is hashed every time until it is RACY_NS old;
#   * the model's tensors are untouched since `load`: same storage and autograd version
#     counter for every state_dict entry. Every in-place torch op bumps the counter (optimizer
#     steps, `copy_`, `load_state_dict`, masking); writes that bypass it (`.data.add_()`,
#     writes through numpy or DLPack views) are not seen: after those, call
#     `fingerprint(model, cached=False)`.
# The trade-off is git's: a file rewritten behind the filesystem's back (content changed with
# size, mtime and ctime all kept) would keep its old digest. The first fingerprint of a
# checkpoint (normally the prune step's) pays the hash and stores it.

FINGERPRINT_CACHE_ENV = "MASTERS_FINGERPRINT_CACHE"
DEFAULT_FINGERPRINT_CACHE = ".masters/fingerprints"
RACY_NS = 2_000_000_000

FileStats = tuple[tuple[str, int, int, int, int, int], ...]


def _stat_files(folder: Path) -> FileStats | None:
    """Stat of every file in the folder (following links, as hub snapshots use them)."""
    try:
        out = []
        for p in sorted(folder.iterdir()):
            if p.is_file():
                st = p.stat()
                out.append((p.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
                            st.st_dev))
        return tuple(out)
    except OSError:
        return None


def _tensor_state(model) -> tuple | None:
    """(name, storage, version, layout) of every state tensor: changes with any tracked write."""
    out = []
    for name, t in model.state_dict().items():
        try:
            version = t._version
        except RuntimeError:  # an inference tensor has no version counter: untrackable
            return None
        out.append((name, t.data_ptr(), version, tuple(t.shape), tuple(t.stride()),
                    t.storage_offset(), str(t.dtype), str(t.device)))
    return tuple(out)


@dataclass(frozen=True)
class CheckpointOrigin:
    """The folder a model was loaded from, as it was then, and the model's state right after."""

    path: Path
    key: str  # fingerprint-cache key: folder, dtype, remote code, library versions
    files: FileStats
    state: tuple

    def unchanged(self) -> bool:
        """No file of the folder changed since the load (by stat)."""
        return _stat_files(self.path) == self.files


_ORIGINS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _remember_origin(model, folder: Path, before: FileStats | None, started_ns: int,
                     dtype: torch.dtype, trust_remote_code: bool) -> None:
    import transformers

    after = _stat_files(folder)
    if before is None or after != before:  # changed while loading: nothing to trust
        return
    if any(max(f[2], f[3]) >= started_ns - RACY_NS for f in after):  # racily clean
        return
    state = _tensor_state(model)
    if state is None:
        return
    key = json.dumps([str(folder.resolve()), str(dtype), bool(trust_remote_code),
                      torch.__version__, transformers.__version__])
    _ORIGINS[model] = CheckpointOrigin(folder.resolve(), key, after, state)


def origin(model) -> CheckpointOrigin | None:
    """Where the model was loaded from, if its tensors and that folder are both unchanged."""
    try:
        o = _ORIGINS.get(model)
    except TypeError:  # not weak-referenceable (a bare state_dict holder): never loaded here
        return None
    if o is None or _tensor_state(model) != o.state or not o.unchanged():
        return None
    return o


def fingerprint_cache_dir() -> Path | None:
    value = os.environ.get(FINGERPRINT_CACHE_ENV, DEFAULT_FINGERPRINT_CACHE)
    if value.strip().lower() in ("", "0", "off", "false", "no"):
        return None
    return Path(value)


def _cache_file(o: CheckpointOrigin) -> Path | None:
    folder = fingerprint_cache_dir()
    if folder is None:
        return None
    return folder / (hashlib.sha256(o.key.encode()).hexdigest()[:32] + ".json")


def _cached_entry(o: CheckpointOrigin) -> dict | None:
    path = _cache_file(o)
    if path is None:
        return None
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("key") != o.key:
        return None
    if [tuple(f) for f in entry.get("files", [])] != list(o.files):
        return None
    return entry


def _store_entry(o: CheckpointOrigin, entry: dict) -> None:
    path = _cache_file(o)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(entry))
        os.replace(tmp, path)  # atomic: concurrent writers of one entry write the same content
    except OSError:
        pass  # a cache that cannot be written costs time, never correctness


def _hash_state(state_dict) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(state_dict.items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # buffer protocol: no copy
    return h.hexdigest()[:16]


def fingerprint(model, *, cached: bool = True) -> str:
    """Content hash of the weights (names, shapes, dtypes, bytes): names a checkpoint.

    For a model `load`ed from an unchanged folder and untouched since, the digest comes from
    the fingerprint cache (computed and stored on first use); `cached=False` always hashes.
    """
    o = origin(model) if cached else None
    entry = _cached_entry(o) if o is not None else None
    if entry is not None:
        return entry["digest"]
    state_dict = model.state_dict()
    digest = _hash_state(state_dict)
    if o is not None and _cache_file(o) is not None:
        _store_entry(o, {"key": o.key, "files": [list(f) for f in o.files], "digest": digest})
    return digest


def file_mapped(model, o: CheckpointOrigin) -> set[str]:
    """State names whose bytes lie in a private memory map of one of the origin's files.

    transformers loads safetensors weights zero-copy when dtype and device allow: the tensors
    are copy-on-write maps of the file, sharing the page cache and costing no private memory
    until written. Read from /proc/self/maps (Linux); elsewhere the answer is empty.
    """
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return set()
    files = {(f[5], f[4]) for f in o.files if f[0].endswith(".safetensors")}
    inodes = {f" {ino} " for _, ino in files}
    regions = []
    for line in lines:
        # start-end perms offset major:minor inode path; (device, inode): immune to links
        if not any(ino in line for ino in inodes):
            continue
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or parts[1][3:4] != "p":
            continue
        major, minor = (int(x, 16) for x in parts[3].split(":"))
        if (os.makedev(major, minor), int(parts[4])) in files:
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            regions.append((lo, hi))
    regions.sort()
    starts = [lo for lo, _ in regions]
    out = set()
    for name, t in model.state_dict().items():
        lo = t.data_ptr()
        at = bisect.bisect_right(starts, lo) - 1
        if t.numel() and at >= 0 and lo + t.numel() * t.element_size() <= regions[at][1]:
            out.add(name)
    return out


def tokenize_left_padded(tok, texts: Sequence[str]):
    """Left padding for `generate` (it appends on the right); the tokenizer is not changed."""
    return tok(list(texts), add_special_tokens=False, padding=True, padding_side="left",
               return_tensors="pt")
