"""Model inputs through the processor (masters.inputs), on the embedded LLaVA family; the real
families run the same checks in tests/test_families.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from masters import embedded, inputs, synthetic


@pytest.fixture(scope="module")
def processor():
    return embedded.build("smoke", seed=3)[1]


def _samples(n=4):
    return [synthetic.make_sample(0, "test", i) for i in range(n)]


def _answer_ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def test_forced_rows_are_the_processors_own_encoding_of_prompt_and_answer(processor):
    """Each row equals the processor's encoding of the whole chat (user turn + assistant
    answer), and the answer starts where the processor's encoded prompt ends."""
    tok = processor.tokenizer
    samples = _samples(3)
    answers = [[_answer_ids(tok, s.answer), _answer_ids(tok, "no")] for s in samples]
    enc = inputs.encode_forced(processor, [s.image for s in samples],
                               [s.question for s in samples], answers)
    assert enc.inputs["input_ids"].shape[0] == 6 and enc.inputs["pixel_values"].shape[0] == 6
    pairs = [(s, t) for s in samples for t in (s.answer, "no")]
    for row, (s, text) in enumerate(pairs):
        chat = [{"role": "user", "content": [{"type": "text", "text": s.question},
                                             {"type": "image"}]},
                {"role": "assistant", "content": [{"type": "text", "text": text}]}]
        full = processor(images=[[Image.fromarray(s.image)]],
                         text=[processor.apply_chat_template(chat, tokenize=False)],
                         return_tensors="pt", add_special_tokens=False)["input_ids"][0]
        n = int(enc.inputs["attention_mask"][row].sum())
        assert enc.inputs["input_ids"][row, :n].tolist() == full.tolist()
        start = int(enc.starts[row])
        want = _answer_ids(tok, text)
        assert enc.inputs["input_ids"][row, start : start + len(want)].tolist() == want
        assert enc.targets[row, : len(want)].tolist() == want
        assert (enc.targets[row, len(want):] == -100).all()
        labels = enc.labels()[row]
        assert labels[labels != -100].tolist() == want
        assert tok.convert_ids_to_tokens(want)[-1] == "</s>"


def test_shared_prompt_encoding_equals_one_encoding_per_answer(processor):
    """The fast path (a prompt encoded once, its tensors repeated for its answers) is pinned to
    encoding every row on its own."""
    tok = processor.tokenizer
    samples = _samples(3)
    answers = [[_answer_ids(tok, "yes"), _answer_ids(tok, "red circle")][: i + 1]
               for i in range(3)]
    images, questions = [s.image for s in samples], [s.question for s in samples]
    fast = inputs.encode_forced(processor, images, questions, answers)
    rows = [(im, q, [a]) for im, q, g in zip(images, questions, answers, strict=True)
            for a in g]
    slow = inputs.encode_forced(processor, [r[0] for r in rows], [r[1] for r in rows],
                                [r[2] for r in rows])
    assert fast.inputs.keys() == slow.inputs.keys()
    for k in fast.inputs:
        assert torch.equal(fast.inputs[k], slow.inputs[k]), k
    assert torch.equal(fast.starts, slow.starts) and torch.equal(fast.targets, slow.targets)


def test_images_of_any_size_and_mode_in_one_batch(processor):
    """The processor resizes: sizes and modes may differ within a batch."""
    rgb = synthetic.make_sample(0, "test", 0).image
    images = [Image.fromarray(rgb).resize((96, 48)), Image.fromarray(rgb).convert("L"),
              Image.fromarray(rgb).convert("RGBA").resize((50, 80)), rgb[:40, :60]]
    enc = inputs.encode_prompts(processor, images, ["how many objects are there ?"] * 4)
    assert enc["pixel_values"].shape == (4, 3, 64, 64)
    assert (enc["attention_mask"][:, -1] == 1).all()  # left-padded for generate


def test_prompt_puts_the_question_before_the_image(processor):
    text = inputs.prompt_text(processor, "how many objects are there ?")
    assert text.index("how many") < text.index("<image>") < text.index("assistant")
    unk = processor.tokenizer.unk_token_id
    assert unk not in processor.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_as_image_takes_arrays_and_modes():
    gray = np.zeros((8, 6), dtype=np.uint8)
    assert inputs.as_image(gray).mode == "RGB" and inputs.as_image(gray).size == (6, 8)
    assert inputs.as_image(Image.new("RGBA", (5, 5))).mode == "RGB"
