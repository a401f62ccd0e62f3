"""The embedded model family: tiny LLaVA-style VLMs built offline on real transformers classes.

A CLIP vision tower, a two-layer projector and a Llama causal LM inside
`LlavaForConditionalGeneration`, a word-level tokenizer trained locally with `tokenizers`,
and a `LlavaProcessor`. Saved with `save_pretrained`, they load back through
`AutoModelForImageTextToText` / `AutoProcessor` exactly like a hub checkpoint, so every later
step (masking, generation, rewards, training, registry) runs the real-checkpoint code path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from masters import synthetic

PAD, UNK, BOS, EOS, IMAGE = "<pad>", "<unk>", "<s>", "</s>", "<image>"

# Question first, image after it: image tokens can then attend to the question, which the
# notes measured to help tiny models bind words to regions.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}<s> user :"
    "{% for c in message['content'] %}"
    "{% if c['type'] == 'text' %} {{ c['text'] }}{% elif c['type'] == 'image' %} <image>{% endif %}"
    "{% endfor %}"
    "{% elif message['role'] == 'assistant' %} assistant :"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %} {{ c['text'] }}{% endif %}"
    "{% endfor %} </s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %} assistant :{% endif %}"
)


@dataclass(frozen=True)
class ModelShape:
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_ffn: int
    text_hidden: int
    text_layers: int
    text_heads: int
    text_ffn: int


# "large" is >= 4x "student" in parameters (the paper's 38B -> 8B ratio); "mid" in between.
SHAPES: dict[str, ModelShape] = {
    "smoke": ModelShape(16, 1, 2, 32, 16, 1, 2, 32),
    "student": ModelShape(64, 2, 2, 128, 64, 2, 2, 160),
    "mid": ModelShape(96, 2, 4, 256, 96, 3, 4, 256),
    "large": ModelShape(128, 3, 4, 384, 128, 4, 4, 384),
}


def build_tokenizer(named: dict[str, str] | None = None, extra: Sequence[str] = (),
                    size: int = 0):
    """Word-level tokenizer over the synthetic vocabulary, wrapped for transformers.

    `named` become `extra_special_tokens` (`tok.image_token`, ... as on the hub; default: the
    LLaVA image token); `extra` are further special tokens a processor looks up by string
    (tests/families.py builds each real family's tokenizer this way). `size`: pad the word
    list with filler words `w0`, `w1`, ... to `size` tokens in all, for a real model's
    vocabulary width (Qwen2.5-VL's 151,665 in benchmarks.gpu_qwen)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    named = {"image_token": IMAGE} if named is None else named
    specials = list(dict.fromkeys([PAD, UNK, BOS, EOS, *named.values(), *extra]))
    words = ["user", "assistant", ":"] + synthetic.vocabulary()  # chat-template words first
    words = list(dict.fromkeys(words))
    words += [f"w{i}" for i in range(size - len(specials) - len(words))]
    vocab = {tok: i for i, tok in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        extra_special_tokens=named,
        padding_side="right",
    )


def build_processor():
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    image_processor = CLIPImageProcessorPil(
        size={"height": synthetic.IMAGE_SIZE, "width": synthetic.IMAGE_SIZE},
        crop_size={"height": synthetic.IMAGE_SIZE, "width": synthetic.IMAGE_SIZE},
        do_center_crop=False,
        do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(),
        patch_size=synthetic.CELL,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by "default"
        chat_template=CHAT_TEMPLATE,
    )


def build_model(shape: ModelShape | str, tokenizer, seed: int = 0):
    """A randomly initialised LlavaForConditionalGeneration of the given shape."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    if isinstance(shape, str):
        shape = SHAPES[shape]
    n_patches = (synthetic.IMAGE_SIZE // synthetic.CELL) ** 2
    vision = CLIPVisionConfig(
        hidden_size=shape.vision_hidden,
        intermediate_size=shape.vision_ffn,
        num_hidden_layers=shape.vision_layers,
        num_attention_heads=shape.vision_heads,
        image_size=synthetic.IMAGE_SIZE,
        patch_size=synthetic.CELL,
        projection_dim=shape.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.text_hidden,
        intermediate_size=shape.text_ffn,
        num_hidden_layers=shape.text_layers,
        num_attention_heads=shape.text_heads,
        num_key_value_heads=shape.text_heads,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_seq_length=n_patches,
        projector_hidden_act="gelu",
    )
    config.embedded_shape = asdict(shape)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def build(shape: ModelShape | str, seed: int = 0):
    processor = build_processor()
    return build_model(shape, processor.tokenizer, seed), processor


def save(model, processor, path: str | Path, dtype=None) -> Path:
    """save_pretrained both halves (safetensors), optionally cast (fp16 for shipping)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(path, safe_serialization=True)
    processor.save_pretrained(path)
    return path


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())
