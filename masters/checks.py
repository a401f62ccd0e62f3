"""Check every input of a run before it does any work (docs/reliability.md).

The config is checked when it is built (`masters.config`); this checks what the config points
at, the things only a look at the disk, the bucket or the checkpoints can tell:

- storage: the cache folder is writable, or the bucket exists and the credentials work;
- models: every checkpoint (student, teachers, judge) exists, holds complete safetensors
  weights, needs no remote code unless allowed, and its processor loads with a chat
  template; the student and every teacher share one vocabulary (Masters distils token
  distributions);
- data: the training and test splits load with their column mapping and pass the row checks
  of `masters.data` (empty text, duplicate ids, unreadable images), every image decodes (any
  size: the processors resize), and the training split fills every stage of the schedule.

The first problem raises the error type of the layer it belongs to (`CacheError`,
`ModelLoadError`, `DataError`), naming the setting, the path, or the split and row, so a bad
input stops a run before anything is computed, cached or registered. No model weights are
loaded here: only headers, processors and tokenizers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from masters import cache, data, models
from masters.config import MastersConfig, ModelRef
from masters.schedule import build_schedule


def model_refs(cfg: MastersConfig) -> list[tuple[str, ModelRef]]:
    """(setting, model) for every checkpoint the run loads."""
    refs: list[tuple[str, ModelRef]] = [("student", cfg.student)]
    refs += [(f"teachers.{i}", t) for i, t in enumerate(cfg.teachers)]
    if cfg.rewards.scorer == "judge" and cfg.rewards.judge is not None:
        refs.append(("rewards.judge", cfg.rewards.judge))
    return refs


def check_model(setting: str, ref: ModelRef):
    """The checkpoint's processor, after the loading checks; ModelLoadError names `setting`."""
    try:
        path = models.check(ref.path, trust_remote_code=ref.trust_remote_code)
    except models.ModelLoadError as exc:
        raise models.ModelLoadError(f"{setting}.path: {exc}") from None
    try:
        return models.load_processor(path, ref.trust_remote_code, ref.processor)
    except models.ModelLoadError as exc:
        raise models.ModelLoadError(f"{setting}.path: {exc}".replace(
            "the model's config section", f"{setting}")) from None
    except Exception as exc:  # noqa: BLE001 - many types (hub, remote code, bad files)
        raise models.ModelLoadError(
            f"{setting}.path: cannot load the processor of {ref.path!r} "
            f"({type(exc).__name__}: {exc})") from None


def check_models(cfg: MastersConfig) -> dict[str, Any]:
    """Processors by setting; the student's vocabulary is every teacher's."""
    processors = {setting: check_model(setting, ref) for setting, ref in model_refs(cfg)}
    if cfg.training.objective == "masters":
        student = processors["student"].tokenizer.get_vocab()
        for i, t in enumerate(cfg.teachers):
            vocab = processors[f"teachers.{i}"].tokenizer.get_vocab()
            if vocab != student:
                diff = sorted(set(vocab.items()) ^ set(student.items()))[:5]
                raise models.ModelLoadError(
                    f"teachers.{i}.path ({t.path!r}) and student.path ({cfg.student.path!r}): "
                    f"the tokenizers differ ({len(vocab)} vs {len(student)} tokens; first "
                    f"differences {diff}); Masters distils token distributions, so the teacher "
                    "and the student must share one vocabulary")
    return processors


def check_split(cfg: MastersConfig, split: str, ds) -> None:
    """Every image decodes (once, fully; a failure names the row). Any size and mode is
    taken: each model's processor resizes, tiles or pads as its family does."""
    if cfg.data.source != "synthetic":  # rendered images are always sound
        data.image_sizes(ds, split, decode=True)


def check_inputs(cfg: MastersConfig,
                 load_split: Callable[[Any, str], Any] = data.load_split) -> dict[str, Any]:
    """Raise on the first bad input; returns what was checked (for the run's log)."""
    store = cache.open_store(cfg.storage)
    processors = check_models(cfg)
    train = load_split(cfg.data, "train")
    check_split(cfg, "train", train)
    try:
        stages = build_schedule(cfg.teachers, len(train))
    except ValueError as exc:
        setting = "data.train_size" if cfg.data.source == "synthetic" else "data.path"
        raise data.DataError(f"{setting}: the training split is too small for the schedule: "
                             f"{exc}") from None
    out = {"cache": store.uri(), "models": sorted(processors), "train": len(train),
           "stages": len(stages)}
    if cfg.evaluation.suite is None:  # a suite brings and checks its own data
        test = load_split(cfg.data, "test")
        check_split(cfg, "test", test)
        out["test"] = len(test)
    return out
