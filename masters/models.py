"""Load image-text-to-text checkpoints and turn (image, question[, answer]) into model inputs.

One path for every checkpoint, embedded or real: `AutoModelForImageTextToText` +
`AutoProcessor`, safetensors only, `trust_remote_code` off unless the config turns it on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


class ModelLoadError(ValueError):
    """A checkpoint that cannot be loaded safely (the message names the path and why)."""


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


CHECKPOINTS = Path(__file__).parent / "checkpoints"
EMBEDDED_PREFIX = "embedded:"


def resolve_path(path: str | Path) -> str:
    """`embedded:<name>` names a checkpoint shipped in masters/checkpoints/; others pass."""
    text = str(path)
    if text.startswith(EMBEDDED_PREFIX):
        name = text[len(EMBEDDED_PREFIX) :]
        local = CHECKPOINTS / name
        if not local.is_dir():
            shipped = sorted(p.name for p in CHECKPOINTS.glob("*") if p.is_dir())
            raise ModelLoadError(
                f"no embedded checkpoint {name!r} (shipped: {', '.join(shipped) or 'none'}); "
                "run `masters bootstrap` to build them"
            )
        return str(local)
    return text


def _check_checkpoint(path: Path, trust_remote_code: bool) -> None:
    if not path.exists():
        raise ModelLoadError(f"model path {str(path)!r} does not exist")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"model path {str(path)!r} has no config.json")
    if not any(path.glob("*.safetensors")):
        raise ModelLoadError(
            f"model path {str(path)!r} has no *.safetensors weights; only safetensors are "
            "loaded (convert pickled .bin weights first)"
        )
    config = json.loads((path / "config.json").read_text())
    if config.get("auto_map") and not trust_remote_code:
        raise ModelLoadError(
            f"model at {str(path)!r} needs remote code (auto_map in config.json) and "
            "trust_remote_code is off; set it to true in the model's config section only if "
            "you trust this checkpoint"
        )


def load(
    path: str | Path,
    *,
    trust_remote_code: bool = False,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
):
    """(model, processor) from a local `save_pretrained` folder or a hub id (when online)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = resolve_path(path)
    local = Path(path)
    if local.exists() or path.startswith((".", "/")):
        _check_checkpoint(local, trust_remote_code)
    model = AutoModelForImageTextToText.from_pretrained(
        str(path), dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
    )
    processor = AutoProcessor.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    model.to(device).eval()
    return model, processor


def fingerprint(model) -> str:
    """Content hash of the weights (names, shapes, dtypes, bytes): names a checkpoint."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # buffer protocol: no copy
    return h.hexdigest()[:16]


def prompt_text(processor, question: str, answer: str | None = None) -> str:
    content = [{"type": "text", "text": question}, {"type": "image"}]
    messages = [{"role": "user", "content": content}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return processor.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=answer is None
    )


@dataclass
class PixelNormalizer:
    """Vectorised copy of the image processor's rescale + normalise for fixed-size images.

    The processor's own path handles arbitrary images but costs milliseconds per image;
    training streams tens of thousands. A test pins this to the processor's output.
    """

    mean: np.ndarray
    std: np.ndarray
    scale: float
    size: tuple[int, int]

    @classmethod
    def from_processor(cls, processor) -> PixelNormalizer:
        ip = processor.image_processor
        size = ip.size
        hw = (size["height"], size["width"]) if "height" in size else None
        return cls(
            np.asarray(ip.image_mean, dtype=np.float32).reshape(1, 3, 1, 1),
            np.asarray(ip.image_std, dtype=np.float32).reshape(1, 3, 1, 1),
            float(ip.rescale_factor),
            hw,
        )

    def __call__(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        batch = np.stack(images).astype(np.float32).transpose(0, 3, 1, 2)
        if self.size and batch.shape[2:] != self.size:
            raise ValueError(f"images must be {self.size}, got {batch.shape[2:]}")
        return torch.from_numpy((batch * self.scale - self.mean) / self.std)


_IMAGE_TOKEN_COUNTS: dict[int, int] = {}


def image_token_count(processor) -> int:
    """Image tokens one fixed-size image expands to, measured once through the processor."""
    key = id(processor)
    if key not in _IMAGE_TOKEN_COUNTS:
        from PIL import Image

        size = PixelNormalizer.from_processor(processor).size or (224, 224)
        tok = processor.tokenizer
        out = processor(images=[Image.new("RGB", size[::-1])], text=[processor.image_token])
        ids = out["input_ids"][0]
        image_id = tok.convert_tokens_to_ids(processor.image_token)
        _IMAGE_TOKEN_COUNTS[key] = sum(1 for i in ids if i == image_id)
    return _IMAGE_TOKEN_COUNTS[key]


def _expand_image_tokens(processor, text: str) -> str:
    token = processor.image_token
    return text.replace(token, token * image_token_count(processor))


def encode_for_training(
    processor,
    questions: Sequence[str],
    answers: Sequence[str],
    pixel_values: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Right-padded teacher-forcing batch; labels cover only the answer tokens and </s>."""
    tok = processor.tokenizer
    prompts = [_expand_image_tokens(processor, prompt_text(processor, q)) for q in questions]
    fulls = [
        _expand_image_tokens(processor, prompt_text(processor, q, a))
        for q, a in zip(questions, answers, strict=True)
    ]
    prompt_ids = tok(prompts, add_special_tokens=False)["input_ids"]
    full_ids = tok(fulls, add_special_tokens=False)["input_ids"]
    width = max(len(x) for x in full_ids)
    input_ids = torch.full((len(full_ids), width), tok.pad_token_id, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, -100)
    for i, (p, f) in enumerate(zip(prompt_ids, full_ids, strict=True)):
        if f[: len(p)] != p:
            raise ValueError(f"prompt of sample {i} is not a prefix of its full text")
        input_ids[i, : len(f)] = torch.tensor(f)
        attention[i, : len(f)] = 1
        labels[i, len(p) : len(f)] = torch.tensor(f[len(p) :])
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "pixel_values": pixel_values,
        "labels": labels,
    }


def tokenize_left_padded(tok, texts: Sequence[str]):
    """Left padding for `generate` (it appends on the right), restoring the tokenizer after."""
    old = tok.padding_side
    tok.padding_side = "left"
    try:
        return tok(list(texts), add_special_tokens=False, padding=True, return_tensors="pt")
    finally:
        tok.padding_side = old


def encode_for_generation(
    processor, questions: Sequence[str], pixel_values: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Left-padded prompts (generation appends on the right)."""
    prompts = [_expand_image_tokens(processor, prompt_text(processor, q)) for q in questions]
    enc = tokenize_left_padded(processor.tokenizer, prompts)
    return {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "pixel_values": pixel_values,
    }


@torch.no_grad()
def greedy_answers(
    model, processor, questions: Sequence[str], pixel_values: torch.Tensor, max_new_tokens: int
) -> list[str]:
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    batch = encode_for_generation(processor, questions, pixel_values)
    batch = {k: v.to(device) for k, v in batch.items()}
    batch["pixel_values"] = batch["pixel_values"].to(dtype)
    out = model.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens)
    new = out[:, batch["input_ids"].shape[1] :]
    return [s.strip() for s in processor.tokenizer.batch_decode(new, skip_special_tokens=True)]
