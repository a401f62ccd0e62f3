"""MLflow registry on a real sqlite store: lineage tags, alias-gated promotion, pyfunc serving."""

from __future__ import annotations

import base64
import io
import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from masters import embedded, inputs, models, pyfunc_model, registry, synthetic
from masters.config import TrackingConfig, load_config
from masters.tracking import Tracker

NAME = "student-under-test"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model, processor = embedded.build("smoke", seed=3)
    return str(embedded.save(model, processor, tmp_path_factory.mktemp("ckpt") / "student"))


@pytest.fixture
def tracker(tmp_path):
    return Tracker(TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                                  artifact_location=str(tmp_path / "mlartifacts"),
                                  experiment="registry-test", registered_model=NAME))


def _register(tracker, checkpoint, accuracy, lineage=None):
    run_id = tracker.start_run("register")
    try:
        return registry.register_student(tracker, run_id, checkpoint, NAME, lineage or {},
                                         {"test/accuracy": accuracy},
                                         model_config={"max_new_tokens": 3})
    finally:
        tracker.end_run(run_id)


def _bare_version(tracker, accuracy) -> str:
    """A version with only a gate metric: promotion reads tags, not weights."""
    c = tracker.client
    first = c.get_model_version(NAME, "1")
    mv = c.create_model_version(NAME, source=first.source,
                                tags={"metrics.test/accuracy": repr(accuracy)})
    return str(mv.version)


def _champion(tracker):
    return registry.champion_version(tracker.client, NAME)


def test_gate_idempotence_and_rollback(tracker, checkpoint):
    c = tracker.client
    v1 = _register(tracker, checkpoint, 0.5)
    d1 = registry.promote(c, NAME, v1, "test/accuracy", margin=0.05)
    assert d1["promoted"] and d1["compared"] is None and _champion(tracker) == v1

    v2 = _register(tracker, checkpoint, 0.4)  # worse: challenger only
    d2 = registry.promote(c, NAME, v2, "test/accuracy", margin=0.05)
    assert not d2["promoted"] and d2["decision"] == "challenger"
    assert _champion(tracker) == v1
    assert str(c.get_model_version_by_alias(NAME, "challenger").version) == v2
    tags = c.get_model_version(NAME, v2).tags
    assert tags["promotion.decision"] == "challenger" and tags["promotion.compared"] == v1
    assert float(tags["promotion.value"]) == 0.4
    assert float(tags["promotion.champion_value"]) == 0.5
    assert float(tags["promotion.margin"]) == 0.05

    v3 = _bare_version(tracker, 0.54)  # better, but by less than the margin
    assert not registry.promote(c, NAME, v3, "test/accuracy", margin=0.05)["promoted"]
    assert _champion(tracker) == v1

    v4 = _bare_version(tracker, 0.55)  # better by exactly the margin: passes
    d4 = registry.promote(c, NAME, v4, "test/accuracy", margin=0.05)
    assert d4["promoted"] and d4["compared"] == v1 and _champion(tracker) == v4
    assert c.get_model_version(NAME, v4).tags["promotion.previous_champion"] == v1

    # Idempotent: the same decision back, no alias moves, even with a laxer gate now.
    assert registry.promote(c, NAME, v2, "test/accuracy", margin=0.0) == d2
    assert registry.promote(c, NAME, v4, "test/accuracy", margin=0.05) == d4
    assert _champion(tracker) == v4
    assert str(c.get_model_version_by_alias(NAME, "challenger").version) == v4

    assert registry.rollback(c, NAME)["version"] == v1 and _champion(tracker) == v1
    with pytest.raises(ValueError, match="nothing to roll back"):
        registry.rollback(c, NAME)  # v1 replaced no champion
    assert registry.set_champion(c, NAME, v2)["previous"] == v1 and _champion(tracker) == v2
    assert registry.rollback(c, NAME)["version"] == v1


def test_first_version_must_beat_the_initial_student(tracker, checkpoint):
    c = tracker.client
    worse = str(_register(tracker, checkpoint, 0.55))
    d = registry.promote(c, NAME, worse, "test/accuracy", baseline=0.646)
    assert not d["promoted"] and d["champion_value"] == 0.646
    assert registry.champion_version(c, NAME) is None  # nothing crowned
    assert str(c.get_model_version_by_alias(NAME, "challenger").version) == worse
    better = _bare_version(tracker, 0.70)
    assert registry.promote(c, NAME, better, "test/accuracy", baseline=0.646)["promoted"]
    assert registry.champion_version(c, NAME) == better


def test_lower_is_better_and_missing_metric(tracker, checkpoint):
    c = tracker.client
    v1 = _register(tracker, checkpoint, 0.3)
    assert registry.promote(c, NAME, v1, "test/accuracy", greater_is_better=False)["promoted"]
    v2 = _bare_version(tracker, 0.2)
    assert registry.promote(c, NAME, v2, "test/accuracy", greater_is_better=False)["promoted"]
    mv = c.create_model_version(NAME, source=c.get_model_version(NAME, "1").source)
    d = registry.promote(c, NAME, mv.version, "test/accuracy")
    assert not d["promoted"] and "no test/accuracy" in d["reason"]
    assert _champion(tracker) == v2


def test_champion_moved_during_promotion_is_compared_again(tracker, checkpoint):
    c = tracker.client
    v1 = _register(tracker, checkpoint, 0.5)
    registry.promote(c, NAME, v1, "test/accuracy")
    rival, mine = _bare_version(tracker, 0.9), _bare_version(tracker, 0.6)

    class Racing:
        """Another promoter moves champion to `rival` just before our re-read."""

        def __init__(self):
            self.reads = 0

        def __getattr__(self, attr):
            return getattr(c, attr)

        def get_model_version_by_alias(self, name, alias):
            self.reads += 1
            if self.reads == 2:
                c.set_registered_model_alias(NAME, "champion", rival)
            return c.get_model_version_by_alias(name, alias)

    d = registry.promote(Racing(), NAME, mine, "test/accuracy")
    assert not d["promoted"] and d["compared"] == rival and _champion(tracker) == rival


def test_lineage_tags_without_secrets(tracker, checkpoint, monkeypatch, tmp_path):
    secret = "s3cr3t-do-not-log-9f2c"
    monkeypatch.setenv("MASTERS_STORAGE__SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("MASTERS_STORAGE__ACCESS_KEY_ID", "AKIAKEYIDNOTLOGGED")
    cfg = load_config(None, [f"storage.cache_uri={tmp_path / 'cache'}"])
    assert cfg.storage.secret_access_key.get_secret_value() == secret
    public = cfg.public_dict()
    schedule = [{"teacher": "mid", "ratio": 0.2, "start": 0, "stop": 10},
                {"teacher": "mid", "ratio": 0.15, "start": 10, "stop": 20}]
    lineage = registry.lineage_tags(
        public, schedule=schedule, split_fingerprints={"train": "aaaa", "test": "bbbb"},
        manifests=[{"manifest_uri": "s3://b/manifests/1.json"}],
        teachers=[{"teacher": "mid", "fingerprint": "f00d"}],
        extra={"masters.git_sha": "abc123", "prefect.flow_run_id": "run-1",
               "masters.train_key": "k1", "masters.notes": "x" * 20000})
    run_id = tracker.start_run("register")
    tracker.log_params(run_id, public)
    version = registry.register_student(tracker, run_id, checkpoint, NAME, lineage,
                                        {"test/accuracy": 0.25, "test/retention": 0.5})
    tracker.end_run(run_id)
    tags = tracker.client.get_model_version(NAME, version).tags
    assert json.loads(tags["masters.teachers"]) == ["mid", "large"]
    assert tags["masters.teacher.mid.r_max"] == "0.2"
    assert tags["masters.teacher.mid.fingerprint"] == "f00d"
    assert json.loads(tags["masters.schedule"]) == [["mid", 0.2, 10], ["mid", 0.15, 10]]
    assert tags["masters.data.fingerprint.test"] == "bbbb"
    assert json.loads(tags["masters.cache.manifests"]) == ["s3://b/manifests/1.json"]
    assert json.loads(tags["masters.rewards"])["scorer"] == "phrase_match"
    assert tags["masters.git_sha"] == "abc123" and tags["prefect.flow_run_id"] == "run-1"
    assert float(tags["metrics.test/accuracy"]) == 0.25
    assert len(tags["masters.notes"]) == registry.TAG_VALUE_MAX
    run = tracker.client.get_run(run_id)
    logged = [*tags.values(), *run.data.params.values(), *run.data.tags.values()]
    assert not [v for v in logged if secret in v or "AKIAKEYIDNOTLOGGED" in v]
    # The same weights on the same test data are not registered twice.
    again = tracker.start_run("register")
    assert registry.register_student(tracker, again, checkpoint, NAME, lineage, {}) == version
    tracker.end_run(again)


def test_champion_loads_and_answers_like_the_checkpoint(tracker, checkpoint, tmp_path):
    v1 = _register(tracker, checkpoint, 0.5)
    registry.promote(tracker.client, NAME, v1, "test/accuracy")
    samples = [synthetic.make_sample(0, "test", i) for i in range(3)]
    png = []
    for s in samples:
        buf = io.BytesIO()
        Image.fromarray(s.image).save(buf, format="PNG")
        png.append(buf.getvalue())
    path = tmp_path / "image.png"
    path.write_bytes(png[2])
    frame = pd.DataFrame({"image": [base64.b64encode(png[0]).decode(), png[1], str(path)],
                          "question": [s.question for s in samples]})
    served = mlflow.pyfunc.load_model(registry.model_uri(NAME, alias="champion"))
    got = served.predict(frame)

    model, processor = models.load(checkpoint)
    want = inputs.greedy_answers(model, processor, [s.image for s in samples],
                                 [s.question for s in samples], 3)
    assert list(got) == want
    # A differently sized image goes to the processor as it is (it resizes), not rejected.
    big = np.asarray(Image.fromarray(samples[0].image).resize((128, 128)))
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format="PNG")
    one = pd.DataFrame({"image": [base64.b64encode(buf.getvalue()).decode()],
                        "question": [samples[0].question]})
    assert len(served.predict(one, params={"max_new_tokens": 1})) == 1


def test_served_model_uses_the_recorded_dtype(tracker, checkpoint):
    import torch

    run_id = tracker.start_run("register")
    with tracker.ended(run_id):
        version = registry.register_student(
            tracker, run_id, checkpoint, NAME, {}, {"test/accuracy": 0.5},
            model_config={"max_new_tokens": 3, "dtype": "bfloat16"})
    served = mlflow.pyfunc.load_model(registry.model_uri(NAME, version=version))
    inner = served.unwrap_python_model()
    assert {p.dtype for p in inner.model.parameters()} == {torch.bfloat16}
    samples = [synthetic.make_sample(0, "test", i) for i in range(2)]
    frame = pd.DataFrame({"image": [pyfunc_model.png_base64(s.image) for s in samples],
                          "question": [s.question for s in samples]})
    model, processor = models.load(checkpoint, dtype=torch.bfloat16)
    assert list(served.predict(frame)) == inputs.greedy_answers(
        model, processor, [s.image for s in samples], [s.question for s in samples], 3)


def test_tag_value_truncates_and_encodes():
    assert registry.tag_value({"b": 1, "a": [1, 2]}) == '{"a": [1, 2], "b": 1}'
    assert len(registry.tag_value("y" * 10, limit=8)) == 8
    long = registry.tag_value("z" * 9000)
    assert len(long) == registry.TAG_VALUE_MAX and long.endswith("truncated, 9000 chars]")
