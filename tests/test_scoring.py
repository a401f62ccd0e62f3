"""The labels every score key is made of: one definition for the pipeline and the benchmark."""

from __future__ import annotations

import datasets

from masters import scoring


def _split(choices: bool):
    cols = {"id": ["a", "b", "c"], "question": ["q1", "q2", "q3"], "answer": ["1", "2", "3"]}
    if choices:
        cols["choices"] = [["x", "y"], ["x"], ["z"]]
    return datasets.Dataset.from_dict(cols)


def test_stage_labels_hold_only_the_stage_and_key_on_content():
    labels, digest = scoring.stage_labels(_split(False), {"a", "c"})
    assert labels == {"a": {"question": "q1", "answer": "1"},
                      "c": {"question": "q3", "answer": "3"}}
    assert scoring.stage_labels(_split(False), {"c", "a"})[1] == digest  # a set: no order
    assert scoring.stage_labels(_split(False), {"a", "b"})[1] != digest  # another stage
    with_choices, other = scoring.stage_labels(_split(True), {"a", "c"})
    assert with_choices["a"]["choices"] == ["x", "y"] and other != digest
