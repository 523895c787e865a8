"""One definition of the training and AE options: the HTTP spec and the CLI agree with it.

Every test walks every field of ``ae_model.options``, so an option added there and forgotten
in the job spec or the ``train`` command fails here.
"""

import dataclasses
import inspect
from typing import Any

import pytest
from pydantic import ValidationError

from ae_model import cli
from ae_model.cfg import CfgError, bundled_cfg_path, parse_cfg
from ae_model.excitation import MODES, SCHEDULES
from ae_model.options import AEConfig, AEMode, AESchedule, LRPolicy, TrainOptions, option_help
from api.core.job_spec import AESpec, TrainSpec

TRAIN_FIELDS = [f.name for f in dataclasses.fields(TrainOptions)]
AE_FIELDS = [f.name for f in dataclasses.fields(AEConfig)]
# CLI flags that stand for options under another shape: --size W[xH] sets width and height,
# --ae-layers and --ae-stride the AE placement.
CLI_SHAPES = {"width": "size", "height": "size", "ae_layers": "ae_stride"}


def _cli_parameters() -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(cli.train).parameters)


def _default(cls: type, name: str) -> Any:
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    return field.default


@pytest.mark.parametrize("name", TRAIN_FIELDS)
def test_every_train_option_is_in_the_job_spec_with_its_default_and_help(name: str) -> None:
    spec_field = TrainSpec.model_fields[name]
    assert spec_field.default == _default(TrainOptions, name)
    assert spec_field.description == option_help(TrainOptions, name)


@pytest.mark.parametrize("name", AE_FIELDS)
def test_every_ae_option_is_in_the_job_spec(name: str) -> None:
    spec_field = AESpec.model_fields[name]
    assert spec_field.description == option_help(AEConfig, name)
    if name != "layers":  # required in both
        assert spec_field.default == _default(AEConfig, name)


def test_the_job_spec_has_no_option_the_definition_lacks() -> None:
    assert set(TrainSpec.model_fields) == set(TRAIN_FIELDS)
    assert set(AESpec.model_fields) == set(AE_FIELDS)


@pytest.mark.parametrize("name", TRAIN_FIELDS + [f"ae_{name}" for name in AE_FIELDS])
def test_every_option_has_a_train_flag_with_its_default(name: str) -> None:
    parameters = _cli_parameters()
    flag = CLI_SHAPES.get(name, name)
    assert flag in parameters, f"`aetrain train` has no flag for {name}"
    if flag != name or name in ("steps", "scales"):  # given in another shape, or as text
        return
    cls, field = (AEConfig, name[3:]) if name.startswith("ae_") else (TrainOptions, name)
    assert parameters[flag].default == _default(cls, field)


def _bounded_fields(cls: type) -> list[tuple[str, str, float]]:
    cases = []
    for f in dataclasses.fields(cls):
        for key, limit in {
            **f.metadata.get("bounds", {}),
            **f.metadata.get("item_bounds", {}),
        }.items():
            cases.append((f.name, key, limit))
    return cases


def _outside(key: str, limit: float, kind: Any) -> Any:
    step = 1 if kind is int else 1e-9 * max(1.0, abs(limit))
    value = {"ge": limit - step, "gt": limit, "le": limit + step, "lt": limit,
             "multiple_of": limit + 1}[key]  # fmt: skip
    return int(value) if kind is int else value


@pytest.mark.parametrize(("name", "key", "limit"), _bounded_fields(TrainOptions))
def test_the_spec_and_the_library_refuse_the_same_out_of_bounds_value(
    name: str, key: str, limit: float
) -> None:
    field = {f.name: f for f in dataclasses.fields(TrainOptions)}[name]
    kind = int if "int" in str(field.type) else float
    value = _outside(key, limit, kind)
    given = [value] if "item_bounds" in field.metadata else value
    fields: dict[str, Any] = {name: given}
    if name in ("steps", "scales"):  # they go together
        fields["scales" if name == "steps" else "steps"] = [1]
    with pytest.raises(ValidationError, match=name):
        TrainSpec.model_validate(fields)
    with pytest.raises(ValueError, match=name):
        TrainOptions(**fields)


@pytest.mark.parametrize(("name", "key", "limit"), _bounded_fields(AEConfig))
def test_ae_bounds_hold_in_the_spec_and_the_library(name: str, key: str, limit: float) -> None:
    field = {f.name: f for f in dataclasses.fields(AEConfig)}[name]
    kind = int if "int" in str(field.type) else float
    value = _outside(key, limit, kind)
    with pytest.raises(ValidationError, match=name):
        AESpec.model_validate({"layers": 1, name: value})
    with pytest.raises(ValueError, match=name):
        AEConfig(layers=1, **{name: value})


def test_enumerations_are_the_definitions() -> None:
    assert tuple(AESchedule) == SCHEDULES and tuple(AEMode) == MODES
    for policy in LRPolicy:
        TrainSpec.model_validate({"policy": policy.value})
    text = bundled_cfg_path("yolov3-tiny").read_text()
    for policy in LRPolicy:
        assert parse_cfg(text.replace("policy=steps", f"policy={policy}")).net.policy == policy


def test_a_policy_aetrain_cannot_run_is_refused_when_the_cfg_is_read() -> None:
    # Darknet knows policy=random; aetrain does not train it, so the cfg is refused up front
    # (before, it passed upload and submission and failed in the worker).
    text = bundled_cfg_path("yolov3-tiny").read_text().replace("policy=steps", "policy=random")
    with pytest.raises(CfgError, match="policy=random"):
        parse_cfg(text)
    with pytest.raises(ValidationError, match="policy"):
        TrainSpec.model_validate({"policy": "random"})


def test_consistency_rules_are_shared() -> None:
    bad_sets: list[dict[str, Any]] = [
        {"max_batches": 5, "epochs": 1.0},
        {"batch": 6, "subdivisions": 4},
        {"steps": [1, 2], "scales": [0.1]},
    ]
    for bad in bad_sets:
        with pytest.raises(ValueError) as library:
            TrainOptions(**bad)
        with pytest.raises(ValidationError) as spec:
            TrainSpec.model_validate(bad)
        assert str(library.value) in str(spec.value)
