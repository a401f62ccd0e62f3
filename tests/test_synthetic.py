"""The grid-scene generator: deterministic, exact answers, balanced families."""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import pytest

from masters import rewards, synthetic


def test_samples_are_pure_functions_of_seed_split_index():
    a = synthetic.make_sample(7, "train", 123)
    b = synthetic.make_sample(7, "train", 123)
    assert (a.question, a.answer, a.task_type) == (b.question, b.answer, b.task_type)
    assert np.array_equal(a.image, b.image)
    c = synthetic.make_sample(7, "test", 123)
    d = synthetic.make_sample(8, "train", 123)
    assert not np.array_equal(a.image, c.image) and not np.array_equal(a.image, d.image)


def test_images_are_patch_aligned_rgb():
    s = synthetic.make_sample(0, "validation", 0)
    assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8


def _scene_and_question(family, index=0):
    rng = synthetic._rng(0, "train", index)
    while True:
        scene = synthetic.random_scene(rng)
        qa = synthetic._question(family, scene, rng)
        if qa is not None:
            return scene, qa


@pytest.mark.parametrize("index", range(20))
def test_answers_are_exact(index):
    objs = lambda scene: list(scene.objects.values())  # noqa: E731
    scene, (q, a) = _scene_and_question("count", index)
    assert a == str(len(scene.objects))
    scene, (q, a) = _scene_and_question("color", index)
    cell = synthetic.CELLS.index(q.split()[-2])
    assert a == scene.objects[cell][0]
    scene, (q, a) = _scene_and_question("shape", index)
    assert a == scene.objects[synthetic.CELLS.index(q.split()[-2])][1]
    scene, (q, a) = _scene_and_question("count_color", index)
    assert a == str(sum(c == q.split()[2] for c, _ in objs(scene)))
    scene, (q, a) = _scene_and_question("exists", index)
    color, shape = q.split()[3:5]
    assert a == ("yes" if (color, shape) in objs(scene) else "no")
    scene, (q, a) = _scene_and_question("where", index)
    color, shape = q.split()[3:5]
    assert scene.objects[synthetic.CELLS.index(a)] == (color, shape)
    assert objs(scene).count((color, shape)) == 1
    scene, (q, a) = _scene_and_question("compare", index)
    ca, cb = q.split()[3], q.split()[6]
    na, nb = (sum(c == x for c, _ in objs(scene)) for x in (ca, cb))
    assert na != nb and a == ("yes" if na > nb else "no")


def test_describe_answers_list_every_cell_in_raster_order():
    scene, (q, a) = _scene_and_question("describe_color")
    words = a.split()
    assert len(words) == 16
    for cell, word in enumerate(words):
        assert word == (scene.objects[cell][0] if cell in scene.objects else "none")


def test_rendered_colour_sits_in_the_named_cell():
    s = synthetic.make_sample(0, "test", 1, families=("color",))
    cell = synthetic.CELLS.index(s.question.split()[-2])
    row, col = divmod(cell, 4)
    patch = s.image[row * 16 : (row + 1) * 16, col * 16 : (col + 1) * 16].reshape(-1, 3)
    bright = patch[patch.max(axis=1) > 100].astype(float).mean(axis=0)
    target = np.array(synthetic.COLORS[s.answer], dtype=float)
    nearest = min(
        synthetic.COLORS, key=lambda k: np.abs(np.array(synthetic.COLORS[k]) - bright).sum()
    )
    assert nearest == s.answer, (bright, target)


def test_families_round_robin_and_yes_no_balanced():
    samples = [synthetic.make_sample(0, "test", i) for i in range(700)]
    fam = Counter(s.task_type for s in samples)
    assert set(fam) == set(synthetic.QA_FAMILIES) and set(fam.values()) == {100}
    for family in ("exists", "compare"):
        answers = Counter(s.answer for s in samples if s.task_type == family)
        assert 35 <= answers["yes"] <= 65, answers
    majority = sum(
        Counter(s.answer for s in samples if s.task_type == f).most_common(1)[0][1]
        for f in synthetic.QA_FAMILIES
    ) / len(samples)
    assert majority < 0.35  # no family is won by answering its most common answer


def test_aux_fraction_only_when_asked():
    plain = [synthetic.make_sample(0, "train", i).task_type for i in range(200)]
    assert not set(plain) & set(synthetic.AUX_FAMILIES)
    mixed = [synthetic.make_sample(0, "train", i, aux_fraction=0.35).task_type for i in range(400)]
    share = sum(t in synthetic.AUX_FAMILIES for t in mixed) / len(mixed)
    assert 0.25 < share < 0.45


def test_build_split_is_a_dataset_with_images(tmp_path):
    ds = synthetic.build_split(0, "validation", 14)
    assert ds.column_names == ["id", "image", "question", "answer", "response", "task_type"]
    ref = synthetic.make_sample(0, "validation", 5)
    assert (ds[5]["answer"], ds[5]["response"]) == (ref.answer, ref.response)
    assert ds[0]["image"].size == (64, 64)
    assert np.array_equal(
        np.asarray(ds[3]["image"]), synthetic.make_sample(0, "validation", 3).image
    )
    ds.to_parquet(tmp_path / "validation.parquet")
    assert (tmp_path / "validation.parquet").stat().st_size > 0


def test_vocabulary_covers_every_word():
    vocab = set(synthetic.vocabulary())
    for i in range(300):
        s = synthetic.make_sample(1, "train", i, aux_fraction=0.3)
        assert set(s.question.split()) | set(s.answer.split()) | set(s.response.split()) <= vocab


LABELS = {"count": [str(n) for n in range(17)], "count_color": [str(n) for n in range(17)],
          "color": list(synthetic.COLORS), "shape": list(synthetic.SHAPES),
          "exists": ["yes", "no"], "compare": ["yes", "no"], "where": synthetic.CELLS}


def test_responses_are_phrases_graded_right_against_every_label():
    """Each answer phrase scores 1 against its own label and 0 against every other label
    of its family under the scorer rewards and evaluation use."""
    seen = set()
    for i in range(140):
        s = synthetic.make_sample(2, "test", i)
        seen.add(s.task_type)
        assert len(s.response.split()) >= 4 and s.answer in s.response.split()
        labels = LABELS[s.task_type]
        scores = rewards.phrase_match([s.response] * len(labels), labels)
        assert scores == [float(label == s.answer) for label in labels], s
    assert seen == set(synthetic.QA_FAMILIES)
    assert synthetic.make_sample(2, "train", 0, aux_fraction=0.99).response.count(" ") == 15


def test_responses_leave_images_questions_and_labels_unchanged():
    """Phrases are a function of question and label: the sample stream (images, questions,
    labels) is the one the shipped models and earlier caches were built from."""
    h = hashlib.sha256()
    for i in range(50):
        s = synthetic.make_sample(0, "train", i, aux_fraction=0.35)
        h.update(s.image.tobytes())
        h.update(f"{s.question}|{s.answer}|{s.task_type}".encode())
    assert h.hexdigest()[:16] == "fdeee3c680e0199a"
