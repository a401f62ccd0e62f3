"""`masters plan`: its formulas against a hand computation, published Qwen2.5-VL shapes, and
measurements on the embedded models (parameters, training state after one optimizer step,
tensors autograd keeps, an actual cache written by the generation code).

The Qwen2.5-VL configs below are the published config.json values (Qwen/Qwen2.5-VL-3B-, 7B-
and 32B-Instruct on the Hugging Face hub: same vision tower, Qwen2.5 language models of 2048 /
3584 / 5120 hidden); their model cards give 3.75B, 8.29B and 33.5B parameters.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.gpu_qwen import QWEN  # the published config.json shapes
from flows import cli
from masters import cache, generation, models, plan, scoring, synthetic, training
from masters.config import (
    GenerationConfig,
    MastersConfig,
    ModelRef,
    RewardsConfig,
    StorageConfig,
    TrainingConfig,
    load_config,
)
from masters.generation import LoadedModel
from masters.masking import MaskScope
from masters.schedule import Stage

ROOT = Path(__file__).resolve().parents[1]

@pytest.fixture(scope="module")
def qwen_dirs(tmp_path_factory) -> dict[str, Path]:
    """One folder per shape holding only config.json (no weights, no tokenizer)."""
    out = {}
    for name, (config, _) in QWEN.items():
        folder = tmp_path_factory.mktemp(f"qwen2.5-vl-{name}")
        (folder / "config.json").write_text(json.dumps(config))
        out[name] = folder
    return out


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


# ---- (a) the formulas against a hand computation ------------------------------------------


@pytest.fixture
def tiny_llava(tmp_path) -> Path:
    """The embedded student's config.json at a smaller, uneven shape (kv heads < heads)."""
    config = json.loads((models.CHECKPOINTS / "student" / "config.json").read_text())
    config.pop("embedded_shape")
    config["image_seq_length"] = 4
    config["text_config"].update(hidden_size=16, intermediate_size=40, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=4)
    config["vision_config"].update(hidden_size=8, intermediate_size=12, num_hidden_layers=1,
                                   num_attention_heads=2, image_size=32, projection_dim=8)
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_formulas_match_a_hand_computation(tiny_llava):
    s = plan.read_shape(ModelRef(path=str(tiny_llava)), "teacher", "tiny", MaskScope())
    # Parameters, counted by hand. CLIP tower: class embedding 8, patch conv 8*3*16*16, 5
    # positions * 8, pre/post norms 2 * 16, one layer: q k v o 4 * (64 + 8), two norms 32,
    # fc1 8*12 + 12, fc2 12*8 + 8. Projector: 8*16 + 16, 16*16 + 16. Llama: embedding 74*16,
    # per layer q 256, k 128, v 128, o 256, gate/up/down 3*16*40, norms 32; final norm 16;
    # untied LM head 74*16.
    vision = 8 + 6144 + 40 + 32 + 288 + 32 + 108 + 104
    text = 74 * 16 + 2 * (256 + 128 + 128 + 256 + 1920 + 32) + 16
    assert s.params == vision + (144 + 272) + text + 74 * 16 == 14996
    # Mask scope: 2-D matrices, no embeddings, no LM head: attention and MLP matrices of both
    # towers and the projector's.
    assert s.masked_params == (4 * 64 + 96 + 96) + (128 + 256) + 2 * (256 + 128 + 128 + 256
                                                                      + 1920) == 6208
    assert s.largest_masked == 16 * 40
    assert s.text == plan.Tower(2, 16, 40, 8, True)
    assert s.vision == plan.Tower(1, 8, 12, 8, False)
    assert (s.image_tokens, s.vision_tokens, s.pixels) == (4, 4, 3 * 32 * 32)
    # KV cache: K and V of 2 heads x 4 dims, 2 layers, 3 sequences x 10 tokens, bf16.
    assert plan.kv_cache_bytes(s, 3, 10, 2) == 2 * (2 * 4) * 2 * 3 * 10 * 2 == 1920
    assert plan.prefill_bytes(s, 3, 10, 2) == 3 * 10 * (3 * 40 + 2 * 16) * 2
    assert plan.forcing_logits_bytes(s, 3, 10, 2) == 3 * 10 * 74 * 2
    assert plan.mask_workspace_bytes(s, 2) == 640 * 3
    # Training state: weights + grads + two AdamW moments, float32.
    assert sum(plan.training_state_bytes(14996, "fp32").values()) == 14996 * (4 + 4 + 8)
    assert sum(plan.training_state_bytes(14996, "fp32", ddp=True).values()) == 14996 * 20
    assert sum(plan.training_state_bytes(14996, "bf16-mixed").values()) == 14996 * 18
    # Activations, float32, 2 sequences of 10 tokens with 3 answer tokens. Per text token and
    # layer: norms 6 x 16, q 16, k + v 2 x 8, attention output 16, MLP 4 x 40 = 304; + 4 x 16
    # outside the layers. Vision: 4 patches per image, per layer 8 x 8 + 2 x 8 + 3 x 12 = 116,
    # + 4 x 8; pixels 3072 per image. Logits at the 3 answer positions x 74 (the LM head runs
    # there only) + 9 loss copies x 3 x 74 (fp32).
    assert not plan.TRAINING_FULL_LOGITS
    a = plan.activation_bytes(s, 2, 10, 3, 4, checkpointing=False)
    assert a == {"text": 2 * 10 * (2 * 304 + 64) * 4,
                 "vision": 2 * 4 * (116 + 32) * 4 + 2 * 3072 * 4,
                 "logits": 2 * 74 * (3 * 4 + 9 * 3 * 4), "recompute": 0}
    c = plan.activation_bytes(s, 2, 10, 3, 4, checkpointing=True)
    assert c["text"] == 2 * 10 * (2 * 16 + 64) * 4  # each layer's input only
    assert c["vision"] == 2 * 4 * (8 + 32) * 4 + 2 * 3072 * 4
    assert c["recompute"] == 2 * 10 * 304 * 4 and c["logits"] == a["logits"]
    # FSDP units (masters.distributed.wrap: one per _no_split_modules block): CLIP's vision
    # embeddings 8 + 6144 + 40 = 6192 (the largest), its layer 532, each Llama layer 2720;
    # the root keeps the norms 32, projector 416, embedding 1184, final norm 16, head 1184.
    assert (s.root_params, s.largest_block) == (32 + 416 + 1184 + 16 + 1184, 6192)
    assert s.root_params + 6192 + 532 + 2 * 2720 == s.params
    assert plan.fsdp_gathered_bytes(s, "fp32") == (2832 + 2 * 6192) * 8
    assert plan.fsdp_gathered_bytes(s, "bf16-mixed") == (2832 + 2 * 6192) * 10
    # Cache: 10 answers of 3 tokens in one shard; 2-digit ids.
    full = plan.cache_bytes(10, 3, 0, 74, 1)
    assert full == {"answers": 10 * 115 + 30 * (2 + 1 + 4) + 72, "scores": 10 * 110 + 72,
                    "distributions": 30 * (74 * 4 + 4) + 10 * 8 + 72 + 320}
    assert plan.cache_bytes(10, 3, 8, 74, 1)["distributions"] == 30 * (8 * 8 + 8) + 80 + 392


# ---- (b) published Qwen2.5-VL shapes ------------------------------------------------------


@pytest.mark.parametrize("name", list(QWEN))
def test_qwen25_vl_parameter_counts_match_the_published_sizes(qwen_dirs, name):
    s = plan.read_shape(ModelRef(path=str(qwen_dirs[name])), "student", name, MaskScope())
    published = QWEN[name][1]
    assert abs(s.params - published) / published < 0.02, (name, s.params)
    config = QWEN[name][0]
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    assert s.text == plan.Tower(config["num_hidden_layers"], config["hidden_size"],
                                config["intermediate_size"],
                                config["num_key_value_heads"] * head_dim, True)
    assert s.vision == plan.Tower(32, 1280, 3420, 1280, True)
    # Dynamic resolution: no image size in the config, so the default 1024 tokens (each
    # merging 2 x 2 patches of 14 px), unless the processor's max_pixels bounds it.
    assert (s.image_tokens, s.vision_tokens) == (plan.DEFAULT_IMAGE_TOKENS, 4096)
    bounded = plan.read_shape(ModelRef(path=str(qwen_dirs[name]),
                                       processor={"max_pixels": 448 * 448}),
                              "student", name, MaskScope())
    assert bounded.image_tokens == 256
    assert s.vocab == config["vocab_size"]


def _qwen_config(qwen_dirs, student: str, teacher: str, *sets: str) -> MastersConfig:
    return load_config(overrides=[
        f"student.path={qwen_dirs[student]}",
        f"teachers=[{{name: large, path: '{qwen_dirs[teacher]}', r_max: 0.2}}]", *sets])


def test_a_7b_student_needs_the_sharded_engine_on_80_gib(qwen_dirs):
    cfg = _qwen_config(qwen_dirs, "7B", "32B", "training.batch_groups=8")
    p = plan.make_plan(cfg, world_size=8, gpu_memory_gib=80)
    rows = {r.label: r for r in p.train}
    ddp, sharded = rows["bf16-mixed DDP/8"], rows["bf16-mixed sharded/8"]
    # DDP: every rank holds 8.29B x (6 weights + 8 grads with buckets + 8 AdamW) bytes.
    state = sum(v for k, v in ddp.parts.items() if not k.startswith("activations"))
    assert state == pytest.approx(22 * 8.29e9, rel=0.02)
    assert not p.fits(ddp.total) and not p.fits(ddp.total_ckpt)
    assert p.fits(sharded.total_ckpt) and sharded.total_ckpt < 0.5 * ddp.total_ckpt
    assert p.smallest_sharded["bf16-mixed"][1] in (2, 4, 8)
    # Checkpointing cuts the activations of 8 sequences of ~1,060 tokens by more than 5x.
    assert sharded.parts["activations"] > 5 * sharded.parts["activations_ckpt"]
    # A 32B teacher (67 GB in bf16) and the 7B student (17 GB) do not share one 80 GiB GPU.
    assert not p.fits(p.generate[0].total)
    assert p.generate[0].parts["teacher"] == pytest.approx(2 * 33.45e9, rel=0.01)
    text = p.render()
    assert "bf16-mixed sharded/8" in text and "NO / NO" in text
    # The 3B student under DDP in bf16 (22 x 3.75B = 83 GB) does not fit either; fp32 on 8
    # shards does.
    small = plan.make_plan(_qwen_config(qwen_dirs, "3B", "7B", "training.batch_groups=8"),
                           gpu_memory_gib=80)
    rows = {r.label: r for r in small.train}
    assert not small.fits(rows["bf16-mixed DDP/8"].total_ckpt)
    assert small.fits(rows["fp32 sharded/8"].total_ckpt)


def test_cache_size_follows_teacher_top_k(qwen_dirs):
    top = plan.make_plan(_qwen_config(qwen_dirs, "3B", "7B", "generation.teacher_top_k=64"))
    full = plan.make_plan(_qwen_config(qwen_dirs, "3B", "7B", "generation.teacher_top_k=0"))
    answers = 2048 * 8
    tokens = answers * 8  # max_new_tokens
    assert top.cache["distributions"] == pytest.approx(tokens * (64 * 8 + 8), rel=0.01)
    assert full.cache["distributions"] == pytest.approx(tokens * (151936 * 4 + 4), rel=0.01)


@pytest.mark.parametrize("family, vision, tokens", [
    ("Qwen2VLConfig", (32, 1280, 5120, 1280, False), (1024, 4096)),  # embed_dim, mlp_ratio
    ("InternVLConfig", (24, 1024, 4096, 1024, False), (256, 1024)),  # patch [14, 14], 0.5
    ("Mistral3Config", (24, 1024, 4096, 1024, True), (3025, 12100)),  # merge at top level
    ("Idefics3Config", (12, 1152, 3072, 1152, False), (12, 49)),  # scale_factor 2
])
def test_other_families_config_layouts_are_read(tmp_path, family, vision, tokens):
    """Default configs of families whose vision numbers live under other names."""
    import transformers

    getattr(transformers, family)().save_pretrained(tmp_path)
    s = plan.read_shape(ModelRef(path=str(tmp_path)), "student", family, MaskScope())
    assert s.vision == plan.Tower(*vision) and (s.image_tokens, s.vision_tokens) == tokens
    assert s.text.gated and s.params > 10**9


# ---- (c) against measurements on the embedded models --------------------------------------


def _groups(processor, n: int = 16, answers: int = 8) -> list[training.Group]:
    tok = processor.tokenizer
    words = ["red", "blue", "circle", "yes"]
    groups = []
    for k in range(n):
        s = synthetic.make_sample(0, "train", k)
        ans = [tok(words[(k + j) % 4], add_special_tokens=False)["input_ids"]
               + [tok.eos_token_id] for j in range(answers)]
        groups.append(training.Group(s.id, np.asarray(s.image), s.question, ans,
                                     [float(j % 2) for j in range(answers)]))
    return groups


@pytest.fixture(scope="module")
def embedded_groups():
    """16 questions x 8 answers with the mid teacher's whole-vocabulary distributions."""
    from masters import distributions

    student, processor = models.load("embedded:student")
    teacher, t_processor = models.load("embedded:mid")
    groups = _groups(processor)
    distributions.attach(LoadedModel(teacher, t_processor), LoadedModel(student, processor),
                         groups, top_k=0)
    return processor, groups


def test_parameter_counts_are_exact_on_the_embedded_models():
    from masters.masking import in_scope

    cfg = MastersConfig()
    for ref, name in [(cfg.student, "student")] + [(t, t.name) for t in cfg.teachers]:
        s = plan.read_shape(ref, "student", name, MaskScope())
        model, _ = models.load(ref.path)
        assert s.params == sum(p.numel() for p in model.parameters()), name
        masked = in_scope(model, MaskScope())[0]  # what prune masks, on the loaded weights
        assert s.masked_params == sum(t.numel() for t in masked.values()), name
        assert s.largest_masked == max(t.numel() for t in masked.values()), name


@pytest.mark.parametrize("checkpointing", [False, True])
def test_training_memory_matches_one_measured_step(embedded_groups, checkpointing):
    """Weights + grads + AdamW state after one optimizer step, and the bytes autograd keeps
    during the forward (saved-tensor hooks; counting stops at the first unpack, i.e. when
    backward starts), against the estimates (within 25%; measured ratios ~1.00)."""
    processor, groups = embedded_groups
    student, _ = models.load("embedded:student")
    if checkpointing:  # reentrant: its saved inputs pass through the hooks
        student.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": True})
    trainer = training.MastersTrainer(student, processor, TrainingConfig(batch_groups=16))
    trainer.setup()
    params = {p.untyped_storage().data_ptr() for p in student.parameters()}
    saved, state = {}, {"backward": False}

    def pack(t):
        storage = t.untyped_storage()
        if not state["backward"] and storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    def unpack(t):
        state["backward"] = True
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        trainer.loss_step(groups, Stage(0, "mid", "embedded:mid", 0.0, 0, 16))
    measured_state = sum(t.numel() * t.element_size() for p in student.parameters()
                         for t in (p, p.grad) if t is not None)
    measured_state += sum(v.numel() * v.element_size() for s in trainer.opt.state.values()
                          for v in s.values() if torch.is_tensor(v))
    shape = plan.read_shape(MastersConfig().student, "student", "student", MaskScope())
    estimate = sum(plan.training_state_bytes(shape.params, "fp32").values())
    assert 0.75 < estimate / measured_state < 1.25, (estimate, measured_state)

    enc = training.encode_answers(processor, groups, "cpu")
    rows, tokens = enc.inputs["input_ids"].shape
    act = plan.activation_bytes(shape, rows, tokens, enc.targets.shape[1], 4, checkpointing)
    kept = sum(v for k, v in act.items() if k != "recompute")
    assert 0.75 < kept / sum(saved.values()) < 1.25, (act, sum(saved.values()))


def test_cache_estimate_matches_a_cache_written_by_generation(tmp_path):
    """Two shards of 4 questions x (2 + 2) answers generated, teacher-forced and scored by
    the pipeline's own functions, on the embedded student and mid teacher."""
    student, teacher = (LoadedModel(*models.load(f"embedded:{n}")) for n in ("student", "mid"))
    rows = [{"id": s.id, "question": s.question, "image": s.image}
            for s in (synthetic.make_sample(0, "train", i) for i in range(8))]
    labels = {r["id"]: {"question": r["question"], "answer": "red"} for r in rows}
    stage = Stage(0, "mid", "embedded:mid", 0.0, 0, 8)
    for top_k in (0, 8):
        root = tmp_path / f"cache-{top_k}"
        store = cache.open_store(StorageConfig(cache_uri=str(root)))
        cfg = GenerationConfig(teacher_answers=2, student_answers=2, max_new_tokens=2,
                               shard_size=4, batch_size=8, teacher_top_k=top_k)
        planned = generation.plan_stage(
            store, stage, [r["id"] for r in rows], lambda sh: rows[sh.start : sh.stop], cfg,
            teacher_fingerprint="t", student_fingerprint="s", vocab=74)
        for p in planned:
            generation.write_shard(store, p, stage, teacher, student,
                                   rows[p["start"] : p["stop"]], cfg)
            scored = scoring.score_records(cache.get_jsonl(store, p["key"]), labels,
                                           RewardsConfig())
            cache.put_jsonl(store, p["key"].replace("shards/", "scores/", 1), scored)
        on_disk = {kind: sum(f.stat().st_size for f in (root / kind).rglob("*") if f.is_file())
                   for kind in ("shards", "scores", "dists")}
        est = plan.cache_bytes(8 * 4, 2, top_k, 74, len(planned))
        for kind, key in (("shards", "answers"), ("scores", "scores"),
                          ("dists", "distributions")):
            assert 0.75 < est[key] / on_disk[kind] < 1.25, (top_k, kind, est, on_disk)


# ---- the command ----------------------------------------------------------------------------


def test_plan_command_prints_every_step_for_the_embedded_config():
    rc, out, err = _cli(["plan", "--config", str(ROOT / "configs/embedded.yaml"),
                         "--gpu-memory", "80", "--world-size", "2"])
    assert rc == 0, err
    for section in ("models", "prune:", "generate:", "train:", "evaluate:", "cache on disk:"):
        assert section in out
    assert "80 GiB per GPU (--gpu-memory)" in out and "229.82 K" in out
    assert "fp32 sharded/2" in out and "NO" not in out  # everything embedded fits


def test_plan_names_the_model_whose_config_json_is_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    rc, out, err = _cli(["plan", "--set", f"teachers.1.path={tmp_path / 'empty'}"])
    assert rc == 1 and out == ""
    assert err.startswith("masters: ModelLoadError: teachers.1.path (large): no config.json")
    assert str(tmp_path / "empty") in err
    with pytest.raises(SystemExit) as exc, contextlib.redirect_stderr(io.StringIO()):
        cli.main(["plan", "--world-size", "0"])
    assert exc.value.code == 2


def test_micro_batches_size_the_activations_of_one_forward(qwen_dirs):
    """training.micro_batch_groups: a forward holds that many groups' activations, not the
    rank's whole share (4 groups at 2 ranks of batch_groups 8); the state is unchanged."""
    whole = plan.make_plan(_qwen_config(qwen_dirs, "3B", "7B", "training.batch_groups=8"),
                           world_size=2, gpu_memory_gib=80)
    micro = plan.make_plan(_qwen_config(qwen_dirs, "3B", "7B", "training.batch_groups=8",
                                        "training.micro_batch_groups=1"),
                           world_size=2, gpu_memory_gib=80)
    for a, b in zip(whole.train, micro.train, strict=True):
        assert a.label == b.label
        for k in ("activations", "activations_ckpt"):
            assert b.parts[k] * 4 == a.parts[k]
        assert {k: v for k, v in a.parts.items() if not k.startswith("activations")} == {
            k: v for k, v in b.parts.items() if not k.startswith("activations")}
    # The sharded rows also count what FSDP holds gathered: the root (embeddings, head,
    # merger) and two blocks, 8 bytes per parameter in fp32.
    shape = whole.shapes[0]
    sharded = {r.label: r for r in whole.train}["fp32 sharded/2"]
    assert sharded.parts["gathered"] == (shape.root_params + 2 * shape.largest_block) * 8
    table = shape.vocab * QWEN["3B"][0]["hidden_size"]  # tied embedding / head, in the root
    assert table < shape.root_params < 1.2 * table
    assert "micro_batch_groups=1" in micro.render()
