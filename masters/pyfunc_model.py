"""The distilled student as an MLflow pyfunc model: (image, question) rows in, answers out.

MLflow's transformers flavor cannot rebuild an image-text-to-text pipeline, so the registered
model wraps the `save_pretrained` folder (an artifact named `ckpt`) and loads it with
`masters.models.load`, the same path training and evaluation use. Decoding is greedy, like
evaluation, so the served model answers exactly what was scored.

    model = mlflow.pyfunc.load_model("models:/masters-student@champion")
    model.predict(pd.DataFrame({"image": [png_bytes], "question": ["how many objects ?"]}))
"""

from __future__ import annotations

import base64
import io
import shutil
from importlib import metadata
from pathlib import Path

import mlflow.pyfunc
import pandas as pd  # at module level: MLflow resolves predict's type hint on the class

DEFAULT_MAX_NEW_TOKENS = 16  # EvaluationConfig.max_new_tokens: room for a phrase
DEFAULT_BATCH_SIZE = 32
# What the wrapper imports at load time. Pinned to what this process runs with (pyproject pins
# torch, transformers and mlflow exactly); requirement inference would take ~20 s and try to
# pin torchvision, which this project deliberately does not install.
REQUIREMENTS = ("torch", "transformers", "tokenizers", "safetensors", "pillow", "numpy",
                "pandas")


class StudentModel(mlflow.pyfunc.PythonModel):
    """Loads the checkpoint once per process; answers a DataFrame with image and question."""

    def load_context(self, context) -> None:
        from masters import models

        cfg = context.model_config or {}
        device = models.pick_device(cfg.get("device", "auto"))
        self.model, self.processor = models.load(
            context.artifacts["ckpt"], trust_remote_code=bool(cfg.get("trust_remote_code")),
            device=device, dtype=models.pick_dtype(cfg.get("dtype", "auto"), device))
        self.max_new_tokens = int(cfg.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        self.batch_size = int(cfg.get("batch_size", DEFAULT_BATCH_SIZE))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> list[str]:
        from masters import inputs

        params = params or {}
        max_new = int(params.get("max_new_tokens") or self.max_new_tokens)
        images = [to_image(x) for x in model_input["image"]]
        questions = [str(q) for q in model_input["question"]]
        out: list[str] = []
        for i in range(0, len(questions), self.batch_size):
            sl = slice(i, i + self.batch_size)
            out += inputs.greedy_answers(self.model, self.processor, images[sl], questions[sl],
                                         max_new)
        return out


def to_image(value):
    """PNG/JPEG bytes, a base64 string of them, a file path or a PIL image -> RGB PIL image,
    at its own size: the model's processor resizes, tiles or keeps it as the family does."""
    from PIL import Image

    if isinstance(value, Image.Image):
        img = value
    elif isinstance(value, bytes | bytearray):
        img = Image.open(io.BytesIO(value))
    elif isinstance(value, str):
        # A path is tried first only when it is short enough to be one: base64 PNGs are not.
        if len(value) < 4096 and Path(value).is_file():
            img = Image.open(value)
        else:
            img = Image.open(io.BytesIO(base64.b64decode(value, validate=True)))
    else:
        raise TypeError(f"image must be bytes, a base64 string, a path or a PIL image, got "
                        f"{type(value).__name__}")
    return img.convert("RGB")


def png_base64(array) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def signature(max_new_tokens: int):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "image"), ColSpec("string", "question")]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec("max_new_tokens", "long", max_new_tokens)]),
    )


def input_example():
    """One synthetic test image (base64 PNG) and a question about it."""
    from masters import synthetic

    sample = synthetic.make_sample(0, "test", 0)
    return pd.DataFrame({"image": [png_base64(sample.image)], "question": [sample.question]})


def pip_requirements() -> list[str]:
    # Local version labels (torch's "+cpu") are not installable from an index: dropped.
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in REQUIREMENTS]


def _code_dir(tmp: Path) -> Path:
    """The masters package as code_paths, .py files only: never the shipped checkpoints."""
    src = Path(__file__).resolve().parent
    dst = tmp / "masters"
    dst.mkdir(parents=True)
    for f in src.glob("*.py"):
        shutil.copy2(f, dst / f.name)
    return dst


# Models from code: MLflow stores and runs this file to build the model, so loading a
# registered student unpickles nothing.
MODEL_CODE = """from mlflow.models import set_model

from masters.pyfunc_model import StudentModel

set_model(StudentModel())
"""


def log_student(client, run_id: str, checkpoint_path: str | Path, *, name: str = "student",
                model_config: dict | None = None):
    """Log the checkpoint as a pyfunc model of run `run_id`; returns MLflow's ModelInfo.

    `Model.log` with an explicit run id is what `mlflow.pyfunc.log_model` calls, minus the
    thread-local active run: Prefect may run this task in a worker thread. The LoggedModel is
    created here so it lands in the run's experiment (and artifact store), not the default one.
    """
    import tempfile

    from mlflow.models import Model

    config = {"max_new_tokens": DEFAULT_MAX_NEW_TOKENS, **(model_config or {})}
    experiment_id = client.get_run(run_id).info.experiment_id
    logged = client.create_logged_model(experiment_id, name=name, source_run_id=run_id)
    with tempfile.TemporaryDirectory(prefix="masters-code-") as tmp:
        script = Path(tmp) / "student_model.py"
        script.write_text(MODEL_CODE)
        return Model.log(
            artifact_path=None, name=name, flavor=mlflow.pyfunc, run_id=run_id,
            model_id=logged.model_id, python_model=str(script),
            artifacts={"ckpt": str(Path(checkpoint_path).resolve())},
            code_paths=[str(_code_dir(Path(tmp)))], pip_requirements=pip_requirements(),
            signature=signature(int(config["max_new_tokens"])), input_example=input_example(),
            model_config=config,
        )
