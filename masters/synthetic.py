"""Built-in synthetic visual question answering: "grid scenes".

Each image is a 4x4 board of 16 px cells (64 px square); 3-8 cells hold one object (a colour
and a shape). Cells are named like a chess board: columns a-d left to right, rows 1-4 top to
bottom ("b3" is column b, row 3). The cell size equals the vision patch size of the embedded
models, so one image token sees exactly one cell: on two CPU cores that alignment is what
makes binding a word to an image region learnable at all (../shared/notes/environment.md).

Every sample is a pure function of (seed, split, index), so splits are reproducible and any
prefix of the train split can be streamed without materialising it.

Question families, from easy to hard. The dataset label is one word, like a VQA label; the
models answer with a phrase (`Sample.response`, what bootstrap trains them to say), graded
against the label by `rewards.phrase_match`:
- count        "how many objects are there ?"         "5"   "there are 5 objects"
- color        "what color is the object at b3 ?"     "red" "the object at b3 is red"
- shape        "what shape is the object at b3 ?"     "circle" "the object at b3 is a circle"
- count_color  "how many red objects are there ?"     "2"   "there are 2 red objects"
- exists       "is there a red circle ?"              "yes" "yes there is a red circle"
                                                      "no"  "no there is no red circle"
- where        "where is the red circle ?"            "b3"  "the red circle is at b3"
- compare      "are there more red objects than blue objects ?"
                                                      "no"  "no there are more blue objects
                                                             than red objects"

Two auxiliary "describe" families ("describe color ." / "describe shape .") answer with the
attribute of all 16 cells in raster order ("none" for an empty cell). They are dense
perception targets used only to bootstrap models from scratch, never for evaluation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

GRID = 4
CELL = 16
IMAGE_SIZE = GRID * CELL
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "cyan": (40, 210, 220),
}
SHAPES = ("circle", "square", "triangle", "cross")
COLUMNS = "abcd"
CELLS = [f"{COLUMNS[c]}{r + 1}" for r in range(GRID) for c in range(GRID)]  # raster order
MIN_OBJECTS, MAX_OBJECTS = 3, 8

QA_FAMILIES = ("count", "color", "shape", "count_color", "exists", "where", "compare")
AUX_FAMILIES = ("describe_color", "describe_shape")
DIFFICULTY = {
    "count": "easy",
    "color": "easy",
    "shape": "easy",
    "count_color": "medium",
    "exists": "medium",
    "where": "hard",
    "compare": "hard",
}
SPLIT_OFFSETS = {"train": 0, "validation": 1, "test": 2}


@dataclass(frozen=True)
class Scene:
    """Objects by cell index (0..15, raster order): (colour, shape)."""

    objects: dict[int, tuple[str, str]]


@dataclass(frozen=True)
class Sample:
    id: str
    image: np.ndarray  # uint8, (64, 64, 3)
    question: str
    answer: str  # the label
    task_type: str
    response: str = ""  # the phrase a model answers with (the label itself if empty)


def vocabulary() -> list[str]:
    """Every word a question or answer of this generator can contain."""
    words = [
        "how", "many", "objects", "are", "there", "?", "what", "color", "is", "the", "object",
        "at", "shape", "where", "more", "than", "a", "an", "yes", "no", "describe", ".", "none",
    ]  # fmt: skip
    words += list(COLORS) + list(SHAPES) + CELLS + [str(n) for n in range(GRID * GRID + 1)]
    return list(dict.fromkeys(words))


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    # Hash-derived streams: sample i of a split never depends on how many came before it.
    digest = hashlib.sha256(f"{seed}:{split}:{index}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def random_scene(rng: np.random.Generator) -> Scene:
    n = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    cells = rng.choice(GRID * GRID, size=n, replace=False)
    colors, shapes = list(COLORS), list(SHAPES)
    return Scene(
        {
            int(c): (colors[rng.integers(len(colors))], shapes[rng.integers(len(shapes))])
            for c in cells
        }
    )


def _shape_mask(shape: str, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    c = size / 2
    if shape == "circle":
        return (yy - c) ** 2 + (xx - c) ** 2 <= (size / 2) ** 2
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "triangle":  # apex up
        return np.abs(xx - c) <= yy / 2
    if shape == "cross":
        arm = max(1.0, size / 6)
        return (np.abs(xx - c) <= arm) | (np.abs(yy - c) <= arm)
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Draw the scene; size, offset, colour and background noise are jittered."""
    img = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 24, dtype=np.int16)
    img += rng.integers(-8, 9, size=img.shape, dtype=np.int16)
    for cell, (color, shape) in scene.objects.items():
        row, col = divmod(cell, GRID)
        size = int(rng.integers(10, 15))
        oy = row * CELL + int(rng.integers(1, CELL - size))
        ox = col * CELL + int(rng.integers(1, CELL - size))
        mask = _shape_mask(shape, size)
        rgb = np.array(COLORS[color], dtype=np.int16) + rng.integers(-20, 21, size=3)
        patch = img[oy : oy + size, ox : ox + size]
        patch[mask] = rgb
    return np.clip(img, 0, 255).astype(np.uint8)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _question(
    family: str, scene: Scene, rng: np.random.Generator
) -> tuple[str, str] | None:
    """One (question, label) of a family, or None when this scene cannot host it."""
    objs = scene.objects
    colors, shapes = list(COLORS), list(SHAPES)
    if family == "count":
        return "how many objects are there ?", str(len(objs))
    if family in ("color", "shape"):
        cell = list(objs)[rng.integers(len(objs))]
        value = objs[cell][0 if family == "color" else 1]
        return f"what {family} is the object at {CELLS[cell]} ?", value
    if family == "count_color":
        color = colors[rng.integers(len(colors))]
        n = sum(c == color for c, _ in objs.values())
        return f"how many {color} objects are there ?", str(n)
    if family == "exists":
        color, shape = colors[rng.integers(len(colors))], shapes[rng.integers(len(shapes))]
        present = (color, shape) in objs.values()
        return f"is there {_article(color)} {color} {shape} ?", "yes" if present else "no"
    if family == "where":
        pairs = list(objs.values())
        unique = [cell for cell, p in objs.items() if pairs.count(p) == 1]
        if not unique:
            return None
        cell = unique[rng.integers(len(unique))]
        color, shape = objs[cell]
        return f"where is the {color} {shape} ?", CELLS[cell]
    if family == "compare":
        a, b = rng.choice(len(colors), size=2, replace=False)
        ca, cb = colors[a], colors[b]
        na = sum(c == ca for c, _ in objs.values())
        nb = sum(c == cb for c, _ in objs.values())
        if na == nb:  # ties make "no" ambiguous to a reader; skip them
            return None
        return f"are there more {ca} objects than {cb} objects ?", "yes" if na > nb else "no"
    if family in AUX_FAMILIES:
        k = 0 if family == "describe_color" else 1
        words = [objs[c][k] if c in objs else "none" for c in range(GRID * GRID)]
        return f"describe {family.split('_')[1]} .", " ".join(words)
    raise ValueError(f"unknown question family {family!r}")


def response(family: str, question: str, label: str) -> str:
    """The phrase answering `question` whose label is `label` (a function of the two)."""
    q = question.removesuffix(" ?").split()
    if family == "count":
        return f"there are {label} objects"
    if family in ("color", "shape"):
        value = label if family == "color" else f"{_article(label)} {label}"
        return f"the object at {q[-1]} is {value}"
    if family == "count_color":
        return f"there are {label} {q[2]} objects"
    if family == "exists":
        color, shape = q[-2:]
        return (f"yes there is {_article(color)} {color} {shape}" if label == "yes"
                else f"no there is no {color} {shape}")
    if family == "where":
        return f"the {q[-2]} {q[-1]} is at {label}"
    if family == "compare":
        a, b = q[3], q[6]
        more, fewer = (a, b) if label == "yes" else (b, a)
        return f"{label} there are more {more} objects than {fewer} objects"
    return label  # describe: the label is already the full answer


def _balanced_answer(family: str, rng: np.random.Generator) -> str | None:
    """Target answer for rejection sampling, so that no family is won by its prior."""
    if family in ("exists", "compare"):
        return "yes" if rng.random() < 0.5 else "no"
    if family == "count_color":
        return str(int(rng.integers(0, 4)))
    return None


def make_sample(
    seed: int,
    split: str,
    index: int,
    families: tuple[str, ...] = QA_FAMILIES,
    aux_fraction: float = 0.0,
) -> Sample:
    """Sample `index` of `split`: deterministic in (seed, split, index, families)."""
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"split must be one of {sorted(SPLIT_OFFSETS)}, got {split!r}")
    rng = _rng(seed, split, index)
    if aux_fraction > 0 and rng.random() < aux_fraction:
        family = AUX_FAMILIES[rng.integers(len(AUX_FAMILIES))]
    else:
        family = families[index % len(families)]  # round-robin: equal family shares
    target = _balanced_answer(family, rng)
    for _ in range(1000):
        scene = random_scene(rng)
        qa = _question(family, scene, rng)
        if qa is None or (target is not None and qa[1] != target):
            continue
        return Sample(f"{split}-{index:07d}", render(scene, rng), qa[0], qa[1], family,
                      response(family, *qa))
    raise RuntimeError(f"could not sample family {family!r} (seed={seed}, index={index})")


def build_split(
    seed: int,
    split: str,
    size: int,
    families: tuple[str, ...] = QA_FAMILIES,
    aux_fraction: float = 0.0,
):
    """The split as a `datasets.Dataset` with an Image feature (savable to parquet)."""
    import datasets
    from PIL import Image

    samples = [make_sample(seed, split, i, families, aux_fraction) for i in range(size)]
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "response": datasets.Value("string"),
            "task_type": datasets.Value("string"),
        }
    )
    return datasets.Dataset.from_dict(
        {
            "id": [s.id for s in samples],
            "image": [Image.fromarray(s.image) for s in samples],
            "question": [s.question for s in samples],
            "answer": [s.answer for s in samples],
            "response": [s.response or s.answer for s in samples],
            "task_type": [s.task_type for s in samples],
        },
        features=features,
    )
