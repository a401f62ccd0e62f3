"""Tiny random-init student/teacher checkpoints of real Hugging Face VLM families, offline.

Each family builder returns a randomly initialised `*ForConditionalGeneration` of a real
transformers architecture plus that family's own processor class, around a word-level
tokenizer built locally with `tokenizers` over the synthetic vocabulary (the approach of
`masters.embedded`, generalised to each family's special tokens). `build_pair` saves a
student and a larger teacher with `save_pretrained`; both folders load back through
`AutoModelForImageTextToText` / `AutoProcessor` like hub checkpoints.

The two halves of a pair share one tokenizer but, by default, not their embedding row
counts: `vocab_size` is padded past `len(tokenizer)` by 8 rows for the student and 24 for
the teacher, as Qwen2.5-VL 3B and 7B differ (151936 vs 152064 rows over one tokenizer).

Every family gets the embedded models' word-level chat template with the family's own image
placeholder, e.g. "<s> user : <image> how many objects are there ? assistant :" (PaliGemma
puts the images first and leaves BOS to its processor, see `paligemma`).

What the processor makes of one 48x32 (w x h) and one 64x64 image, and the keys it returns
besides input_ids / attention_mask / pixel_values:

    family           image tokens  extra keys
    idefics3         4 / 4         pixel_attention_mask      (+3 wrapper tokens per image)
    llava_next       14 / 24       image_sizes               (any-resolution tiles)
    gemma3           4 / 4         token_type_ids            (+boi/eoi per image)
    paligemma        16 / 16       token_type_ids, labels
    qwen2_vl, qwen2_5_vl, qwen3_vl   6 / 16   image_grid_thw, mm_token_type_ids
    smolvlm          4 / 4         pixel_attention_mask
    internvl         12 / 20       -                         (tiles + thumbnail)
    llava_onevision  14 / 24       image_sizes, batch_num_images
    mistral3         6 / 16        image_sizes               (+[IMG_BREAK]/[IMG_END] per row)

The last seven need torchvision (their processors hold a torchvision video processor;
PixtralProcessor is itself torchvision-only); `available` names what is missing.
tests/test_families.py runs the whole pipeline on every family.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from masters.embedded import BOS, EOS, build_tokenizer, save


@dataclass(frozen=True)
class Size:
    hidden: int
    layers: int
    heads: int
    ffn: int
    vision_hidden: int
    vision_layers: int
    extra_rows: int  # embedding rows past len(tokenizer)
    seed: int


STUDENT = Size(
    32, layers=1, heads=2, ffn=64, vision_hidden=32, vision_layers=1, extra_rows=8, seed=0
)
TEACHER = Size(
    64, layers=2, heads=4, ffn=128, vision_hidden=48, vision_layers=2, extra_rows=24, seed=1
)


# --- shared helpers ----------------------------------------------------------------------


def chat_template(image: str, bos: str = BOS, images_first: bool = False) -> str:
    """`masters.embedded.CHAT_TEMPLATE` with another image placeholder.

    `images_first` moves every image of the conversation to the very front (PaliGemma's
    "<image>...<bos>prefix" layout); `bos` opens each user turn unless empty.
    """
    front = (
        "{% for message in messages %}{% for c in message['content'] %}"
        f"{{% if c['type'] == 'image' %}}{image}{{% endif %}}"
        "{% endfor %}{% endfor %}"
    )
    inline = "" if images_first else f"{{% elif c['type'] == 'image' %}} {image}"
    return (
        (front if images_first else "")
        + "{% for message in messages %}"
        + f"{{% if message['role'] == 'user' %}}{bos} user :"
        + "{% for c in message['content'] %}"
        + f"{{% if c['type'] == 'text' %}} {{{{ c['text'] }}}}{inline}{{% endif %}}"
        + "{% endfor %}"
        + "{% elif message['role'] == 'assistant' %} assistant :"
        + "{% for c in message['content'] %}{% if c['type'] == 'text' %} {{ c['text'] }}{% endif %}"
        + f"{{% endfor %}} {EOS}"
        + "{% endif %}{% endfor %}"
        + "{% if add_generation_prompt %} assistant :{% endif %}"
    )


def tokenizer(named: dict[str, str], extra: list[str] = (), size: int = 0):
    """The embedded word-level tokenizer with a family's special tokens (`named` become
    `extra_special_tokens`, so `tok.image_token`, `tok.boi_token_id`... exist as on the hub);
    `size`: padded to that many tokens (`build_tokenizer`)."""
    return build_tokenizer(named, extra, size)


def text_kwargs(size: Size, tok) -> dict:
    """Decoder arguments common to the Llama / Gemma / Qwen / Mistral text configs."""
    return dict(
        vocab_size=len(tok) + size.extra_rows,
        hidden_size=size.hidden,
        intermediate_size=size.ffn,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        head_dim=size.hidden // size.heads,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )


def vision_kwargs(size: Size, image_size, patch_size) -> dict:
    """Encoder arguments common to the CLIP / SigLIP / Idefics3 / Pixtral / InternViT configs."""
    return dict(
        hidden_size=size.vision_hidden,
        intermediate_size=2 * size.vision_hidden,
        num_hidden_layers=size.vision_layers,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )


def instantiate(cls, config, size: Size, tok):
    import torch

    torch.manual_seed(size.seed)
    model = cls(config).eval()
    gen = model.generation_config
    gen.pad_token_id, gen.bos_token_id, gen.eos_token_id = (
        tok.pad_token_id,
        tok.bos_token_id,
        tok.eos_token_id,
    )
    return model


# --- families: each (size, processor=None) -> (model, processor) -------------------------
# A builder given a processor reuses it (and its tokenizer): that is how a pair shares one.


def idefics3(size: Size, processor=None):
    """Idefics3: SigLIP-like tower, pixel-shuffle connector (scale 2), Llama decoder.

    No image splitting: every image is resized to one 64 px square, 16 patches -> 4 tokens,
    written <fake_token_around_image><global-img><image>x4<fake_token_around_image>.
    """
    import transformers as hf

    image, patch, scale = 64, 16, 2
    if processor is None:
        rows_cols = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
        wrappers = ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]
        edge = {"longest_edge": image}
        processor = hf.Idefics3Processor(
            image_processor=hf.Idefics3ImageProcessorPil(
                size=edge, max_image_size=edge, do_image_splitting=False
            ),
            tokenizer=tokenizer({"image_token": "<image>"}, wrappers + rows_cols),
            image_seq_len=(image // patch) ** 2 // scale**2,
            chat_template=chat_template("<image>"),
        )
    tok = processor.tokenizer
    config = hf.Idefics3Config(
        vision_config=vision_kwargs(size, image, patch),
        text_config=hf.LlamaConfig(**text_kwargs(size, tok), tie_word_embeddings=False),
        image_token_id=tok.image_token_id,
        scale_factor=scale,
        pad_token_id=tok.pad_token_id,
    )
    return instantiate(hf.Idefics3ForConditionalGeneration, config, size, tok), processor


def llava_next(size: Size, processor=None):
    """LLaVA-NeXT: CLIP tower on 32 px tiles (patch 16, CLS dropped), any-resolution grid.

    A 48x32 (w x h) image picks the 32x64 (h x w) pinpoint: 4 base + 10 unpadded/newline
    tokens = 14; a 64x64 one the 64x64 pinpoint: 4 + 16 + 4 = 24.
    """
    import transformers as hf

    image, patch = 32, 16
    pinpoints = [[32, 32], [32, 64], [64, 32], [64, 64]]
    if processor is None:
        processor = hf.LlavaNextProcessor(
            image_processor=hf.LlavaNextImageProcessorPil(
                size={"shortest_edge": image},
                crop_size={"height": image, "width": image},
                image_grid_pinpoints=pinpoints,
            ),
            tokenizer=tokenizer({"image_token": "<image>"}),
            patch_size=patch,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=chat_template("<image>"),
        )
    tok = processor.tokenizer
    vision = hf.CLIPVisionConfig(
        **vision_kwargs(size, image, patch), projection_dim=size.vision_hidden
    )
    config = hf.LlavaNextConfig(
        vision_config=vision,
        text_config=hf.LlamaConfig(**text_kwargs(size, tok), tie_word_embeddings=False),
        image_token_index=tok.image_token_id,
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_seq_length=(image // patch) ** 2,
    )
    return instantiate(hf.LlavaNextForConditionalGeneration, config, size, tok), processor


def gemma3(size: Size, processor=None):
    """Gemma 3: SigLIP tower (32 px, patch 8: 16 patches) average-pooled to 4 soft tokens.

    The text holds <start_of_image> where an image goes (that is `processor.image_token`,
    and `processor.image_token_id` is its id); the processor expands it to
    <start_of_image><image_soft_token>x4<end_of_image>, and `config.image_token_id` is the
    soft token. It returns `token_type_ids` (1 on soft tokens). Images must be nested per
    prompt (images=[[a], [b]]): a flat list is read as all images of one prompt.
    """
    import transformers as hf

    image, patch, mm_tokens = 32, 8, 4
    if processor is None:
        named = {
            "image_token": "<image_soft_token>",
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
        }
        processor = hf.Gemma3Processor(
            image_processor=hf.Gemma3ImageProcessorPil(size={"height": image, "width": image}),
            tokenizer=tokenizer(named),
            image_seq_length=mm_tokens,
            chat_template=chat_template("<start_of_image>"),
        )
    tok = processor.tokenizer
    text = text_kwargs(size, tok)
    config = hf.Gemma3Config(
        vision_config=hf.SiglipVisionConfig(
            **vision_kwargs(size, image, patch), vision_use_head=False
        ),
        text_config=hf.Gemma3TextConfig(
            **text, query_pre_attn_scalar=text["head_dim"], sliding_window=64
        ),
        mm_tokens_per_image=mm_tokens,
        boi_token_index=tok.boi_token_id,
        eoi_token_index=tok.eoi_token_id,
        image_token_index=tok.image_token_id,
    )
    return instantiate(hf.Gemma3ForConditionalGeneration, config, size, tok), processor


def paligemma(size: Size, processor=None):
    """PaliGemma: SigLIP tower (32 px, patch 8: 16 image tokens), Gemma decoder, prefix-LM.

    PaliGemma ships no chat template; this one is added so `apply_chat_template` works. It
    puts the images first and no BOS, because the processor itself inserts BOS after the
    last <image> and appends "\\n": "<image>x16<s> user : ... ? assistant :". The processor
    adds 1152 <locXXXX>/<segXXX> tokens to the tokenizer (len(tok) ~1226) and returns
    `token_type_ids` (0 = bidirectional prefix, 1 = causal suffix) and BC `labels`, which
    `generate` does not accept. Teacher forcing must mark the answer with token_type_ids=1
    (or pass it as `suffix=`), else the answer sits in the bidirectional prefix.
    """
    import transformers as hf

    image, patch = 32, 8
    if processor is None:
        processor = hf.PaliGemmaProcessor(
            image_processor=hf.SiglipImageProcessorPil(
                size={"height": image, "width": image}, image_seq_length=(image // patch) ** 2
            ),
            tokenizer=tokenizer({"image_token": "<image>"}),
            chat_template=chat_template("<image>", bos="", images_first=True),
        )
    tok = processor.tokenizer
    text = text_kwargs(size, tok)
    config = hf.PaliGemmaConfig(
        vision_config=hf.SiglipVisionConfig(
            **vision_kwargs(size, image, patch), vision_use_head=False
        ),
        text_config=hf.GemmaConfig(**text),
        image_token_index=tok.image_token_id,
        vocab_size=text["vocab_size"],
        projection_dim=size.hidden,
        hidden_size=size.hidden,
    )
    return instantiate(hf.PaliGemmaForConditionalGeneration, config, size, tok), processor


# --- families needing torchvision --------------------------------------------------------

QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
QWEN_PATCH = 8  # x 2x2 merge: one image token per 16x16 px; 48x32 -> 6 tokens, 64x64 -> 16
MROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}  # head 16


def qwen_processor(processor_cls: str, video_cls: str, patch: int = QWEN_PATCH,
                   pixels: tuple[int, int] = (16 * 16, 64 * 64), tokens: int = 0):
    """Qwen2-VL / 2.5-VL / 3-VL processors: native resolution, patch 8, 2x2 merge (the
    published models' patch 14 and a fixed image size: benchmarks.gpu_qwen); `pixels`: the
    (fewest, most) pixels of a resized image; `tokens`: the tokenizer's padded size."""
    import transformers as hf

    pixels = {"shortest_edge": pixels[0], "longest_edge": pixels[1]}
    patching = dict(patch_size=patch, merge_size=2, temporal_patch_size=2)
    named = {
        "image_token": "<|image_pad|>",
        "video_token": "<|video_pad|>",
        "vision_start_token": "<|vision_start|>",
        "vision_end_token": "<|vision_end|>",
    }
    return getattr(hf, processor_cls)(
        image_processor=hf.Qwen2VLImageProcessorPil(size=pixels, **patching),
        tokenizer=tokenizer(named, size=tokens),
        video_processor=getattr(hf, video_cls)(size=pixels, **patching),
        chat_template=chat_template(QWEN_IMAGE),
    )


def qwen_token_ids(tok) -> dict:
    return dict(
        image_token_id=tok.image_token_id,
        video_token_id=tok.video_token_id,
        vision_start_token_id=tok.vision_start_token_id,
        vision_end_token_id=tok.vision_end_token_id,
    )


def qwen_vision(size: Size, **extra) -> dict:
    return dict(
        depth=size.vision_layers,
        num_heads=2,
        patch_size=QWEN_PATCH,
        spatial_merge_size=2,
        temporal_patch_size=2,
        **extra,
    )


def qwen2_vl(size: Size, processor=None):
    """Qwen2-VL: native-resolution ViT with a 2x2 patch merger, Qwen2 decoder with M-RoPE.

    The processor returns `image_grid_thw` and `mm_token_type_ids` (used for M-RoPE
    positions: extend it with 0s when appending answer tokens).
    """
    import transformers as hf

    processor = processor or qwen_processor("Qwen2VLProcessor", "Qwen2VLVideoProcessor")
    tok = processor.tokenizer
    config = hf.Qwen2VLConfig(
        text_config=dict(text_kwargs(size, tok), rope_parameters=dict(MROPE)),
        vision_config=qwen_vision(
            size, embed_dim=size.vision_hidden, hidden_size=size.hidden, mlp_ratio=2
        ),
        **qwen_token_ids(tok),
    )
    return instantiate(hf.Qwen2VLForConditionalGeneration, config, size, tok), processor


def qwen2_5_vl(size: Size, processor=None):
    """Qwen2.5-VL: as Qwen2-VL with a windowed-attention SwiGLU ViT (last block global)."""
    import transformers as hf

    processor = processor or qwen_processor("Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor")
    tok = processor.tokenizer
    vision = qwen_vision(
        size,
        hidden_size=size.vision_hidden,
        intermediate_size=2 * size.vision_hidden,
        out_hidden_size=size.hidden,
        window_size=32,
        fullatt_block_indexes=[size.vision_layers - 1],
    )
    config = hf.Qwen2_5_VLConfig(
        text_config=dict(text_kwargs(size, tok), rope_parameters=dict(MROPE)),
        vision_config=vision,
        **qwen_token_ids(tok),
    )
    return instantiate(hf.Qwen2_5_VLForConditionalGeneration, config, size, tok), processor


def qwen3_vl(size: Size, processor=None):
    """Qwen3-VL: ViT with learned (interpolated) positions and DeepStack, interleaved M-RoPE."""
    import transformers as hf

    processor = processor or qwen_processor("Qwen3VLProcessor", "Qwen3VLVideoProcessor")
    tok = processor.tokenizer
    vision = qwen_vision(
        size,
        hidden_size=size.vision_hidden,
        intermediate_size=2 * size.vision_hidden,
        out_hidden_size=size.hidden,
        num_position_embeddings=64,
        deepstack_visual_indexes=[0],
    )
    rope = dict(MROPE, mrope_interleaved=True)
    config = hf.Qwen3VLConfig(
        text_config=dict(text_kwargs(size, tok), rope_parameters=rope),
        vision_config=vision,
        **qwen_token_ids(tok),
    )
    return instantiate(hf.Qwen3VLForConditionalGeneration, config, size, tok), processor


def smolvlm(size: Size, processor=None):
    """SmolVLM: Idefics3's layout (64 px, patch 16, scale 2: 4 tokens); needs num2words too.

    Like Gemma 3, images must be nested per prompt: a flat list is one prompt's images.
    """
    import transformers as hf

    image, patch, scale = 64, 16, 2
    if processor is None:
        named = {
            "image_token": "<image>",
            "fake_image_token": "<fake_token_around_image>",
            "global_image_token": "<global-img>",
            "end_of_utterance_token": "<end_of_utterance>",
            "video_token": "<video>",
        }
        rows_cols = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
        edge = {"longest_edge": image}
        processor = hf.SmolVLMProcessor(
            image_processor=hf.SmolVLMImageProcessorPil(
                size=edge, max_image_size=edge, do_image_splitting=False
            ),
            tokenizer=tokenizer(named, rows_cols),
            video_processor=hf.SmolVLMVideoProcessor(size=edge, max_image_size=edge),
            image_seq_len=(image // patch) ** 2 // scale**2,
            chat_template=chat_template("<image>"),
        )
    tok = processor.tokenizer
    config = hf.SmolVLMConfig(
        vision_config=vision_kwargs(size, image, patch),
        text_config=hf.LlamaConfig(**text_kwargs(size, tok), tie_word_embeddings=False),
        image_token_id=tok.image_token_id,
        scale_factor=scale,
    )
    return instantiate(hf.SmolVLMForConditionalGeneration, config, size, tok), processor


def internvl(size: Size, processor=None):
    """InternVL: InternViT (32 px, patch 8) pixel-unshuffled 0.5x to 4 tokens, Qwen2 decoder.

    Text holds <IMG_CONTEXT>; the processor expands it to <img><IMG_CONTEXT>x(4 per tile)</img>.
    InternVLProcessor forces `crop_to_patches=True` whatever the image processor says, so an
    image is tiled into 32 px crops (at most `max_patches`) plus a thumbnail: 48x32 -> 2x1
    tiles + 1 = 12 tokens, 64x64 -> 2x2 + 1 = 20 (max_patches=4 here, 12 on the hub).
    """
    import transformers as hf

    image, patch = 32, 8
    seq = (image // patch) ** 2 // 4
    if processor is None:
        named = {
            "context_image_token": "<IMG_CONTEXT>",
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "video_token": "<video>",
        }
        square = {"height": image, "width": image}
        processor = hf.InternVLProcessor(
            image_processor=hf.GotOcr2ImageProcessorPil(size=square, max_patches=4),
            tokenizer=tokenizer(named),
            video_processor=hf.InternVLVideoProcessor(size=square),
            image_seq_length=seq,
            chat_template=chat_template("<IMG_CONTEXT>"),
        )
    tok = processor.tokenizer
    config = hf.InternVLConfig(
        vision_config=vision_kwargs(size, [image, image], [patch, patch]),
        text_config=hf.Qwen2Config(**text_kwargs(size, tok), tie_word_embeddings=False),
        image_token_id=tok.context_image_token_id,
        image_seq_length=seq,
        downsample_ratio=0.5,
    )
    return instantiate(hf.InternVLForConditionalGeneration, config, size, tok), processor


def llava_onevision(size: Size, processor=None):
    """LLaVA-OneVision: SigLIP tower on 32 px tiles (patch 16, "full"), any-res, Qwen2 decoder."""
    import transformers as hf

    image, patch = 32, 16
    pinpoints = [[32, 32], [32, 64], [64, 32], [64, 64]]
    if processor is None:
        square = {"height": image, "width": image}
        processor = hf.LlavaOnevisionProcessor(
            image_processor=hf.LlavaOnevisionImageProcessorPil(
                size=square, image_grid_pinpoints=pinpoints
            ),
            tokenizer=tokenizer({"image_token": "<image>", "video_token": "<video>"}),
            video_processor=hf.LlavaOnevisionVideoProcessor(size=square),
            num_image_tokens=(image // patch) ** 2,
            vision_feature_select_strategy="full",
            chat_template=chat_template("<image>"),
        )
    tok = processor.tokenizer
    config = hf.LlavaOnevisionConfig(
        vision_config=hf.SiglipVisionConfig(
            **vision_kwargs(size, image, patch), vision_use_head=False
        ),
        text_config=hf.Qwen2Config(**text_kwargs(size, tok), tie_word_embeddings=False),
        image_token_index=tok.image_token_id,
        video_token_index=tok.video_token_id,
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )
    model = instantiate(hf.LlavaOnevisionForConditionalGeneration, config, size, tok)
    return model, processor


def mistral3(size: Size, processor=None):
    """Mistral 3: Pixtral tower (longest edge 64, patch 8, 2x2 merge), Mistral decoder.

    Each row of [IMG] ends in [IMG_BREAK], the last in [IMG_END]: 48x32 -> 3x2 tokens,
    64x64 -> 4x4; `config.image_token_id` counts only the [IMG] ones.
    """
    import transformers as hf

    image, patch, merge = 64, 8, 2
    if processor is None:
        processor = hf.PixtralProcessor(
            image_processor=hf.PixtralImageProcessorPil(
                size={"longest_edge": image},
                patch_size={"height": patch * merge, "width": patch * merge},
            ),
            tokenizer=tokenizer({"image_token": "[IMG]"}, ["[IMG_BREAK]", "[IMG_END]"]),
            patch_size=patch,
            spatial_merge_size=merge,
            chat_template=chat_template("[IMG]"),
        )
    tok = processor.tokenizer
    text = hf.MistralConfig(
        **text_kwargs(size, tok), sliding_window=None, tie_word_embeddings=False
    )
    config = hf.Mistral3Config(
        vision_config=hf.PixtralVisionConfig(**vision_kwargs(size, image, patch)),
        text_config=text,
        image_token_index=tok.image_token_id,
        spatial_merge_size=merge,
        vision_feature_layer=-1,
    )
    return instantiate(hf.Mistral3ForConditionalGeneration, config, size, tok), processor


FAMILIES: dict[str, Callable] = {
    "idefics3": idefics3,
    "llava_next": llava_next,
    "gemma3": gemma3,
    "paligemma": paligemma,
    "qwen2_vl": qwen2_vl,
    "qwen2_5_vl": qwen2_5_vl,
    "qwen3_vl": qwen3_vl,
    "smolvlm": smolvlm,
    "internvl": internvl,
    "llava_onevision": llava_onevision,
    "mistral3": mistral3,
}
REQUIRES: dict[str, tuple[str, ...]] = {  # modules a family needs that the venv lacks
    "qwen2_vl": ("torchvision",),
    "qwen2_5_vl": ("torchvision",),
    "qwen3_vl": ("torchvision",),
    "smolvlm": ("torchvision", "num2words"),
    "internvl": ("torchvision",),
    "llava_onevision": ("torchvision",),
    "mistral3": ("torchvision",),
}


def available(family: str) -> str | None:
    """None when `family` can be built here, else why not (a pytest skip reason)."""
    if family not in FAMILIES:
        return f"unknown family {family!r}"
    missing = [m for m in REQUIRES.get(family, ()) if importlib.util.find_spec(m) is None]
    return f"needs {', '.join(missing)}" if missing else None


def build_pair(
    family: str, root: Path | str, student: Size = STUDENT, teacher: Size = TEACHER
) -> dict[str, str]:
    """Save a student and a teacher of `family` (one tokenizer) under root/family/{role}."""
    if reason := available(family):
        raise RuntimeError(f"{family}: {reason}")
    small, processor = FAMILIES[family](student)
    large, _ = FAMILIES[family](teacher, processor)
    return {
        role: str(save(model, processor, Path(root) / family / role))
        for role, model in (("student", small), ("teacher", large))
    }
