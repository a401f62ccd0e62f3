"""Typed configuration: defaults < YAML file (--config) < env MASTERS_* (nested with __) < --set.

Every check runs when the config is built, before any work starts, and a failure names the
field and the value (`masters.config.ConfigError`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

RATIO_DECIMALS = 6  # ratios are compared after rounding: 0.15 / 0.05 is not an integer in floats


class ConfigError(ValueError):
    """Invalid configuration; the message lists each bad field with its value."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ColumnMapping(Section):
    image: str = "image"
    question: str = "question"
    answer: str = "answer"
    # Optional reference answer text (a phrase or sentence) the supervised baseline trains
    # on; grading always reads `answer`. Absent: the baseline trains on `answer` itself.
    response: str | None = "response"
    id: str | None = "id"
    choices: str | None = None
    task_type: str | None = "task_type"


class DataConfig(Section):
    source: Literal["synthetic", "datasets"] = "synthetic"
    path: str | None = Field(None, description="local parquet/json/imagefolder dir or hub id")
    seed: int = 0
    train_size: int = Field(2048, ge=1)
    validation_size: int = Field(350, ge=1)
    test_size: int = Field(700, ge=1)
    columns: ColumnMapping = ColumnMapping()

    @model_validator(mode="after")
    def _path_for_datasets(self) -> DataConfig:
        if self.source == "datasets" and not self.path:
            raise ValueError("data.path is required when data.source is 'datasets'")
        return self


class ModelRef(Section):
    path: str = Field(description="save_pretrained folder, hub id, or embedded:<name>")
    trust_remote_code: bool = False
    processor: dict[str, Any] = Field(
        default_factory=dict,
        description="keyword arguments for AutoProcessor.from_pretrained, e.g. min_pixels / "
                    "max_pixels (Qwen), do_image_splitting (SmolVLM), chat_template (a Jinja "
                    "string, for checkpoints that ship none, such as PaliGemma)")
    # transformers' big-model inference (accelerate places the layers): a teacher or judge
    # larger than one GPU. Training does not take it: the student is one replica per rank.
    device_map: str | dict[str, int | str] | None = Field(
        None, description="for a model the run only reads: 'auto', 'balanced', "
        "'sequential' or {module: device}, passed to from_pretrained; None: the run's device")
    max_memory: dict[int | str, str] | None = Field(
        None, description="with device_map: the most each device may hold, e.g. "
        "{0: '70GiB', 1: '70GiB', cpu: '200GiB'}")

    @model_validator(mode="after")
    def _max_memory_needs_a_map(self) -> ModelRef:
        if self.max_memory and self.device_map is None:
            raise ValueError(f"max_memory is set for {self.path!r} but device_map is not "
                             "(set device_map: auto)")
        return self

    def spread(self) -> dict[str, Any]:
        """`models.load` keyword arguments that place the model over devices (or none)."""
        if self.device_map is None:
            return {}
        return {"device_map": self.device_map, "max_memory": self.max_memory}


class TeacherConfig(ModelRef):
    name: str
    r_max: float = Field(0.2, ge=0.0, lt=1.0)
    step: float = Field(0.05, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _r_max_multiple_of_step(self) -> TeacherConfig:
        k = round(self.r_max / self.step)
        if abs(k * self.step - self.r_max) > 10 ** (-RATIO_DECIMALS):
            raise ValueError(
                f"r_max {self.r_max} of teacher {self.name!r} is not a multiple of step "
                f"{self.step}"
            )
        return self

    def ratios(self) -> list[float]:
        """The staircase r_max, r_max - step, ..., 0."""
        k = round(self.r_max / self.step)
        return [round((k - i) * self.step, RATIO_DECIMALS) for i in range(k + 1)]


def _default_teachers() -> list[TeacherConfig]:
    return [
        TeacherConfig(name="mid", path="embedded:mid", r_max=0.2),
        TeacherConfig(name="large", path="embedded:large", r_max=0.2),
    ]


class MaskingConfig(Section):
    """Which tensors the teacher mask covers (method.md section 1 [D]) and the sanity sweep."""

    include_embeddings: bool = False
    include_lm_head: bool = False
    sweep_ratios: list[float] = Field(
        default_factory=lambda: [round(0.05 * i, 2) for i in range(11)], min_length=1
    )

    @field_validator("sweep_ratios")
    @classmethod
    def _ratios_in_range(cls, v: list[float]) -> list[float]:
        bad = [r for r in v if not 0.0 <= r < 1.0]
        if bad:
            raise ValueError(f"mask ratios must lie in [0, 1), got {bad}")
        return sorted(set(v))


class GenerationConfig(Section):
    teacher_answers: int = Field(4, ge=1)
    student_answers: int = Field(4, ge=0)
    temperature: float = Field(1.0, gt=0.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    top_k: int = Field(50, ge=0)
    repetition_penalty: float = Field(1.05, gt=0.0)
    max_new_tokens: int = Field(8, ge=1)
    batch_size: int = Field(32, ge=1)
    shard_size: int = Field(64, ge=1)  # questions per cached shard: the unit of resuming
    teacher_top_k: int = Field(
        64, ge=0, description="teacher log-probs cached per answer token for training (the "
        "top k + the tail mass); 0 keeps the whole vocabulary (exact)")
    seed: int = 0
    # Where the shard tasks run. Not part of any cache key: a shard's content does not depend
    # on which process sampled it (masters.generation.sampling_settings).
    task_runner: Literal["threads", "dask"] = Field(
        "threads", description="threads: the flow's own process; dask: Dask worker processes "
        "(prefect-dask), each holding its own copy of the models")
    dask_address: str | None = Field(
        None, description="task_runner dask: an existing scheduler, e.g. tcp://host:8786; "
        "None starts a local cluster of dask_workers processes for the flow run")
    dask_workers: int = Field(2, ge=1, description="task_runner dask without dask_address: "
                              "local worker processes (one thread each)")


DEFAULT_SCORER = "phrase_match"  # rewards, evaluation and the registry gate alike
RULE_SCORERS = ("phrase_match", "exact_match", "numeric", "yes_no", "multiple_choice", "relaxed",
                "anls")
SCORERS = (*RULE_SCORERS, "judge")


class RewardsConfig(Section):
    scorer: str = Field(DEFAULT_SCORER, description="accuracy reward: a rule-based scorer of "
                        "masters.rewards or judge; evaluation uses the same rule")
    scorer_kwargs: dict[str, Any] = Field(default_factory=dict,
                                          description="e.g. {tolerance: 0.05} for numeric")
    judge: ModelRef | None = Field(None, description="judge model; default: the stage's "
                                   "unmasked teacher (scorer: judge only)")
    judge_max_new_tokens: int = Field(64, ge=1)

    @field_validator("scorer")
    @classmethod
    def _known_scorer(cls, v: str) -> str:
        if v not in SCORERS:
            raise ValueError(f"unknown scorer {v!r}; choose one of {', '.join(SCORERS)}")
        return v


class TrainingConfig(Section):
    # "supervised" is the label baseline: NLL of the dataset answer, no teacher, no rewards.
    objective: Literal["masters", "supervised"] = "masters"
    lr: float = Field(1e-6, gt=0.0, description="constant, as in the paper (2B-8B students)")
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, ge=0.0, description="0 disables clipping")
    kl_beta: float = Field(0.1, ge=0.0, description="weight of KL(student || reference)")
    jsd_weight: float = Field(1.0, ge=0.0, description="weight of the JSD distillation loss")
    jsd_beta: float = Field(0.5, ge=0.0, le=1.0, description="0.5 = symmetric JSD")
    batch_groups: int = Field(4, ge=1, description="questions (groups of G answers) per step")
    # Memory switches (docs/training.md, "Memory at real size"). The last two change what a
    # step holds at once, not what it computes (micro-batches: up to float summation order).
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="the student's forward: bf16 = bfloat16 autocast on CUDA over "
        "float32 weights, gradients and AdamW state; fp32 = no autocast; auto = bf16 on a "
        "CUDA device that supports it, else fp32 (bf16 elsewhere is refused)")
    gradient_checkpointing: bool = Field(
        False, description="recompute each block's activations in backward instead of "
        "keeping them (less memory, one more forward per step)")
    micro_batch_groups: int | None = Field(
        None, ge=1, description="groups per forward/backward; their gradients accumulate "
        "into one optimizer step of batch_groups (same loss and gradient). None: a rank's "
        "whole share at once")
    sharding: Literal["auto", "ddp", "fsdp"] = Field(
        "auto", description="engine of a multi-process run: ddp = every rank holds the whole "
        "student and its AdamW state; fsdp = torch FSDP2 (fully_shard) splits weights, "
        "gradients and AdamW state over the ranks; auto = fsdp when `accelerate launch` ran an "
        "FSDP config (ACCELERATE_USE_FSDP=true), else ddp. One process: neither")
    accuracy_reward: bool = True
    distill_reward: bool = True
    distill_minmax: bool = Field(True, description="reverse min-max within the group")
    epochs: int = Field(1, ge=1, description="passes over each stage's groups before the next "
                        "stage (reshuffled every pass)")
    warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up")
    lr_decay: Literal["constant", "cosine"] = Field(
        "constant", description="after warm-up: constant (the paper) or cosine decay to "
        "min_lr_ratio * lr at the last step")
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    eval_every: int = Field(0, ge=0, description="learning curve: validation accuracy every N "
                            "optimizer steps, at step 0 and at the last step (0: off)")
    output_dir: str = Field(".masters/train", description="stage checkpoints, final student")
    seed: int = 0


class EvaluationConfig(Section):
    batch_size: int = Field(64, ge=1)
    max_new_tokens: int = Field(16, ge=1)
    suite: str | None = Field(None, description="suite name (configs/suites/<name>.yaml) or "
                              "YAML path; None: data.<split> scored by `scorer`")
    scorer: str | None = Field(None, description="None: the accuracy reward's rule "
                               "(rewards.scorer; phrase_match when that is the judge)")

    @field_validator("scorer")
    @classmethod
    def _rule_based(cls, v: str | None) -> str | None:
        if v is not None and v not in RULE_SCORERS:
            raise ValueError(f"unknown rule-based scorer {v!r}; choose one of "
                             f"{', '.join(RULE_SCORERS)}")
        return v


# pydantic warns that a field named `register` shadows `ABCMeta.register`; that one lives on
# the metaclass, so instances (cfg.promotion.register) are unaffected.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "register"')

    class PromotionConfig(Section):
        """Registry gate: a new student version takes the `champion` alias only if it wins."""

        register: bool = Field(True, description="register the distilled student in MLflow")
        gate_metric: str = Field("test/accuracy", description="evaluation metric compared")
        margin: float = Field(0.0, ge=0.0, description="how much the champion must be beaten "
                              "by")
        greater_is_better: bool = True
        first_must_beat_initial: bool = Field(
            True, description="with no champion yet, the first version must still beat the "
            "initial student on the gate metric (by the margin) to become champion")


class StorageConfig(Section):
    cache_uri: str = ".masters/cache"
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None

    @field_validator("cache_uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        parsed = urlparse(v)
        if parsed.scheme == "s3":
            if len(parsed.netloc) < 3:
                raise ValueError(f"malformed S3 URI {v!r}: expected s3://<bucket>/<prefix>")
        elif parsed.scheme not in ("", "file"):
            raise ValueError(f"unsupported cache URI {v!r}: use a local path or s3://bucket/prefix")
        return v

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None and urlparse(v).scheme not in ("http", "https"):
            raise ValueError(f"endpoint_url {v!r} must start with http:// or https://")
        return v


class TrackingConfig(Section):
    tracking_uri: str = "sqlite:///.masters/mlflow.db"
    artifact_location: str | None = ".masters/mlartifacts"
    experiment: str = "masters"
    registered_model: str = "masters-student"

    @field_validator("tracking_uri")
    @classmethod
    def _tracking(cls, v: str) -> str:
        scheme = urlparse(v).scheme
        allowed = ("sqlite", "http", "https", "file", "postgresql", "mysql", "databricks", "")
        if scheme not in allowed:
            raise ValueError(f"unsupported MLflow tracking URI {v!r}")
        return v


class BootstrapModel(Section):
    shape: Literal["smoke", "student", "mid", "large"]
    steps: int = Field(ge=1)
    batch_size: int = Field(64, ge=1)
    # 2e-3 diverged at step ~700 for the large model (loss 0.6 -> 1.06, back to the prior).
    lr: float = Field(1e-3, gt=0.0)
    warmup: int = Field(300, ge=0)
    aux_fraction: float = Field(0.35, ge=0.0, lt=1.0)
    eval_every: int = Field(500, ge=1)
    stop_at: int | None = Field(None, ge=1, description="stop early; the LR schedule still "
                                "spans `steps`")
    threads: int = Field(0, ge=0, description="torch threads (0: torch's default); two "
                         "bootstraps side by side on 2 cores take 1 each")
    seed: int = 0


def _default_bootstrap() -> dict[str, BootstrapModel]:
    # How the shipped phrase-answer family was made (docs/embedded.md has the curves). One
    # torch thread each: a run near a plateau break moves by hundreds of steps with the
    # thread count, so it reproduces only with the one it was made with.
    return {
        # Stopped inside its plateau break (test 0.66 at 3,500, 0.711 at 3,800, 0.737 at
        # 4,000): capable on the easy families, half-way on the binding ones.
        "student": BootstrapModel(shape="student", steps=12000, stop_at=3800, eval_every=100,
                                  threads=1),
        "mid": BootstrapModel(shape="mid", steps=3000, threads=1),
        # Validation 0.949 at step 4,000, 0.957 at 4,500, 0.980 at 5,000: stopped there.
        "large": BootstrapModel(shape="large", steps=12000, stop_at=5000, threads=1),
    }


class BootstrapConfig(Section):
    out_dir: str = ".masters/bootstrap"
    models: dict[str, BootstrapModel] = Field(default_factory=_default_bootstrap)
    eval_size: int = Field(350, ge=1)
    test_size: int = Field(700, ge=1)


class _YamlSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls, data: dict[str, Any]):
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field, field_name):  # pragma: no cover - unused by __call__
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._data


class MastersConfig(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MASTERS_", env_nested_delimiter="__", extra="forbid", validate_assignment=True
    )

    run_name: str = "masters"
    device: str = "auto"
    # Weights of every model the run only reads: teachers, the judge, the student while it
    # answers or is evaluated. auto = bfloat16 on a CUDA device that supports it, else float32.
    # The student being trained keeps float32 master weights whatever this says
    # (training.precision: bf16 autocast of its forward on CUDA).
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    data: DataConfig = DataConfig()
    student: ModelRef = ModelRef(path="embedded:student")
    teachers: list[TeacherConfig] = Field(default_factory=_default_teachers, min_length=1)
    masking: MaskingConfig = MaskingConfig()
    generation: GenerationConfig = GenerationConfig()
    rewards: RewardsConfig = RewardsConfig()
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    storage: StorageConfig = StorageConfig()
    tracking: TrackingConfig = TrackingConfig()
    promotion: PromotionConfig = PromotionConfig()
    bootstrap: BootstrapConfig = BootstrapConfig()

    @model_validator(mode="after")
    def _unique_teachers(self) -> MastersConfig:
        names = [t.name for t in self.teachers]
        if len(set(names)) != len(names):
            raise ValueError(f"teacher names must be unique, got {names}")
        if self.student.device_map is not None:
            raise ValueError("student.device_map: the student is trained as one replica per "
                             "process (DDP) and cannot be spread over devices; device_map is "
                             "for teachers and the judge")
        return self

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        yaml_data = _YAML_DATA.get("data", {})
        return (init_settings, env_settings, _YamlSource(settings_cls, yaml_data))

    def eval_scorer(self) -> dict[str, Any]:
        """`evaluation.evaluate_*` keyword arguments: the rule that decides a correct answer
        (the accuracy reward's, unless that is the judge or evaluation.scorer is set)."""
        name = self.evaluation.scorer or self.rewards.scorer
        if name == "judge":
            return {"scorer": DEFAULT_SCORER, "scorer_kwargs": {}}
        same = name == self.rewards.scorer
        return {"scorer": name, "scorer_kwargs": dict(self.rewards.scorer_kwargs) if same else {}}

    def public_dict(self) -> dict[str, Any]:
        """Everything but secrets, JSON-ready: what may be logged or stored as params."""
        return self.model_dump(mode="json", exclude={"storage": {"access_key_id",
                                                                 "secret_access_key"}})


_YAML_DATA: dict[str, dict[str, Any]] = {}


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`a.b=c` strings to a nested dict; values are parsed as YAML scalars (1, true, [..])."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r} conflicts with an earlier --set of {part!r}")
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({exc})") from None
    # {'0': {...}} from `teachers.0.r_max=...` stays a dict: load_config applies it as a
    # list-index patch.
    return out


def _merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = _merge(base.get(k), v) if k in base else v
        return out
    if isinstance(base, list) and isinstance(patch, dict) and all(k.isdigit() for k in patch):
        out = list(base)
        for k, v in patch.items():
            i = int(k)
            if i >= len(out):
                raise ConfigError(f"index {i} is out of range (list has {len(out)} items)")
            out[i] = _merge(out[i], v)
        return out
    return patch


def format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"  {loc}: {err['msg']}{shown}")
    return "invalid configuration:\n" + "\n".join(lines)


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> MastersConfig:
    """Build the config from all sources; raise ConfigError naming every bad field."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping at the top level")
    patch = parse_overrides(overrides or [])
    # List-index overrides (teachers.0.r_max) need the list they patch: resolve them against
    # the YAML (or the defaults) before handing the result to pydantic-settings.
    for key, value in patch.items():
        if isinstance(value, dict) and all(k.isdigit() for k in value):
            if key not in data:
                defaults = MastersConfig.model_fields[key].get_default(call_default_factory=True)
                data[key] = [d.model_dump() for d in defaults]
            data[key] = _merge(data[key], value)
    init = {k: v for k, v in patch.items() if not (
        isinstance(v, dict) and v and all(k2.isdigit() for k2 in v))}
    _YAML_DATA["data"] = data
    try:
        return MastersConfig(**init)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
    finally:
        _YAML_DATA.pop("data", None)


def from_public(data: dict[str, Any] | None) -> MastersConfig:
    """Rebuild a config passed between Prefect flows/tasks as `public_dict()`.

    Secrets are never passed as parameters (Prefect stores those): they come back from the
    environment here, because init values and env are both sources of MastersConfig.
    """
    try:
        return MastersConfig(**(data or {}))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
