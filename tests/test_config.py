"""Config sources, their precedence, and the errors bad values get."""

from __future__ import annotations

import json

import pytest

from flows import cli
from masters.config import ConfigError, MastersConfig, from_public, load_config, parse_overrides


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("MASTERS_"):
            monkeypatch.delenv(key)


def _yaml(tmp_path, text: str):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_follow_the_paper():
    cfg = load_config()
    g = cfg.generation
    assert (g.teacher_answers, g.student_answers) == (4, 4)
    assert (g.temperature, g.top_p, g.top_k, g.repetition_penalty) == (1.0, 0.9, 50, 1.05)
    assert cfg.training.kl_beta == 0.1 and cfg.training.lr == 1e-6
    assert [t.name for t in cfg.teachers] == ["mid", "large"]
    assert cfg.teachers[1].ratios() == [0.2, 0.15, 0.1, 0.05, 0.0]
    assert cfg.tracking.tracking_uri.startswith("sqlite:///")
    assert cfg.student.trust_remote_code is False


def test_precedence_defaults_yaml_env_cli(tmp_path, monkeypatch):
    path = _yaml(tmp_path, "generation:\n  max_new_tokens: 5\n  top_k: 7\n  seed: 3\n")
    cfg = load_config(path)
    assert (cfg.generation.max_new_tokens, cfg.generation.top_k, cfg.generation.seed) == (5, 7, 3)
    assert cfg.generation.top_p == 0.9  # untouched default survives the nested merge

    monkeypatch.setenv("MASTERS_GENERATION__TOP_K", "11")
    monkeypatch.setenv("MASTERS_GENERATION__SEED", "4")
    cfg = load_config(path)
    assert (cfg.generation.max_new_tokens, cfg.generation.top_k, cfg.generation.seed) == (5, 11, 4)

    cfg = load_config(path, ["generation.seed=9"])
    assert (cfg.generation.max_new_tokens, cfg.generation.top_k, cfg.generation.seed) == (5, 11, 9)


def test_cli_override_of_a_list_item(tmp_path):
    cfg = load_config(None, ["teachers.1.r_max=0.4", "teachers.1.step=0.1"])
    assert cfg.teachers[1].ratios() == [0.4, 0.3, 0.2, 0.1, 0.0]
    assert cfg.teachers[0].r_max == 0.2
    path = _yaml(tmp_path, "teachers:\n  - {name: big, path: /x, r_max: 0.1}\n")
    cfg = load_config(path, ["teachers.0.step=0.1"])
    assert [(t.name, t.ratios()) for t in cfg.teachers] == [("big", [0.1, 0.0])]


def test_override_values_are_typed():
    assert parse_overrides(["a.b=1", "a.c=true", "d=x", "e=[1, 2]"]) == {
        "a": {"b": 1, "c": True}, "d": "x", "e": [1, 2]}


def test_secrets_never_in_public_dict(monkeypatch):
    monkeypatch.setenv("MASTERS_STORAGE__SECRET_ACCESS_KEY", "hunter2-very-secret")
    cfg = load_config()
    assert cfg.storage.secret_access_key.get_secret_value() == "hunter2-very-secret"
    assert "hunter2" not in json.dumps(cfg.public_dict())
    assert "hunter2" not in repr(cfg)
    # a config passed between flows as public_dict gets its secret back from the env only
    assert from_public(cfg.public_dict()).storage.secret_access_key.get_secret_value() == (
        "hunter2-very-secret")


INVALID = [
    (["teachers.0.r_max=1.5"], "teachers.0.r_max"),
    (["teachers.0.r_max=-0.1"], "teachers.0.r_max"),
    (["teachers.1.r_max=0.25", "teachers.1.step=0.1"], "not a multiple of step 0.1"),
    (["generation.teacher_answers=0"], "generation.teacher_answers"),
    (["generation.top_p=1.5"], "generation.top_p"),
    (["generation.max_new_tokens=abc"], "generation.max_new_tokens"),
    (["generation.task_runner=ray"], "generation.task_runner"),
    (["generation.dask_workers=0"], "generation.dask_workers"),
    (["rewards.scorer=vibes"], "unknown scorer 'vibes'"),
    (["storage.cache_uri=s3://"], "malformed S3 URI"),
    (["storage.cache_uri=gs://bucket/x"], "unsupported cache URI"),
    (["storage.endpoint_url=localhost:9000"], "storage.endpoint_url"),
    (["tracking.tracking_uri=ftp://x"], "unsupported MLflow tracking URI"),
    (["generation.nonsense=1"], "generation.nonsense"),
    (["data.source=datasets"], "data.path is required"),
    (["teachers=[]"], "teachers"),
]


@pytest.mark.parametrize(("overrides", "expected"), INVALID)
def test_invalid_values_name_the_field(overrides, expected):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert expected in str(info.value)


def test_invalid_yaml_and_env(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_yaml(tmp_path, "a: [1,\n"))
    with pytest.raises(ConfigError, match="unknown_section"):
        load_config(_yaml(tmp_path, "unknown_section: 1\n"))
    with pytest.raises(ConfigError, match="duplicate|unique"):
        load_config(_yaml(tmp_path, "teachers:\n  - {name: a, path: x}\n  - {name: a, path: y}\n"))
    monkeypatch.setenv("MASTERS_GENERATION__TEMPERATURE", "-1")
    with pytest.raises(ConfigError, match="generation.temperature"):
        load_config()


def test_cli_exits_nonzero_with_the_message(capsys):
    assert cli.main(["config", "--set", "teachers.0.r_max=0.3", "--set",
                     "teachers.0.step=0.2"]) == 2
    err = capsys.readouterr().err
    assert "teachers.0" in err and "not a multiple of step 0.2" in err


def test_cli_prints_resolved_config(capsys, monkeypatch):
    monkeypatch.setenv("MASTERS_STORAGE__ACCESS_KEY_ID", "AKIAFAKEFAKE")
    assert cli.main(["config", "--set", "generation.top_k=3"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["generation"]["top_k"] == 3
    assert "AKIAFAKEFAKE" not in out


def test_model_defaults_is_a_settings_class():
    assert MastersConfig.model_config["env_prefix"] == "MASTERS_"


def test_evaluation_scores_with_the_accuracy_rewards_rule():
    """One definition of a correct answer: evaluation (and so the registry gate, which reads
    its test/accuracy) uses the accuracy reward's scorer unless told otherwise."""
    assert MastersConfig().eval_scorer() == {"scorer": "phrase_match", "scorer_kwargs": {}}
    cfg = load_config(overrides=["rewards.scorer=numeric",
                                 "rewards.scorer_kwargs={tolerance: 0.1}"])
    assert cfg.eval_scorer() == {"scorer": "numeric", "scorer_kwargs": {"tolerance": 0.1}}
    cfg = load_config(overrides=["rewards.scorer=judge"])  # a judge is for rewards only
    assert cfg.eval_scorer() == {"scorer": "phrase_match", "scorer_kwargs": {}}
    cfg = load_config(overrides=["rewards.scorer=numeric", "evaluation.scorer=exact_match"])
    assert cfg.eval_scorer() == {"scorer": "exact_match", "scorer_kwargs": {}}
    with pytest.raises(ConfigError, match="evaluation.scorer"):
        load_config(overrides=["evaluation.scorer=judge"])
