"""Loading any `datasets` source with a column mapping, and the errors bad data gets."""

from __future__ import annotations

import io
import json

import datasets
import numpy as np
import pytest
from PIL import Image

from masters import synthetic
from masters.config import load_config
from masters.data import DataError, load_split


def _cfg(path, **columns):
    overrides = ["data.source=datasets", f"data.path={path}"]
    overrides += [f"data.columns.{k}={v}" for k, v in columns.items()]
    return load_config(None, overrides).data


def _renamed_parquet(tmp_path, split="test", n=10):
    ds = synthetic.build_split(0, split, n)
    ds = ds.rename_columns({"image": "img", "question": "q", "answer": "a", "task_type": "kind",
                            "response": "ref"})
    ds.to_parquet(tmp_path / f"{split}.parquet")
    return ds


def test_parquet_with_column_mapping(tmp_path):
    _renamed_parquet(tmp_path)
    cfg = _cfg(tmp_path, image="img", question="q", answer="a", task_type="kind",
               response="ref")
    ds = load_split(cfg, "test")
    assert set(ds.column_names) == {"id", "image", "question", "answer", "response",
                                    "task_type"}
    ref = synthetic.make_sample(0, "test", 4)
    assert ds[4]["question"] == ref.question and ds[4]["answer"] == ref.answer
    assert ds[4]["response"] == ref.response
    assert np.array_equal(np.asarray(ds[4]["image"]), ref.image)


def test_json_lines_with_image_files_and_no_optional_columns(tmp_path):
    rows = []
    for i in range(3):
        s = synthetic.make_sample(0, "validation", i)
        Image.fromarray(s.image).save(tmp_path / f"{i}.png")
        rows.append({"file": str(tmp_path / f"{i}.png"), "prompt": s.question, "label": s.answer})
    (tmp_path / "validation.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = _cfg(tmp_path, image="file", question="prompt", answer="label", id="null",
               task_type="null")
    ds = load_split(cfg, "validation")
    assert ds["id"] == ["validation-0000000", "validation-0000001", "validation-0000002"]
    assert ds["task_type"] == ["all"] * 3
    assert ds[1]["image"].size == (64, 64)


def test_missing_column_is_named(tmp_path):
    _renamed_parquet(tmp_path)
    with pytest.raises(DataError, match=r"question -> 'question'.*available"):
        load_split(_cfg(tmp_path, image="img", answer="a"), "test")


def test_missing_split_and_path(tmp_path):
    _renamed_parquet(tmp_path)
    with pytest.raises(DataError, match="no train"):
        load_split(_cfg(tmp_path, image="img", question="q", answer="a"), "train")


def _write(tmp_path, records, split="test"):
    ds = datasets.Dataset.from_list(records)
    ds.to_parquet(tmp_path / f"{split}.parquet")


def _png():
    buf = io.BytesIO()
    Image.fromarray(synthetic.make_sample(0, "test", 0).image).save(buf, format="PNG")
    return buf.getvalue()


def test_empty_answer_names_the_row(tmp_path):
    img = {"bytes": _png(), "path": None}
    _write(tmp_path, [{"image": img, "question": "q ?", "answer": "x", "id": "a"},
                      {"image": img, "question": "q ?", "answer": "  ", "id": "b"}])
    with pytest.raises(DataError, match=r"row 1 .*'answer' is empty"):
        load_split(_cfg(tmp_path), "test")


def test_duplicate_ids_name_the_row(tmp_path):
    img = {"bytes": _png(), "path": None}
    _write(tmp_path, [{"image": img, "question": "q", "answer": "x", "id": "same"},
                      {"image": img, "question": "q", "answer": "y", "id": "same"}])
    with pytest.raises(DataError, match=r"row 1 .*duplicate id 'same'"):
        load_split(_cfg(tmp_path), "test")


def test_corrupt_image_names_the_row(tmp_path):
    good = {"bytes": _png(), "path": None}
    bad = {"bytes": _png()[:40], "path": None}
    _write(tmp_path, [{"image": good, "question": "q", "answer": "x", "id": "a"},
                      {"image": bad, "question": "q", "answer": "x", "id": "b"}])
    with pytest.raises(DataError, match=r"row 1 .*unreadable image"):
        load_split(_cfg(tmp_path), "test")


def test_empty_split(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                  "answer": datasets.Value("string")})
    datasets.Dataset.from_dict({"image": [], "question": [], "answer": []},
                               features=features).to_parquet(tmp_path / "test.parquet")
    with pytest.raises(DataError, match="empty"):
        load_split(_cfg(tmp_path, id="null", task_type="null"), "test")


def test_synthetic_source_sizes():
    cfg = load_config(None, ["data.test_size=21"]).data
    assert len(load_split(cfg, "test")) == 21
    with pytest.raises(DataError, match="unknown split"):
        load_split(cfg, "dev")
