"""The worker's translation of a job spec into the trainer's configuration."""

from pathlib import Path

from api.core.job_spec import JobCreate
from api.core.model_refs import ModelCfg, bundled_model
from worker.job_config import train_config


def test_every_train_field_of_the_spec_reaches_the_trainer(tmp_path: Path) -> None:
    train = {
        "max_batches": 7, "batch": 8, "subdivisions": 4, "amp": False, "compile": True,
        "world_size": 2, "workers": 0, "nan_rollbacks": 1, "nan_lr_factor": 0.5,
    }  # fmt: skip
    spec = JobCreate.model_validate({"model": "yolov3-tiny", "dataset_id": 1, "train": train})
    config = train_config(spec, bundled_model("yolov3-tiny"), tmp_path / "data", tmp_path)
    assert {name: getattr(config, name) for name in train} == train
    # Omitted: compile off, amp on, and the service's 2 loader processes (docs/api.md).
    default = train_config(
        JobCreate.model_validate({"model": "yolov3-tiny", "dataset_id": 1}),
        bundled_model("yolov3-tiny"), tmp_path / "data", tmp_path,
    )  # fmt: skip
    assert default.compile is False and default.amp is True and default.workers == 2


def test_the_cfg_text_travels_in_cfg_text_under_its_name(tmp_path: Path) -> None:
    spec = JobCreate.model_validate({"model": 7, "dataset_id": 1})
    text = bundled_model("yolov3-tiny").text
    config = train_config(spec, ModelCfg(name="mine", text=text), tmp_path / "d", tmp_path)
    assert (config.cfg, config.cfg_text) == ("mine.cfg", text)


def test_the_start_weights_reach_the_trainer_with_their_cutoff(tmp_path: Path) -> None:
    spec = JobCreate.model_validate(
        {"model": 7, "dataset_id": 1, "init": {"source": "model_weights"}}
    )
    model = bundled_model("yolov3-tiny")
    start = (tmp_path / "models/7/start.weights", 29)
    config = train_config(spec, model, tmp_path / "d", tmp_path, start)
    assert (config.weights, config.weights_cutoff) == (str(start[0]), 29)
    assert train_config(spec, model, tmp_path / "d", tmp_path).weights is None
