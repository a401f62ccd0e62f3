"""Typed flow parameters (the Prefect UI form) and the deployments in deployments/prefect.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.utilities.callables import parameter_schema
from pydantic import ValidationError

from flows.distill import distill_flow
from flows.params import DistillParams, EvaluateParams, PromoteParams, preset_path
from flows.serve import deployment_specs, runner_deployments
from masters.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_typed_fields_override_the_preset():
    cfg = DistillParams(preset="configs/smoke.yaml", r_max=0.1, train_size=16, lr=2e-4,
                        cache_uri="s3://bucket/prefix", register_student=False, run_name="x",
                        overrides=["generation.max_new_tokens=3"]).to_config()
    assert [t.r_max for t in cfg.teachers] == [0.1, 0.1]
    assert [t.ratios() for t in cfg.teachers][0] == [0.1, 0.05, 0.0]
    assert (cfg.data.train_size, cfg.training.lr, cfg.storage.cache_uri) == (
        16, 2e-4, "s3://bucket/prefix")
    assert cfg.promotion.register is False and cfg.run_name == "x"
    assert cfg.generation.max_new_tokens == 3
    # Without typed fields the preset is untouched.
    assert DistillParams(preset="configs/smoke.yaml").to_config().run_name == "smoke"


def test_typed_string_values_stay_strings():
    cfg = DistillParams(preset="configs/smoke.yaml", run_name="123").to_config()
    assert cfg.run_name == "123"


@pytest.mark.parametrize("fields, field", [({"r_max": 1.5}, "r_max"), ({"r_max": -0.1}, "r_max"),
                                           ({"train_size": 0}, "train_size"), ({"lr": 0}, "lr"),
                                           ({"bogus": 1}, "bogus")])
def test_out_of_range_values_are_rejected_by_the_model(fields, field):
    with pytest.raises(ValidationError) as exc:
        DistillParams(**fields)
    assert field in str(exc.value)


def test_r_max_must_be_a_multiple_of_each_teachers_step():
    with pytest.raises(ConfigError, match="r_max: .*not a multiple of step"):
        DistillParams(preset="configs/smoke.yaml", r_max=0.13).to_config()


def test_bad_override_and_missing_preset_name_the_problem():
    with pytest.raises(ConfigError, match="data.train_size"):
        DistillParams(preset="configs/smoke.yaml", overrides=["data.train_size=-3"]).to_config()
    with pytest.raises(ConfigError, match="nope.yaml.*does not exist"):
        DistillParams(preset="configs/nope.yaml").to_config()


def test_relative_preset_found_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert preset_path("configs/smoke.yaml") == ROOT / "configs" / "smoke.yaml"


def test_promote_and_evaluate_params():
    assert PromoteParams(version=3).version == "3"
    with pytest.raises(ValidationError, match="version"):
        PromoteParams(version="three")
    cfg = EvaluateParams(preset="configs/smoke.yaml", suite="embedded").to_config()
    assert cfg.evaluation.suite == "embedded"


def test_flow_parameter_schema_carries_the_bounds():
    """What Prefect stores with the deployment and validates `prefect deployment run` against."""
    schema = parameter_schema(distill_flow.fn).model_dump()
    props = schema["definitions"]["DistillParams"]["properties"]
    number = next(a for a in props["r_max"]["anyOf"] if a.get("type") == "number")
    assert number == {"type": "number", "minimum": 0.0, "exclusiveMaximum": 1.0}
    assert schema["definitions"]["DistillParams"]["additionalProperties"] is False
    assert schema["properties"]["params"]["default"]["preset"] == "configs/embedded.yaml"


def test_prefect_yaml_declares_the_deployments():
    specs = deployment_specs()
    names = {(s["entrypoint"].split(":")[1], s["name"]) for s in specs}
    assert names == {("distill_flow", "nightly"), ("distill_flow", "on-demand"),
                     ("bootstrap_flow", "on-demand"), ("evaluate_flow", "on-demand"),
                     ("promote_flow", "on-demand")}
    assert all(s["enforce_parameter_schema"] and s["work_pool"]["name"] == "masters-process"
               for s in specs)
    for spec in specs:  # every preset a deployment names exists and resolves
        assert (ROOT / spec["parameters"]["params"]["preset"]).is_file()


def test_serve_builds_the_same_deployments_as_prefect_yaml():
    deps = {(d.flow_name, d.name): d for d in runner_deployments()}
    assert set(deps) == {("masters-distill", "nightly"), ("masters-distill", "on-demand"),
                         ("masters-bootstrap", "on-demand"), ("masters-evaluate", "on-demand"),
                         ("masters-promote", "on-demand")}
    nightly = deps[("masters-distill", "nightly")]
    [schedule] = nightly.schedules
    assert schedule.schedule.cron == "0 2 * * *" and schedule.active is False  # paused
    for key in (("masters-distill", "nightly"), ("masters-distill", "on-demand")):
        d = deps[key]
        assert d.concurrency_limit == 1
        assert d.concurrency_options.collision_strategy.value == "ENQUEUE"
        assert d.enforce_parameter_schema
    assert deps[("masters-evaluate", "on-demand")].parameters["params"]["model_version"] == (
        "champion")



def test_flow_runs_are_named_after_the_run(prefect_api):
    from prefect import flow
    from prefect.runtime import flow_run

    from flows.params import flow_run_namer

    @flow(flow_run_name=flow_run_namer("distill"))
    def named(params: DistillParams = DistillParams(), config: dict | None = None) -> str:
        return flow_run.name

    assert named() == "distill-embedded"  # the preset's file name
    assert named(DistillParams(run_name="nightly-a")) == "distill-nightly-a"
    assert named(config={"run_name": "smoke"}) == "distill-smoke"
