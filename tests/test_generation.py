"""Offline generation: sampled answers, content keys, and a cache that resumes and self-heals.

Library tests use in-memory smoke models; the flow test runs `masters-generate` through a
real temporary Prefect API on saved smoke checkpoints, interrupts it, resumes it, runs it
fully cached with model loading forbidden, and regenerates a corrupted shard.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import uuid
from pathlib import Path

import pytest
import torch
from conftest import corrupt_object
from pydantic import SecretStr

from masters import cache, embedded, generation, inputs, models, synthetic
from masters.config import GenerationConfig, StorageConfig, load_config
from masters.generation import LoadedModel
from masters.masking import MaskedTeacher
from masters.schedule import Stage

ROOT = Path(__file__).resolve().parents[1]
SMALL = GenerationConfig(teacher_answers=2, student_answers=3, max_new_tokens=3, batch_size=2)


@pytest.fixture(scope="module")
def pair():
    teacher, processor = embedded.build("smoke", seed=1)
    student, _ = embedded.build("smoke", seed=2)
    return LoadedModel(teacher, processor), LoadedModel(student, processor)


def _rows(n: int, start: int = 0) -> list[dict]:
    samples = [synthetic.make_sample(0, "train", i) for i in range(start, start + n)]
    return [{"id": s.id, "question": s.question, "image": s.image} for s in samples]


def test_answers_have_counts_fields_and_repeat_with_the_seed(pair):
    teacher, student = pair
    rows = _rows(3)
    rng = torch.get_rng_state()
    records = generation.generate_shard(teacher, student, rows, teacher_name="t", ratio=0.1,
                                        cfg=SMALL, seed=7)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's random stream is untouched
    assert len(records) == 3 * (2 + 3)
    tok = teacher.processor.tokenizer
    for i, row in enumerate(rows):
        mine = records[i * 5 : (i + 1) * 5]
        assert {r["question_id"] for r in mine} == {row["id"]}
        assert [(r["source"], r["model"], r["ratio"], r["answer_index"]) for r in mine] == [
            ("teacher", "t", 0.1, 0), ("teacher", "t", 0.1, 1),
            ("student", "student", 0.0, 0), ("student", "student", 0.0, 1),
            ("student", "student", 0.0, 2)]
    for r in records:
        ids = r["token_ids"]
        assert 1 <= len(ids) <= SMALL.max_new_tokens and all(isinstance(t, int) for t in ids)
        assert tok.eos_token_id not in ids[:-1]  # cut at the first EOS, no padding after it
        assert r["text"] == tok.decode(ids, skip_special_tokens=True).strip()
    again = generation.generate_shard(teacher, student, rows, teacher_name="t", ratio=0.1,
                                      cfg=SMALL, seed=7)
    assert again == records
    other = generation.generate_shard(teacher, student, rows, teacher_name="t", ratio=0.1,
                                      cfg=SMALL, seed=8)
    assert [r["token_ids"] for r in other] != [r["token_ids"] for r in records]


def test_sampling_settings_reach_generate_in_batches(pair, monkeypatch):
    teacher, _ = pair
    calls = []
    original = teacher.model.generate

    def spy(**kwargs):
        calls.append(dict(kwargs, cached=kwargs["cache"].get_seq_length()))
        return original(**kwargs)

    monkeypatch.setattr(teacher.model, "generate", spy)
    rows = _rows(5)
    cfg = GenerationConfig(temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.3,
                           max_new_tokens=2, batch_size=2)
    out = generation.sample_answers(teacher.model, teacher.processor,
                                    [r["image"] for r in rows], [r["question"] for r in rows],
                                    4, cfg, seed=0)
    assert [len(a) for a in out] == [4] * 5
    # Many questions per call, each prompt prefilled once and its cache repeated 4 times.
    assert [c["input_ids"].shape[0] for c in calls] == [2 * 4, 2 * 4, 1 * 4]
    for c in calls:
        assert c["cached"] == c["input_ids"].shape[1] - 1  # all but the last prompt token
        assert c["do_sample"] is True and "num_return_sequences" not in c
        assert (c["temperature"], c["top_p"], c["top_k"], c["repetition_penalty"],
                c["max_new_tokens"]) == (0.7, 0.8, 20, 1.3, 2)
    assert GenerationConfig().model_dump(include={"temperature", "top_p", "top_k",
                                                  "repetition_penalty", "teacher_answers",
                                                  "student_answers"}) == {
        "temperature": 1.0, "top_p": 0.9, "top_k": 50, "repetition_penalty": 1.05,
        "teacher_answers": 4, "student_answers": 4}  # method.md section 2


def test_shared_prefill_matches_the_plain_call(pair, monkeypatch):
    """Prompt prefilled once + cache repeated == generate(num_return_sequences) on the same
    left-padded batch (greedy, so any difference in the computation would show), and the
    vision tower sees each image once instead of n times."""
    teacher, _ = pair
    rows = _rows(5)  # questions of different lengths: left padding differs per row
    batch = inputs.encode_prompts(teacher.processor, [r["image"] for r in rows],
                                  [r["question"] for r in rows])
    assert (batch["attention_mask"] == 0).any()
    tok = teacher.processor.tokenizer
    image_id = tok.convert_tokens_to_ids(teacher.processor.image_token)
    kwargs = dict(do_sample=False, max_new_tokens=4, pad_token_id=tok.pad_token_id,
                  output_scores=True, return_dict_in_generate=True)
    seen = []
    tower = teacher.model.model.vision_tower
    hook = tower.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((args[0] if args else kwargs["pixel_values"]).shape[0]),
        with_kwargs=True)
    try:
        with torch.inference_mode():
            expanded = {k: v.repeat_interleave(3, 0) for k, v in batch.items()}
            plain = teacher.model.generate(**expanded, **kwargs)
            cache = generation._prefix_cache(teacher.model, batch, image_id)
            cache.batch_repeat_interleave(3)
            shared = teacher.model.generate(
                input_ids=expanded["input_ids"], attention_mask=expanded["attention_mask"],
                cache=cache, **kwargs)
    finally:
        hook.remove()
    assert seen == [15, 5]  # plain: every repeat of every image; shared: each image once
    assert torch.equal(plain.sequences, shared.sequences)
    for a, b in zip(plain.scores, shared.scores, strict=True):
        finite = torch.isfinite(a)
        assert torch.equal(finite, torch.isfinite(b))
        assert torch.allclose(a[finite], b[finite], atol=1e-5)
    # A prompt ending in an image token cannot be split before it: the plain call is used.
    ends_in_image = dict(batch, input_ids=batch["input_ids"].clone())
    ends_in_image["input_ids"][:, -1] = image_id
    assert generation._prefix_cache(teacher.model, ends_in_image, image_id) is None


def test_generation_takes_images_of_other_sizes(pair):
    teacher, _ = pair
    rows = _rows(3)
    images, questions = [r["image"] for r in rows], [r["question"] for r in rows]
    out = generation.sample_answers(teacher.model, teacher.processor,
                                    [im[::2, ::2] for im in images], questions, 2, SMALL, 0)
    assert [len(a) for a in out] == [2, 2, 2]


def test_shard_key_changes_with_every_input():
    base = dict(teacher_fingerprint="aaaa", ratio=0.1, student_fingerprint="bbbb",
                question_ids=["q1", "q2"], gen_cfg=GenerationConfig(), teacher_name="t",
                content_digest="cccc")

    def key(**change):
        args = {**base, **change}
        return generation.shard_key(args.pop("teacher_fingerprint"), args.pop("ratio"),
                                    args.pop("student_fingerprint"), args.pop("question_ids"),
                                    args.pop("gen_cfg"), **args)

    assert key() == key() and key().startswith("shards/") and key().endswith(".jsonl")
    assert key(ratio=0.1000000001) == key()  # ratios compare after rounding, like the table
    assert key(gen_cfg=GenerationConfig(shard_size=7)) == key()  # the questions are keyed
    changes = [dict(teacher_fingerprint="aaab"), dict(student_fingerprint="bbbc"),
               dict(ratio=0.15), dict(ratio=0.0), dict(question_ids=["q1", "q3"]),
               dict(question_ids=["q2", "q1"]), dict(teacher_name="u"),
               dict(content_digest="cccd")]
    for field, value in [("teacher_answers", 3), ("student_answers", 0), ("temperature", 0.9),
                         ("top_p", 0.95), ("top_k", 40), ("repetition_penalty", 1.0),
                         ("max_new_tokens", 9), ("batch_size", 8), ("seed", 1)]:
        changes.append(dict(gen_cfg=GenerationConfig(**{field: value})))
    keys = [key(**c) for c in changes]
    assert len(set(keys)) == len(keys) and key() not in keys
    rows = _rows(2)
    edited = [dict(rows[0], image=rows[0]["image"].copy()), rows[1]]
    edited[0]["image"][0, 0, 0] ^= 1
    assert generation.rows_digest(rows) == generation.rows_digest(_rows(2))
    assert generation.rows_digest(edited) != generation.rows_digest(rows)


def test_plan_shards_cuts_the_stage_slice():
    stage = Stage(1, "t", "p", 0.1, start=3, stop=10)
    ids = [f"q{i}" for i in range(12)]
    shards = generation.plan_shards(stage, ids, 3)
    assert [(s.index, s.start, s.stop) for s in shards] == [(0, 3, 6), (1, 6, 9), (2, 9, 10)]
    assert [s.question_ids for s in shards] == [("q3", "q4", "q5"), ("q6", "q7", "q8"), ("q9",)]
    with pytest.raises(ValueError, match="split has 8"):
        generation.plan_shards(stage, ids[:8], 3)


def test_student_is_never_masked(pair):
    teacher, student = pair
    teacher = LoadedModel(copy.deepcopy(teacher.model), teacher.processor)
    original = models.fingerprint(teacher.model)
    student_fp = models.fingerprint(student.model)
    MaskedTeacher(teacher.model).set_ratio(0.2)
    assert models.fingerprint(teacher.model) != original
    generation.generate_shard(teacher, student, _rows(2), teacher_name="t", ratio=0.2,
                              cfg=SMALL, seed=0)
    assert models.fingerprint(student.model) == student_fp


class Killer:
    """Wraps generation.generate_shard: counts calls and fails every call after `budget`."""

    def __init__(self, monkeypatch, budget: int = 10**9):
        self.budget, self.calls, self._real = budget, 0, generation.generate_shard
        monkeypatch.setattr(generation, "generate_shard", self)

    def __call__(self, *a, **k):
        self.calls += 1
        if self.calls > self.budget:
            raise RuntimeError("killed mid-run")
        return self._real(*a, **k)


def _store(kind: str, tmp_path, moto) -> cache.Store:
    if kind == "local":
        return cache.open_store(StorageConfig(cache_uri=str(tmp_path / "cache")))
    endpoint, bucket = moto
    return cache.open_store(StorageConfig(
        cache_uri=f"s3://{bucket}/gen-{uuid.uuid4().hex[:8]}", endpoint_url=endpoint,
        access_key_id=SecretStr("AKIAFAKEFAKEFAKE0002"), secret_access_key=SecretStr("x")))


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_stage_resumes_after_a_kill_and_heals_corruption(kind, pair, tmp_path, request,
                                                         monkeypatch):
    moto = request.getfixturevalue("moto_s3") if kind == "s3" else None
    store = _store(kind, tmp_path, moto)
    teacher, student = pair
    stage = Stage(0, "t", "p", 0.0, start=0, stop=5)
    rows = _rows(5)
    cfg = GenerationConfig(teacher_answers=1, student_answers=1, max_new_tokens=2,
                           shard_size=2)
    killer = Killer(monkeypatch, budget=2)

    def run() -> list[dict]:
        planned = generation.plan_stage(
            store, stage, [r["id"] for r in rows], lambda s: rows[s.start : s.stop], cfg,
            teacher_fingerprint="tf", student_fingerprint="sf",
            vocab=len(student.processor.tokenizer.get_vocab()))
        for p in planned:
            if not p["cached"]:
                generation.write_shard(store, p, stage, teacher, student,
                                       rows[p["start"] : p["stop"]], cfg)
        return planned

    with pytest.raises(RuntimeError, match="killed"):
        run()
    assert len(store.list("shards/")) == 2
    killer.budget, killer.calls = 99, 0
    planned = run()
    assert [p["cached"] for p in planned] == [True, True, False]
    assert killer.calls == 1  # only the missing shard
    first = {p["key"]: cache.get_jsonl(store, p["key"]) for p in planned}
    assert sum(len(v) for v in first.values()) == 5 * 2

    corrupt_object(store, planned[1]["key"])
    killer.calls = 0
    planned = run()
    assert [p["cached"] for p in planned] == [True, False, True]
    assert killer.calls == 1
    assert {p["key"]: cache.get_jsonl(store, p["key"]) for p in planned} == first
    # Every shard has its teacher distributions; a corrupt one is recomputed from the cached
    # answers (no sampling), equal to the first.
    dists = {p["dists_key"]: store.get_bytes(p["dists_key"]) for p in planned}
    assert len(dists) == 3 and len(store.list("dists/")) == 3
    corrupt_object(store, planned[2]["dists_key"])
    killer.calls = 0
    planned = run()
    assert [p["cached"] for p in planned] == [True, True, False]
    assert killer.calls == 0
    assert store.get_bytes(planned[2]["dists_key"]) == dists[planned[2]["dists_key"]]


def _file_digest(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def _flow_overrides(tmp_path, paths, cache_uri) -> list[str]:
    # Two stages (ratio 0.05, then 0) of 4 questions each, 2 shards per stage.
    return [
        f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"tracking.artifact_location={tmp_path / 'mlartifacts'}",
        f"storage.cache_uri={cache_uri}",
        f"teachers=[{{name: t, path: {paths['teacher']}, r_max: 0.05}}]",
        f"student.path={paths['student']}",
        "masking.sweep_ratios=[0]", "data.train_size=8",
        "generation.shard_size=2", "generation.teacher_answers=2",
        "generation.student_answers=2", "generation.max_new_tokens=2",
    ]


def test_generate_flow_resumes_caches_and_regenerates(prefect_api, tmp_path, checkpoints,
                                                     monkeypatch):
    from flows import cli
    from flows.generate import generate_flow

    paths = checkpoints
    overrides = _flow_overrides(tmp_path, paths, tmp_path / "cache")
    cfg = load_config(ROOT / "configs" / "smoke.yaml", overrides)
    store = cache.open_store(cfg.storage)
    disk = {k: _file_digest(p) for k, p in paths.items()}
    loads = []
    real_load = models.load

    def load(path, **kw):
        loads.append(Path(path).name)
        return real_load(path, **kw)

    monkeypatch.setattr(models, "load", load)
    killer = Killer(monkeypatch, budget=1)

    # The run dies after one shard of four.
    with pytest.raises(RuntimeError, match="killed"):
        generate_flow(cfg.public_dict())
    assert len(store.list("shards/")) == 1

    # Resume: only the 3 missing shards are sampled; each model is loaded once to generate
    # (the stage at ratio 0 went first: a teacher's ratios are generated increasing).
    killer.budget, killer.calls, loads[:] = 99, 0, []
    manifests = generate_flow(cfg.public_dict())
    assert [(m["stage"], m["ratio"], len(m["shards"]), m["cached"], m["new"])
            for m in manifests] == [(0, 0.05, 2, 0, 2), (1, 0.0, 2, 1, 1)]
    assert killer.calls == 3
    # prune + generation for the teacher; fingerprint + generation for the student
    assert sorted(loads) == ["student", "student", "teacher", "teacher"]
    assert all(m["answers"] == 4 * 4 for m in manifests)
    for m in manifests:
        records = [r for s in m["shards"] for r in cache.get_jsonl(store, s["key"])]
        assert len(records) == 4 * 4
        assert {r["ratio"] for r in records if r["source"] == "teacher"} == {m["ratio"]}
        assert cache.get_json(store, m["manifest_key"])["shards"] == m["shards"]

    # Fully cached, fingerprints passed in: no model is loaded, nothing is sampled.
    def no_load(*a, **k):
        raise AssertionError("a model was loaded although every shard is cached")

    monkeypatch.setattr(models, "load", no_load)
    teachers = [{"teacher": "t", "fingerprint": manifests[0]["teacher_fingerprint"]}]
    killer.calls = 0
    again = generate_flow(cfg.public_dict(), teachers=teachers,
                          student_fingerprint=manifests[0]["student_fingerprint"])
    assert killer.calls == 0 and [m["new"] for m in again] == [0, 0]
    assert [m["manifest_key"] for m in again] == [m["manifest_key"] for m in manifests]

    # A corrupted shard is caught by its checksum and sampled again, identically (CLI run).
    monkeypatch.setattr(models, "load", load)
    key = manifests[1]["shards"][0]["key"]
    before = cache.get_jsonl(store, key)
    corrupt_object(store, key)
    # Not capsys: Prefect's log handler would keep its stream, closed after this test.
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["generate", "--config", str(ROOT / "configs" / "smoke.yaml"),
                         "--no-progress", *[x for o in overrides for x in ("--set", o)]]) == 0
    lines = out.getvalue().strip().splitlines()
    assert "(2 cached, 0 new)" in lines[0] and "(1 cached, 1 new)" in lines[1]
    assert killer.calls == 1 and cache.get_jsonl(store, key) == before
    assert {k: _file_digest(p) for k, p in paths.items()} == disk  # nothing written to disk


def test_generate_flow_resumes_on_s3(prefect_api, tmp_path, checkpoints, moto_s3, monkeypatch):
    """The same kill-and-resume over S3; the keys come from the environment, never parameters."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.generate import generate_flow

    endpoint, bucket = moto_s3
    monkeypatch.setenv("MASTERS_STORAGE__ACCESS_KEY_ID", "AKIAFAKEFAKEFAKE0002")
    monkeypatch.setenv("MASTERS_STORAGE__SECRET_ACCESS_KEY", "fake-secret")
    uri = f"s3://{bucket}/flow-{uuid.uuid4().hex[:8]}"
    cfg = load_config(ROOT / "configs" / "smoke.yaml",
                      [*_flow_overrides(tmp_path, checkpoints, uri),
                       f"storage.endpoint_url={endpoint}"])
    assert "secret_access_key" not in cfg.public_dict()["storage"]
    store = cache.open_store(cfg.storage)
    killer = Killer(monkeypatch, budget=2)
    with pytest.raises(RuntimeError, match="killed"):
        generate_flow(cfg.public_dict())
    assert len(store.list("shards/")) == 2
    killer.budget, killer.calls = 99, 0
    manifests = generate_flow(cfg.public_dict())
    assert killer.calls == 2 and sum(m["cached"] for m in manifests) == 2
    assert all(s["uri"].startswith(uri) for m in manifests for s in m["shards"])
    assert len(store.list("shards/")) == 4 and len(store.list("manifests/")) == 2
    with get_client(sync_client=True) as client:
        progress = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["generation-progress"])))
    assert max(progress, key=lambda a: a.created).data == 100.0
