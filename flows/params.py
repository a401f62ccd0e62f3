"""Typed flow parameters: what the Prefect UI shows as a form for each deployment.

Every flow is configured by a preset (a YAML file of configs/) plus `key=value` overrides, the
same two sources as `masters <command> --config FILE --set KEY=VALUE`. The settings people
change most often from the UI are typed fields with the same bounds as the config, so Prefect
validates them against the deployment's parameter schema (`enforce_parameter_schema`) and
rejects a bad value (say `r_max: 1.5`) before a run is even created.

Secrets are never parameters: Prefect stores parameters in its database and shows them in the
UI. Credentials come from the worker's environment (`MASTERS_STORAGE__SECRET_ACCESS_KEY`, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from masters.config import ConfigError, MastersConfig, TeacherConfig, load_config

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class PresetParams(BaseModel):
    # Frozen: instances are flow parameter defaults, shared by every call.
    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: str = Field("configs/embedded.yaml", description="YAML config file, relative to "
                        "the project root (the deployment's working directory)")
    overrides: list[str] = Field(default_factory=list, description="more settings as "
                                 "key=value, as with `masters --set` (e.g. data.train_size=256)")

    def typed_overrides(self) -> list[str]:
        return []

    def to_config(self) -> MastersConfig:
        """The resolved config; ConfigError names every bad field."""
        return load_config(preset_path(self.preset), [*self.overrides, *self.typed_overrides()])


class DistillParams(PresetParams):
    """masters-distill: prune, generate, score, train, evaluate, register."""

    run_name: str | None = Field(None, min_length=1, max_length=100,
                                 description="name of the MLflow run (default: the preset's)")
    r_max: float | None = Field(None, ge=0.0, lt=1.0, description="first mask ratio of every "
                                "teacher; a multiple of its step (default: the preset's)")
    train_size: int | None = Field(None, ge=1, description="training questions")
    lr: float | None = Field(None, gt=0.0, description="student learning rate")
    cache_uri: str | None = Field(None, description="answer cache: a local folder or "
                                  "s3://bucket/prefix (credentials from the worker's env)")
    register_student: bool | None = Field(None, description="register the distilled student "
                                          "in MLflow")

    def typed_overrides(self) -> list[str]:
        pairs = {"run_name": self.run_name, "data.train_size": self.train_size,
                 "training.lr": self.lr, "storage.cache_uri": self.cache_uri,
                 "promotion.register": self.register_student}
        # JSON is valid YAML: the value is parsed back with its type (a string stays a string).
        return [f"{k}={_yaml_scalar(v)}" for k, v in pairs.items() if v is not None]

    def to_config(self) -> MastersConfig:
        cfg = super().to_config()
        if self.r_max is not None:
            try:
                cfg.teachers = [TeacherConfig(**{**t.model_dump(), "r_max": self.r_max})
                                for t in cfg.teachers]
            except ValidationError as exc:  # r_max not a multiple of a teacher's step
                msgs = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
                raise ConfigError(f"r_max: {msgs}") from None
        return cfg


class EvaluateParams(PresetParams):
    """masters-evaluate: a registered student version (or the configured one) on a suite."""

    model_version: str | None = Field(None, description="registered version number or alias "
                                      "(champion, challenger); default: the configured student")
    suite: str | None = Field(None, description="suite name in configs/suites/ or a YAML path; "
                              "default: the config's held-out split, exact match")
    split: Literal["test", "validation"] = "test"
    teachers: bool = Field(True, description="also evaluate every teacher of the chain")

    def typed_overrides(self) -> list[str]:
        return [f"evaluation.suite={_yaml_scalar(self.suite)}"] if self.suite else []


class BootstrapParams(PresetParams):
    """masters-bootstrap: train the embedded models from scratch."""

    only: list[str] | None = Field(None, description="models to bootstrap, by name in "
                                   "bootstrap.models (default: all configured)")


class PromoteParams(PresetParams):
    """masters-promote: move `champion` to a version (by hand or gated) or roll it back."""

    version: str | None = Field(None, pattern=r"^[0-9]+$", description="model version to make "
                                "champion")
    rollback: bool = Field(False, description="give champion back to the version it replaced")
    gated: bool = Field(False, description="only if the version passes the promotion gate")

    @field_validator("version", mode="before")
    @classmethod
    def _number_as_text(cls, v):
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v


def preset_path(preset: str) -> Path:
    """A relative preset is looked up in the working directory, then in the project root."""
    p = Path(preset)
    if p.is_absolute() or p.exists():
        return p
    in_project = PROJECT_ROOT / p
    return in_project if in_project.exists() else p  # load_config names the missing file


def _yaml_scalar(value) -> str:
    import json

    return json.dumps(value)


def flow_run_namer(prefix: str):
    """A `flow_run_name` callable: `<prefix>-<run name or preset>` in the Prefect UI instead of
    a random adjective-animal pair."""

    def name() -> str:
        from prefect.runtime import flow_run

        params = flow_run.parameters.get("params") or {}
        if isinstance(params, BaseModel):
            params = params.model_dump()
        config = flow_run.parameters.get("config") or {}
        label = (config.get("run_name") or params.get("run_name")
                 or Path(params.get("preset") or "default").stem)
        return f"{prefix}-{label}"

    return name
