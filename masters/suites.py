"""Evaluation suites as data: a YAML file names the tasks, a user adds a benchmark without code.

Like an lmms-eval task YAML, each task says where its questions come from (the synthetic
scenes or a local/hub dataset, with a column mapping as in `DataConfig`), which split, and
which scorer of `masters.rewards.SCORERS` decides a hit. Example (configs/suites/):

    name: embedded
    tasks:
      - name: synthetic-test
        source: synthetic
        split: test
        size: 700
        scorer: exact_match
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from masters import data, evaluation, rewards
from masters.config import ColumnMapping, DataConfig

SUITES_DIR = Path(__file__).resolve().parents[1] / "configs" / "suites"


class SuiteError(ValueError):
    """An unusable suite file; the message names the file and the field."""


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    source: Literal["synthetic", "datasets"] = "synthetic"
    path: str | None = Field(None, description="local parquet/json/imagefolder dir or hub id")
    split: str = "test"
    seed: int = Field(0, description="synthetic scenes only")
    size: int = Field(700, ge=1, description="synthetic scenes only: questions in the split")
    columns: ColumnMapping = ColumnMapping()
    task_types: list[str] | None = Field(None, description="keep only these task types")
    scorer: str = rewards.DEFAULT_SCORER
    scorer_kwargs: dict[str, Any] = Field(default_factory=dict)
    limit: int | None = Field(None, ge=1, description="first N questions (after task_types)")

    @field_validator("scorer")
    @classmethod
    def _known_scorer(cls, v: str) -> str:
        if v not in rewards.SCORERS:
            raise ValueError(f"unknown scorer {v!r}; choose one of {sorted(rewards.SCORERS)}")
        return v

    @model_validator(mode="after")
    def _path_for_datasets(self) -> TaskSpec:
        if self.source == "datasets" and not self.path:
            raise ValueError("path is required when source is 'datasets'")
        return self

    def data_config(self) -> DataConfig:
        sizes = {f"{s}_size": self.size for s in ("train", "validation", "test")}
        return DataConfig(source=self.source, path=self.path, seed=self.seed,
                          columns=self.columns, **sizes)


class Suite(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    tasks: list[TaskSpec] = Field(min_length=1)

    @field_validator("tasks")
    @classmethod
    def _unique_names(cls, v: list[TaskSpec]) -> list[TaskSpec]:
        names = [t.name for t in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"task names must be unique; repeated: {dup}")
        return v


def resolve(name_or_path: str | Path) -> Path:
    """A YAML path as given, else a shipped suite by name (configs/suites/<name>.yaml)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = SUITES_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    known = sorted(f.stem for f in SUITES_DIR.glob("*.yaml"))
    raise SuiteError(f"no suite file {str(name_or_path)!r} and no shipped suite of that name "
                     f"(shipped: {known})")


def load(name_or_path: str | Path) -> Suite:
    path = resolve(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SuiteError(f"suite file {path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SuiteError(f"suite file {path}: expected a mapping with name and tasks, got "
                         f"{type(raw).__name__}")
    try:
        return Suite.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{_where(e['loc'], raw)}: {e['msg']}" for e in exc.errors())
        raise SuiteError(f"suite file {path}: {problems}") from exc


def _where(loc: tuple, raw: dict) -> str:
    # A task's own name beside its index: "tasks.3.scorer" alone makes the user count.
    text = ".".join(str(k) for k in loc) or "(top level)"
    tasks = raw.get("tasks")
    if len(loc) >= 2 and loc[0] == "tasks" and isinstance(tasks, list) and \
            isinstance(loc[1], int) and loc[1] < len(tasks) and isinstance(tasks[loc[1]], dict):
        name = tasks[loc[1]].get("name")
        text += f" (task {name!r})" if name else ""
    return text


@dataclass
class SuiteResult:
    name: str
    tasks: dict[str, evaluation.ScoredResult]
    accuracy: float = 0.0  # over every question of every task: big tasks weigh more
    per_type: dict[str, float] = field(default_factory=dict)
    n: int = 0

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        out = {f"{prefix}accuracy": self.accuracy}
        out.update({f"{prefix}accuracy/{k}": v for k, v in sorted(self.per_type.items())})
        for name, r in self.tasks.items():
            out[f"{prefix}suite/{name}/accuracy"] = r.accuracy
            out[f"{prefix}suite/{name}/abstain_rate"] = r.abstain_rate
        return out


def load_task(task: TaskSpec):
    """The task's split, canonical columns, filtered and limited."""
    ds = data.load_split(task.data_config(), task.split)
    if task.task_types is not None:
        keep = set(task.task_types)
        ds = ds.select([i for i, t in enumerate(ds["task_type"]) if t in keep])
        if len(ds) == 0:
            raise data.DataError(f"task {task.name!r}: no questions of task_types "
                                 f"{task.task_types} in split {task.split!r}")
    if task.limit is not None:
        ds = ds.select(range(min(task.limit, len(ds))))
    return ds


def evaluate(model, processor, suite: Suite, *, batch_size: int = 64, max_new_tokens: int = 16,
             progress: bool = False) -> SuiteResult:
    """Every task of the suite: greedy answers scored by the task's own scorer."""
    results: dict[str, evaluation.ScoredResult] = {}
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for task in suite.tasks:
        ds = load_task(task)
        preds = evaluation.predict_arrays(model, processor, evaluation.dataset_images(ds),
                                          ds["question"],
                                          batch_size=batch_size, max_new_tokens=max_new_tokens,
                                          progress=progress)
        kwargs = dict(task.scorer_kwargs)
        if task.scorer == "multiple_choice" and "choices" in ds.column_names:
            kwargs.setdefault("choices", ds["choices"])
        r = evaluation.score_predictions(preds, ds["answer"], ds["task_type"], task.scorer,
                                         **kwargs)
        results[task.name] = r
        for t, acc in r.per_task.items():
            count = sum(x == t for x in ds["task_type"])
            sums[t][0] += acc * count
            sums[t][1] += count
    n = sum(r.n for r in results.values())
    return SuiteResult(
        name=suite.name, tasks=results, n=n,
        accuracy=sum(r.accuracy * r.n for r in results.values()) / n if n else 0.0,
        per_type={t: s / c for t, (s, c) in sums.items() if c},
    )
