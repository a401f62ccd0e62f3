"""Evaluation suites from YAML, the scored evaluation, and the figures logged to MLflow."""

from __future__ import annotations

import pytest
import yaml

from masters import embedded, evaluation, plots, suites, synthetic
from masters.config import DataConfig, MastersConfig


@pytest.fixture(scope="module")
def smoke_model(tmp_path_factory):
    model, processor = embedded.build("smoke", seed=3)
    return model, processor


def _write(path, suite: dict):
    path.write_text(yaml.safe_dump(suite))
    return path


def test_two_task_suite_evaluates_each_task_with_its_scorer(tmp_path, smoke_model):
    # A user's benchmark: a parquet with its own column names, counting questions only.
    ds = synthetic.build_split(5, "test", 40)
    ds = ds.rename_columns({"image": "img", "question": "prompt", "answer": "label",
                            "task_type": "kind"})
    ds.to_parquet(str(tmp_path / "test-00000.parquet"))
    path = _write(tmp_path / "mine.yaml", {"name": "mine", "tasks": [
        {"name": "scenes", "source": "synthetic", "split": "test", "size": 12, "limit": 6},
        {"name": "counting", "source": "datasets", "path": str(tmp_path), "split": "test",
         "columns": {"image": "img", "question": "prompt", "answer": "label",
                     "task_type": "kind"},
         "task_types": ["count"], "scorer": "numeric", "scorer_kwargs": {"tolerance": 0.0}},
    ]})
    suite = suites.load(path)
    model, processor = smoke_model
    result = suites.evaluate(model, processor, suite, batch_size=8, max_new_tokens=2)
    assert list(result.tasks) == ["scenes", "counting"]
    n_count = sum(t == "count" for t in ds["kind"])
    assert result.tasks["scenes"].n == 6 and result.tasks["counting"].n == n_count > 0
    assert set(result.tasks["counting"].per_task) == {"count"}
    assert result.n == 6 + n_count
    for r in result.tasks.values():
        assert 0.0 <= r.accuracy <= 1.0 and 0.0 <= r.abstain_rate <= 1.0
    metrics = result.as_metrics("test/")
    assert {"test/accuracy", "test/suite/counting/accuracy",
            "test/suite/scenes/abstain_rate", "test/accuracy/count"} <= set(metrics)


def test_abstentions_count_as_wrong_and_are_reported():
    r = evaluation.score_predictions(["yes", "no", "5"], ["yes", "yes", "maybe"],
                                     ["a", "a", "b"], "yes_no")
    assert r.accuracy == pytest.approx(1 / 3)
    assert r.abstain_rate == pytest.approx(1 / 3)
    assert r.per_task == {"a": 0.5, "b": 0.0}


def test_shipped_embedded_suite_is_the_default_test_split():
    suite = suites.load("embedded")
    (task,) = suite.tasks
    default = DataConfig()
    assert (task.source, task.split) == ("synthetic", "test")
    assert task.scorer == MastersConfig().eval_scorer()["scorer"]  # the default rule
    assert (task.seed, task.size) == (default.seed, default.test_size)


@pytest.mark.parametrize(("suite", "expected"), [
    ({"name": "x", "tasks": [{"name": "a", "scorer": "fuzzy"}]},
     r"tasks\.0\.scorer \(task 'a'\).*unknown scorer 'fuzzy'"),
    ({"name": "x", "tasks": []}, r"tasks: .*at least 1"),
    ({"name": "x", "tasks": [{"name": "a", "split": "test", "colums": {}}]},
     r"tasks\.0\.colums \(task 'a'\): Extra inputs"),
    ({"name": "x", "tasks": [{"name": "a", "source": "datasets"}]},
     r"path is required when source is 'datasets'"),
    ({"name": "x", "tasks": [{"name": "a"}, {"name": "a"}]}, r"repeated: \['a'\]"),
    ({"tasks": [{"name": "a", "limit": 0}]}, r"name: Field required.*limit"),
])
def test_invalid_suite_files_name_file_and_field(tmp_path, suite, expected):
    path = _write(tmp_path / "bad.yaml", suite)
    with pytest.raises(suites.SuiteError, match=expected) as info:
        suites.load(path)
    assert str(path) in str(info.value)


def test_unreadable_or_unknown_suite(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(suites.SuiteError, match="not valid YAML"):
        suites.load(bad)
    with pytest.raises(suites.SuiteError, match=r"no shipped suite.*embedded"):
        suites.load("no-such-suite")


def test_training_and_accuracy_figures_are_written(tmp_path):
    history = {"loss/grpo": [(1, 0.5), (2, 0.4), (3, 0.6), (4, 0.3)],
               "loss/kl": [(s, 0.01 * s) for s in range(1, 5)],
               "stage": [(1, 0), (2, 0), (3, 1), (4, 1)]}
    assert plots.stage_starts(history) == [(1, 0), (3, 1)]
    results = [{"label": "teacher:t", "accuracy": 0.8, "per_task": {"count": 0.7, "color": 0.9}},
               {"label": "distilled", "accuracy": 0.5, "per_task": {"count": 0.4}}]
    for name, fig in (("loss", plots.step_curves(history, ["loss/grpo", "loss/kl", "loss/jsd"],
                                                 "losses", "loss")),
                      ("acc", plots.accuracy_by_model(results))):
        fig.savefig(tmp_path / f"{name}.png")
        plots.close(fig)
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_evaluate_reports_a_broken_suite_before_loading_models(tmp_path, capsys):
    from flows import cli

    path = _write(tmp_path / "bad.yaml", {"name": "x", "tasks": [{"name": "a", "scorer": "?"}]})
    assert cli.main(["evaluate", "--suite", str(path)]) == 2
    assert "unknown scorer" in capsys.readouterr().err


def test_evaluate_flow_with_a_suite(prefect_api, tmp_path, smoke_overrides):
    from pathlib import Path

    from flows.evaluate import evaluate_flow
    from masters.config import load_config

    model, processor = embedded.build("smoke", seed=4)
    student = embedded.save(model, processor, tmp_path / "student")
    path = _write(tmp_path / "s.yaml", {"name": "s", "tasks": [
        {"name": "few", "size": 10, "limit": 5},
        {"name": "yn", "size": 30, "task_types": ["exists"], "scorer": "yes_no"}]})
    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "configs" / "smoke.yaml", [
        *smoke_overrides, f"student.path={student}", f"teachers=[{{name: t, path: {student}}}]",
        f"evaluation.suite={path}"])
    out = evaluate_flow(config=cfg.public_dict())
    first = out["results"][0]
    assert first["suite"] == "s" and list(first["suite_tasks"]) == ["few", "yn"]
    assert first["suite_tasks"]["few"]["n"] == 5
    assert "| model | few | yn |" in out["table"]
