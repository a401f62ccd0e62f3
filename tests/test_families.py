"""Real VLM families end to end through the CLI: tiny random-init student + teacher pairs of
each family (tests/families.py, built offline), `masters distill` (check-inputs, prune,
generate, score, train over two stages, evaluate, register), then the registered champion's
pyfunc `predict` on images the processor must resize. README's family table is this test."""

from __future__ import annotations

import base64
import contextlib
import io
from pathlib import Path

import families
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import smoke_distill_overrides
from mlflow import MlflowClient
from PIL import Image

from flows import cli
from masters import inputs, models, synthetic, training

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


@pytest.fixture(scope="session")
def family_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("families")


def _pair(family: str, root: Path) -> dict[str, str]:
    if reason := families.available(family):
        pytest.skip(f"{family}: {reason}")
    if not (root / family / "teacher").is_dir():
        families.build_pair(family, root)
    return {r: str(root / family / r) for r in ("student", "teacher")}


def _cli(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue() + err.getvalue()


def _png(array: np.ndarray, size: tuple[int, int]) -> str:
    buf = io.BytesIO()
    Image.fromarray(array).resize(size).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("family", list(families.FAMILIES))
def test_family_runs_the_whole_pipeline(family, family_root, prefect_api, tmp_path):
    paths = _pair(family, family_root)
    name = f"family-{family}"
    overrides = [*smoke_distill_overrides(tmp_path, paths), f"tracking.registered_model={name}",
                 "evaluation.max_new_tokens=3"]
    rc, log = _cli(["distill", "--no-progress", "--config", str(SMOKE),
                    *[a for o in overrides for a in ("--set", o)]])
    assert rc == 0, log[-4000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (mv,) = client.search_model_versions(f"name = '{name}'")
    student = next(line.split(": ", 1)[1] for line in log.splitlines()
                   if line.startswith("distilled student: "))
    assert (Path(student) / "model.safetensors").is_file()
    # Trained: two stages, the weights moved.
    before, _ = models.load(paths["student"])
    after, processor = models.load(student)
    assert models.fingerprint(before) != models.fingerprint(after)
    # The registered model answers like the checkpoint, on sizes the processor must resize.
    # (Random models: whether the gate made it champion is chance; the alias is set here.)
    client.set_registered_model_alias(name, "champion", mv.version)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    served = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    samples = [synthetic.make_sample(0, "test", i) for i in range(2)]
    sizes = [(96, 72), (40, 56)]
    frame = pd.DataFrame({"image": [_png(s.image, wh) for s, wh in zip(samples, sizes,
                                                                      strict=True)],
                          "question": [s.question for s in samples]})
    got = list(served.predict(frame))
    images = [np.asarray(Image.fromarray(s.image).resize(wh))
              for s, wh in zip(samples, sizes, strict=True)]
    assert got == inputs.greedy_answers(after, processor, images,
                                        [s.question for s in samples], 3)


@pytest.mark.parametrize("family", list(families.FAMILIES))
def test_family_forced_batch_matches_one_prompt_at_a_time(family, family_root):
    """Teacher forcing on a batch (mixed image sizes, shared prompts, padding) gives each
    answer the logits it gets alone; padded embedding rows are dropped (student and teacher
    have different row counts over one tokenizer)."""
    paths = _pair(family, family_root)
    model, processor = models.load(paths["teacher"])
    tok = processor.tokenizer
    vocab = len(tok.get_vocab())
    assert model.get_output_embeddings().weight.shape[0] > vocab  # padded rows exist
    samples = [synthetic.make_sample(0, "train", i) for i in range(2)]
    images = [Image.fromarray(samples[0].image).resize((48, 32)), samples[1].image]
    answers = [[tok("red circle", add_special_tokens=False)["input_ids"] + [tok.eos_token_id],
                [tok.eos_token_id]],
               [tok("2", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]]]
    groups = [training.Group(s.id, np.asarray(inputs.as_image(im)), s.question, a, [None] * len(a))
              for s, im, a in zip(samples, images, answers, strict=True)]
    with torch.no_grad():
        batch = training.answer_logits(model, training.encode_answers(processor, groups, "cpu"),
                                       vocab)
        assert batch.shape[-1] == vocab
        row = 0
        for g in groups:
            for a in g.answers:
                one = training.encode_answers(
                    processor, [training.Group(g.question_id, g.image, g.question, [a],
                                               [None])], "cpu")
                alone = training.answer_logits(model, one, vocab)[0, : len(a)]
                assert torch.allclose(batch[row, : len(a)], alone, atol=1e-4), (family, row)
                row += 1


@pytest.mark.parametrize("family", list(families.FAMILIES))
def test_family_answer_logits_equal_the_full_logits(family, family_root):
    """The LM head at the answer positions only (`logits_to_keep`) gives the logits that the
    whole (B, L, vocab) output holds there, on a batch with padding and mixed image sizes."""
    model, processor = models.load(_pair(family, family_root)["teacher"])
    tok = processor.tokenizer
    vocab = len(tok.get_vocab())
    samples = [synthetic.make_sample(0, "train", i) for i in range(2)]
    images = [np.asarray(Image.fromarray(samples[0].image).resize((48, 32))), samples[1].image]
    answers = [[tok("red circle", add_special_tokens=False)["input_ids"] + [tok.eos_token_id],
                [tok.eos_token_id]], [[tok.eos_token_id]]]
    enc = training.encode_answers(processor, [
        training.Group(s.id, im, s.question, a, [None] * len(a))
        for s, im, a in zip(samples, images, answers, strict=True)], "cpu")
    with torch.no_grad():
        got = training.answer_logits(model, enc, vocab)
        full = model(**inputs.to_model(enc.inputs, model)).logits
    pos = (enc.starts.unsqueeze(1) - 1 + torch.arange(enc.targets.shape[1])).clamp(
        max=full.shape[1] - 1)
    want = full.gather(1, pos.unsqueeze(-1).expand(-1, -1, full.shape[-1]))[..., :vocab]
    assert got.shape == want.shape == (3, enc.targets.shape[1], vocab)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
