"""Datasets: the built-in synthetic grid scenes, or any Hugging Face `datasets` source.

Whatever the source, a split comes back with the canonical columns `id, image, question,
answer, task_type` (and `choices`, `response` when present), images decoded as RGB PIL
images. Problems are reported with the column or row that caused them, before any model is
loaded.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from masters import synthetic
from masters.config import DataConfig

CANONICAL = ("id", "image", "question", "answer", "task_type")


class DataError(ValueError):
    """A dataset that cannot be used; the message names the column, row or path."""


def load_split(cfg: DataConfig, split: str):
    """The requested split ("train", "validation", "test") as a canonical `datasets.Dataset`."""
    if cfg.source == "synthetic":
        size = {"train": cfg.train_size, "validation": cfg.validation_size,
                "test": cfg.test_size}.get(split)
        if size is None:
            raise DataError(f"unknown split {split!r}; the synthetic data has train, "
                            "validation and test")
        return synthetic.build_split(cfg.seed, split, size)
    return canonicalize(_load_raw(cfg, split), cfg, split)


def _load_raw(cfg: DataConfig, split: str):
    import datasets

    path = Path(cfg.path)
    try:
        if path.is_dir() and any(path.glob("*.parquet")) or path.suffix == ".parquet":
            files = _split_files(path, split, "parquet")
            ds = datasets.load_dataset("parquet", data_files={split: files}, split=split)
        elif path.is_dir() and (any(path.glob("*.jsonl")) or any(path.glob("*.json"))):
            ext = "jsonl" if any(path.glob("*.jsonl")) else "json"
            ds = datasets.load_dataset("json", data_files={split: _split_files(path, split, ext)},
                                       split=split)
        elif path.is_dir():
            ds = datasets.load_dataset("imagefolder", data_dir=str(path), split=split)
        elif path.exists():
            raise DataError(f"data.path {cfg.path!r} is a file of an unsupported type "
                            "(use .parquet or a folder of parquet/json/images)")
        else:
            # Not a local path: a hub id, which needs network access.
            ds = datasets.load_dataset(cfg.path, split=split)
    except DataError:
        raise
    except (FileNotFoundError, ValueError) as exc:
        if "corresponds to no data" in str(exc):  # datasets' words for a file with no rows
            raise DataError(f"split {split!r} of data.path {cfg.path!r} is empty (no rows)"
                            ) from exc
        raise DataError(f"cannot load split {split!r} from data.path {cfg.path!r}: {exc}") from exc
    except Exception as exc:  # network/hub errors are many types; name the setting
        raise DataError(f"cannot load split {split!r} from data.path {cfg.path!r}: "
                        f"{type(exc).__name__}: {exc}") from exc
    return ds


def _split_files(path: Path, split: str, ext: str) -> list[str]:
    if path.is_file():
        return [str(path)]
    files = sorted(str(p) for p in path.glob(f"{split}*.{ext}"))
    files = files or sorted(str(p) for p in path.glob(f"{split}/*.{ext}"))
    if not files:
        raise DataError(f"no {split}*.{ext} files for split {split!r} under data.path "
                        f"{str(path)!r}")
    return files


def canonicalize(ds, cfg: DataConfig, split: str):
    """Rename mapped columns to canonical names and check every row."""
    import datasets

    cols = cfg.columns
    required = {"image": cols.image, "question": cols.question, "answer": cols.answer}
    missing = [f"{k} -> {v!r}" for k, v in required.items() if v not in ds.column_names]
    if missing:
        raise DataError(f"split {split!r} lacks mapped column(s) {', '.join(missing)}; "
                        f"available: {ds.column_names} (set data.columns.*)")
    if len(ds) == 0:
        raise DataError(f"split {split!r} of {cfg.path!r} is empty")
    rename = dict(required)
    optional = {"id": cols.id, "task_type": cols.task_type, "choices": cols.choices,
                "response": cols.response}
    for k, v in optional.items():
        if v and v in ds.column_names:
            rename[k] = v
    ds = ds.select_columns(list(dict.fromkeys(rename.values())))
    ds = ds.rename_columns({v: k for k, v in rename.items() if k != v})
    if not isinstance(ds.features["image"], datasets.Image):
        try:
            ds = ds.cast_column("image", datasets.Image())
        except Exception as exc:
            raise DataError(f"column {cols.image!r} of split {split!r} is not an image "
                            f"column ({ds.features['image']}): {exc}") from exc
    if "id" not in ds.column_names:
        ds = ds.add_column("id", [f"{split}-{i:07d}" for i in range(len(ds))])
    if "task_type" not in ds.column_names:
        ds = ds.add_column("task_type", ["all"] * len(ds))
    _check_rows(ds, split)
    return ds


def _check_rows(ds, split: str) -> None:
    for col in ("question", "answer"):
        for i, v in enumerate(ds[col]):
            if not isinstance(v, str) or not v.strip():
                raise DataError(f"row {i} of split {split!r}: column {col!r} is empty or not "
                                f"text ({v!r})")
    ids = [str(x) for x in ds["id"]]
    if len(set(ids)) != len(ids):
        seen, dup = set(), None
        for i, x in enumerate(ids):
            if x in seen:
                dup = (i, x)
                break
            seen.add(x)
        raise DataError(f"row {dup[0]} of split {split!r}: duplicate id {dup[1]!r}")
    images = ds.cast_column("image", __import__("datasets").Image(decode=False))["image"]
    for i, img in enumerate(images):
        _check_image(img, i, split)


def _check_image(raw, row: int, split: str) -> None:
    with _image_errors(row, split), _open_image(raw, row, split) as im:
        im.verify()


@contextmanager
def _image_errors(row: int, split: str):
    """PIL's errors while opening or decoding one image, as a DataError naming the row."""
    from PIL import Image, UnidentifiedImageError

    try:
        yield
    except Image.DecompressionBombError as exc:  # a few KB that decode to gigabytes
        raise DataError(f"row {row} of split {split!r}: image refused as a decompression "
                        f"bomb ({exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"row {row} of split {split!r}: unreadable image ({exc})") from exc


def _open_image(raw, row: int, split: str):
    import io

    from PIL import Image

    if raw.get("bytes"):
        return Image.open(io.BytesIO(raw["bytes"]))
    if raw.get("path"):
        return Image.open(raw["path"])
    raise DataError(f"row {row} of split {split!r}: image has neither bytes nor path")


def image_sizes(ds, split: str, *, decode: bool = False) -> list[tuple[int, int]]:
    """(width, height) of every image of a canonical split, from the headers.

    `decode=True` also decodes every pixel once (the check `load_split` leaves out for speed:
    `verify` does not catch every truncated JPEG); a failure names the row.
    """
    import datasets

    sizes = []
    for i, raw in enumerate(ds.cast_column("image", datasets.Image(decode=False))["image"]):
        with _image_errors(i, split), _open_image(raw, i, split) as im:
            if decode:
                im.load()
            sizes.append(im.size)
    return sizes
