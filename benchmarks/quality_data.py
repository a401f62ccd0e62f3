"""A second VQA dataset for the generalisation check, written as local parquet files.

It is built independently of `masters.synthetic` (its own renderer, its own question
families) and read by the pipeline through the generic path (`data.source: datasets`,
`masters/data.py`), exactly like a user's dataset. It stays inside the embedded models'
word-level vocabulary (an unknown word would be one <unk> token) and their 64 px, 4 x 4-cell
image format, but changes what the models saw while being bootstrapped:

- images: a vertically graded, speckled dark background instead of uniform noise; objects
  8-12 px (not 10-14) with a darker rim; other RGB values for the six colour names;
- questions: seven families of which four are new compositions of known words
  (count_shape "how many circle objects are there ?", shape_of_color "what shape is the
  red object ?", where_color "where is the red object ?", compare_shape "are there more
  circle objects than square objects ?"), and three are kept to anchor the check
  (color and shape at a cell, count), each with balanced answers where it has yes/no or
  small-count answers.

Every sample is a pure function of (seed, split, index).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

# The board's geometry, shape and cell names are the embedded models' own (their 16 px patches
# and word-level vocabulary); only the drawing and the questions differ.
from masters.synthetic import CELL, CELLS, GRID, SHAPES
from masters.synthetic import IMAGE_SIZE as SIZE

# The same six names as the built-in task, drawn with other RGB values.
COLORS = {
    "red": (200, 70, 60),
    "green": (70, 160, 90),
    "blue": (70, 100, 200),
    "yellow": (210, 190, 70),
    "purple": (140, 80, 170),
    "cyan": (70, 180, 190),
}
FAMILIES = ("count", "color", "shape", "count_shape", "shape_of_color", "where_color",
            "compare_shape")
SPLIT_OFFSETS = {"train": 10, "validation": 11, "test": 12}
FORMAT = 2  # bump when the generator changes: the files are rebuilt


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    digest = hashlib.sha256(f"quality-v2:{seed}:{split}:{index}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _scene(rng) -> dict[int, tuple[str, str]]:
    n = int(rng.integers(3, 9))
    cells = rng.choice(GRID * GRID, size=n, replace=False)
    names = list(COLORS)
    return {int(c): (names[rng.integers(6)], SHAPES[rng.integers(4)]) for c in cells}


def _mask(shape: str, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    c = size / 2
    if shape == "circle":
        return (yy - c) ** 2 + (xx - c) ** 2 <= (size / 2) ** 2
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "triangle":
        return np.abs(xx - c) <= yy / 2
    arm = max(1.0, size / 5)
    return (np.abs(xx - c) <= arm) | (np.abs(yy - c) <= arm)


def render(objects: dict[int, tuple[str, str]], rng) -> np.ndarray:
    # A dark background like the models were trained on (a light one puts every embedded
    # model near chance: they were never shown one), but graded and speckled, not uniform
    # noise; smaller objects with a dark rim; other RGB values for the colour names.
    top, bottom = rng.integers(8, 30), rng.integers(30, 52)
    grad = np.linspace(top, bottom, SIZE).reshape(SIZE, 1, 1)
    img = np.broadcast_to(grad, (SIZE, SIZE, 3)).astype(np.int16).copy()
    speckle = rng.random((SIZE, SIZE)) < 0.03
    img[speckle] += 60
    for cell, (color, shape) in objects.items():
        row, col = divmod(cell, GRID)
        size = int(rng.integers(8, 13))
        oy = row * CELL + int(rng.integers(1, CELL - size))
        ox = col * CELL + int(rng.integers(1, CELL - size))
        m = _mask(shape, size)
        p = np.pad(m, 1)
        inner = p[2:, 1:-1] & p[:-2, 1:-1] & p[1:-1, 2:] & p[1:-1, :-2]
        rgb = np.array(COLORS[color], dtype=np.int16) + rng.integers(-12, 13, size=3)
        patch = img[oy : oy + size, ox : ox + size]
        patch[m] = rgb * 0.6  # rim
        patch[m & inner] = rgb
    return np.clip(img, 0, 255).astype(np.uint8)


def _question(family: str, objs: dict, rng) -> tuple[str, str] | None:
    colors = [c for c, _ in objs.values()]
    shapes = [s for _, s in objs.values()]
    if family == "count":
        return "how many objects are there ?", str(len(objs))
    if family in ("color", "shape"):
        cell = list(objs)[rng.integers(len(objs))]
        return (f"what {family} is the object at {CELLS[cell]} ?",
                objs[cell][0 if family == "color" else 1])
    if family == "count_shape":
        shape = SHAPES[rng.integers(4)]
        return f"how many {shape} objects are there ?", str(shapes.count(shape))
    if family in ("shape_of_color", "where_color"):
        unique = [cell for cell, (c, _) in objs.items() if colors.count(c) == 1]
        if not unique:
            return None
        cell = unique[rng.integers(len(unique))]
        color, shape = objs[cell]
        if family == "shape_of_color":
            return f"what shape is the {color} object ?", shape
        return f"where is the {color} object ?", CELLS[cell]
    if family == "compare_shape":
        a, b = rng.choice(4, size=2, replace=False)
        na, nb = shapes.count(SHAPES[a]), shapes.count(SHAPES[b])
        if na == nb:
            return None
        return (f"are there more {SHAPES[a]} objects than {SHAPES[b]} objects ?",
                "yes" if na > nb else "no")
    raise ValueError(family)


def make_sample(seed: int, split: str, index: int) -> dict:
    rng = _rng(seed, split, index)
    family = FAMILIES[index % len(FAMILIES)]
    target = None
    if family == "compare_shape":
        target = "yes" if rng.random() < 0.5 else "no"
    elif family == "count_shape":
        target = str(int(rng.integers(0, 4)))
    for _ in range(1000):
        objs = _scene(rng)
        qa = _question(family, objs, rng)
        if qa is None or (target is not None and qa[1] != target):
            continue
        return {"uid": f"v2-{split}-{index:06d}", "picture": render(objs, rng),
                "prompt": qa[0], "label": qa[1], "family": family}
    raise RuntimeError(f"could not sample {family} ({seed}, {split}, {index})")


def write(folder: str | Path, sizes: dict[str, int], seed: int = 0) -> Path:
    """`<split>.parquet` for each split (columns uid, picture, prompt, label, family: not the
    canonical names, so the column mapping is exercised). Skips files already written for the
    same sizes, seed and FORMAT."""
    import datasets
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = folder / "dataset.txt"
    want = f"format={FORMAT} seed={seed} sizes={sorted(sizes.items())}\n"
    if stamp.exists() and stamp.read_text() == want:
        return folder
    features = datasets.Features({"uid": datasets.Value("string"), "picture": datasets.Image(),
                                  "prompt": datasets.Value("string"),
                                  "label": datasets.Value("string"),
                                  "family": datasets.Value("string")})
    for split, n in sizes.items():
        rows = [make_sample(seed, split, i) for i in range(n)]
        ds = datasets.Dataset.from_dict(
            {"uid": [r["uid"] for r in rows],
             "picture": [Image.fromarray(r["picture"]) for r in rows],
             "prompt": [r["prompt"] for r in rows], "label": [r["label"] for r in rows],
             "family": [r["family"] for r in rows]}, features=features)
        ds.to_parquet(str(folder / f"{split}.parquet"))
    stamp.write_text(want)
    return folder


# --set overrides that point the pipeline at the files written by `write`.
def overrides(folder: str | Path) -> list[str]:
    return ["data.source=datasets", f"data.path={Path(folder)}",
            "data.columns={image: picture, question: prompt, answer: label, id: uid, "
            "task_type: family}"]
