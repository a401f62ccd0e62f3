"""Embedded models through the real-checkpoint path: Auto classes, safetensors, processor."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from masters import embedded, inputs, models, synthetic


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model, processor = embedded.build("smoke", seed=3)
    path = embedded.save(model, processor, tmp_path_factory.mktemp("ckpt") / "smoke")
    return model.eval(), processor, path


def _batch(n=6, split="test"):
    return [synthetic.make_sample(0, split, i) for i in range(n)]


def test_round_trip_through_auto_classes_is_exact(saved):
    model, processor, path = saved
    loaded, loaded_proc = models.load(path)
    assert type(loaded).__name__ == "LlavaForConditionalGeneration"
    assert models.fingerprint(loaded) == models.fingerprint(model)
    samples = _batch()
    images, qs = [s.image for s in samples], [s.question for s in samples]
    a = inputs.greedy_answers(model, processor, images, qs, max_new_tokens=5)
    b = inputs.greedy_answers(loaded, loaded_proc, images, qs, max_new_tokens=5)
    assert a == b and all(isinstance(x, str) for x in a)
    enc = inputs.encode_prompts(loaded_proc, images, qs)
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, loaded(**enc).logits)


def test_embedded_family_sizes():
    tok = embedded.build_tokenizer()
    sizes = {
        n: embedded.n_params(embedded.build_model(n, tok)) for n in ("student", "mid", "large")
    }
    assert sizes["large"] >= 4 * sizes["student"]
    assert sizes["student"] < sizes["mid"] < sizes["large"]


def test_load_refuses_unsafe_or_broken_checkpoints(saved, tmp_path):
    _, _, path = saved
    with pytest.raises(models.ModelLoadError, match="does not exist"):
        models.load(tmp_path / "nope")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((path / "config.json").read_text())
    (no_weights / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(models.ModelLoadError, match="safetensors"):
        models.load(no_weights)
    remote = tmp_path / "remote"
    remote.mkdir()
    for f in path.iterdir():
        (remote / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((remote / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForImageTextToText": "modeling_evil.Evil"}
    (remote / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(models.ModelLoadError, match="trust_remote_code is off"):
        models.load(remote)
    with pytest.raises(models.ModelLoadError, match="no embedded checkpoint 'huge'"):
        models.load("embedded:huge")


def test_processor_without_chat_template_is_refused(saved, tmp_path):
    _, _, path = saved
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in path.iterdir():
        if "chat_template" not in f.name:
            (bare / f.name).write_bytes(f.read_bytes())
    for name in ("processor_config.json", "tokenizer_config.json"):
        if (bare / name).is_file():
            cfg = json.loads((bare / name).read_text())
            cfg.pop("chat_template", None)
            (bare / name).write_text(json.dumps(cfg))
    with pytest.raises(models.ModelLoadError, match="no chat template.*chat_template"):
        models.load(bare)
    model, processor = models.load(bare, processor_kwargs={
        "chat_template": embedded.CHAT_TEMPLATE})  # the config's `processor` setting
    assert processor.chat_template == embedded.CHAT_TEMPLATE


def test_fingerprint_names_the_weights_in_their_dtype(saved):
    model, _, path = saved
    loaded, _ = models.load(path)
    assert models.fingerprint(loaded) == models.fingerprint(model)
    with torch.no_grad():
        loaded.lm_head.weight[0, 0] += 1.0  # even one weight makes it another checkpoint
    assert models.fingerprint(loaded) != models.fingerprint(model)
    bf16, _ = models.load(path, dtype=torch.bfloat16)
    assert models.fingerprint(bf16) != models.fingerprint(model)


def test_a_teacher_spread_with_device_map_loads_masks_and_answers_like_a_plain_one(
        monkeypatch):
    from transformers import AutoModelForImageTextToText

    from masters.config import ConfigError, TeacherConfig, load_config
    from masters.masking import MaskedTeacher, MaskScope

    plain, processor = models.load("embedded:mid")
    seen = []
    real = AutoModelForImageTextToText.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.append({k: copy.deepcopy(kwargs.get(k)) for k in ("device_map", "max_memory")})
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", classmethod(spy))
    ref = TeacherConfig(name="mid", path="embedded:mid", device_map="auto",
                        max_memory={"cpu": "200MiB"})
    spread, _ = models.load_ref(ref)
    # accelerate placed it (here on the only device, the CPU); same weights, same answers
    assert seen == [{"device_map": "auto", "max_memory": {"cpu": "200MiB"}}]
    assert ref.max_memory == {"cpu": "200MiB"}  # the config is not rewritten
    assert {p.device.type for p in spread.parameters()} == {"cpu"}
    assert models.fingerprint(spread) == models.fingerprint(plain)
    samples = [synthetic.make_sample(0, "test", i) for i in range(6)]
    args = ([s.image for s in samples], [s.question for s in samples])
    for model in (plain, spread):
        MaskedTeacher(model, MaskScope()).set_ratio(0.3)  # in place, where each tensor lives
    assert (inputs.greedy_answers(spread, processor, *args, max_new_tokens=12)
            == inputs.greedy_answers(plain, processor, *args, max_new_tokens=12))
    with pytest.raises(ConfigError, match="max_memory is set for 'embedded:mid' but "
                       "device_map is not"):
        load_config(None, ["teachers=[{name: mid, path: 'embedded:mid', "
                           "max_memory: {cpu: 1GiB}}]"])
    with pytest.raises(ConfigError, match="student.device_map"):
        load_config(None, ["student={path: 'embedded:student', device_map: auto}"])
