"""Model inputs, built by each model's own processor: one path for every family.

Every forward and `generate` in masters (generation, training, scoring, evaluation, bootstrap,
the served pyfunc) gets its batch from here, and every tensor the processor returns is
passed on: `pixel_values` in whatever layout the family uses (tiles, flattened patches),
`image_grid_thw` (Qwen), `image_sizes` (LLaVA-NeXT, Mistral 3), `pixel_attention_mask`
(Idefics3, SmolVLM), `token_type_ids` (Gemma 3, PaliGemma). Image tokens are expanded by the
processor, so their count may differ per image; answer positions come from the processor's
own input_ids (the length of each encoded prompt), never from a fixed count.

Prompt: one user turn holding the question and one image, then the generation prompt, all
through the processor's chat template. The question comes before the image: the shipped
embedded models were trained that way (image tokens attend to the question).

Teacher forcing appends the answer's token ids to each encoded prompt, so the ids a model is
scored on are exactly the ids that were generated (re-tokenising decoded text would not be).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


def prompt_text(processor, question: str) -> str:
    """The chat-templated prompt: a user turn (question, image) and the generation prompt."""
    messages = [{"role": "user", "content": [{"type": "text", "text": question},
                                             {"type": "image"}]}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def as_image(image):
    """An RGB PIL image from a PIL image (any mode) or an HxW[xC] uint8 array."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    return image if image.mode == "RGB" else image.convert("RGB")


def encode_prompts(processor, images: Sequence, questions: Sequence[str], *,
                   padding_side: str = "left") -> dict[str, torch.Tensor]:
    """The processor's batch for image + question prompts; left padding for `generate`."""
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images for {len(questions)} questions")
    # One list per prompt: a flat list reads as every image belonging to one prompt in
    # processors that take several images per sample (Idefics3, SmolVLM). The chat template
    # already holds BOS where the model wants one.
    enc = dict(processor(images=[[as_image(im)] for im in images],
                         text=[prompt_text(processor, q) for q in questions],
                         padding=True, padding_side=padding_side, return_tensors="pt",
                         add_special_tokens=False))
    enc.pop("labels", None)  # PaliGemma's processor adds them; masters builds its own
    return enc


@dataclass
class Forced:
    """A teacher-forcing batch with the answer positions in this processor's own sequence."""

    inputs: dict[str, torch.Tensor]
    starts: torch.Tensor  # (B,) index of each row's first answer token
    targets: torch.Tensor  # (B, A) answer token ids, -100 past each answer's end

    def labels(self) -> torch.Tensor:
        """(B, L) labels for an HF loss: the answer ids at their positions, -100 elsewhere."""
        out = torch.full_like(self.inputs["input_ids"], -100)
        for i, (start, row) in enumerate(zip(self.starts.tolist(), self.targets, strict=True)):
            row = row[row >= 0]
            out[i, start : start + len(row)] = row
        return out


def encode_forced(processor, images: Sequence, questions: Sequence[str],
                  answers: Sequence[Sequence[Sequence[int]]]) -> Forced:
    """One row per answer: prompt i (image i + question i) followed by each of answers[i].

    Each prompt is encoded once and its image tensors repeated for its answers, when every
    image tensor has one entry per prompt (the batch layout); families that flatten patches
    across the batch (Qwen) have their prompts encoded once per answer instead.
    """
    counts = [len(a) for a in answers]
    enc = encode_prompts(processor, images, questions, padding_side="right")
    per_token = {k for k, v in enc.items() if v.ndim == 2 and v.shape == enc["input_ids"].shape}
    if all(enc[k].shape[0] == len(counts) for k in set(enc) - per_token):
        rows = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
        enc = {k: v[rows] for k, v in enc.items()}
    else:
        enc = encode_prompts(processor, [im for im, n in zip(images, counts, strict=True)
                                         for _ in range(n)],
                             [q for q, n in zip(questions, counts, strict=True)
                              for _ in range(n)], padding_side="right")
    return _append_answers(processor, enc, per_token, [list(a) for g in answers for a in g])


def _append_answers(processor, enc: dict, per_token: set[str],
                    answers: list[list[int]]) -> Forced:
    tok = processor.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    prompt_len = enc["attention_mask"].sum(1).tolist()
    width = max(p + len(a) for p, a in zip(prompt_len, answers, strict=True))
    a_width = max(1, max(len(a) for a in answers))
    out = {k: v for k, v in enc.items() if k not in per_token}
    targets = torch.full((len(answers), a_width), -100, dtype=torch.long)
    for key in per_token:
        fill = pad if key == "input_ids" else 0
        out[key] = torch.full((len(answers), width), fill, dtype=enc[key].dtype)
    for i, (p, a) in enumerate(zip(prompt_len, answers, strict=True)):
        keep = enc["attention_mask"][i].bool()  # the prompt's own tokens, wherever padded
        answer = torch.tensor(a, dtype=torch.long)
        for key in per_token:
            out[key][i, :p] = enc[key][i][keep]
        out["input_ids"][i, p : p + len(a)] = answer
        out["attention_mask"][i, p : p + len(a)] = 1
        if "token_type_ids" in out:
            out["token_type_ids"][i, p : p + len(a)] = _answer_token_type(processor)
        targets[i, : len(a)] = answer
    return Forced(out, torch.tensor(prompt_len), targets)


def _answer_token_type(processor) -> int:
    # PaliGemma marks the suffix (what the model must predict) with type 1 and attends to the
    # prefix bidirectionally; Gemma 3 marks image tokens with 1 and text with 0.
    return 1 if type(processor).__name__.startswith("PaliGemma") else 0


def device_of(model) -> torch.device:
    return next(model.parameters()).device


def to_model(batch: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """The batch on the model's device; floating tensors (pixels) in its dtype."""
    p = next(model.parameters())
    return {k: v.to(p.device, p.dtype if v.is_floating_point() else None)
            for k, v in batch.items()}


@torch.no_grad()
def greedy_answers(model, processor, images: Sequence, questions: Sequence[str],
                   max_new_tokens: int) -> list[str]:
    """Greedy answers (evaluation and the served model decode the same way)."""
    batch = to_model(encode_prompts(processor, images, questions), model)
    out = model.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens)
    new = out[:, batch["input_ids"].shape[1] :]
    return [s.strip() for s in processor.tokenizer.batch_decode(new, skip_special_tokens=True)]
