"""api.budget's torch-free estimates against the network PyTorch actually builds, and the
budgets enforced at upload and submission."""

from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from ae_model.cfg import bundled_cfg_path, list_bundled_cfgs, load_cfg, parse_cfg
from ae_model.darknet import Darknet
from ae_model.data.loader import multiscale_size
from ae_model.options import TrainOptions
from ae_model.resolve import ResolvedTraining, resolve_training
from api.budget import (
    GIB,
    largest_training_size,
    parameter_count,
    saved_activations,
    training_step_memory,
)
from api.core.settings import Settings
from api.main import create_app
from tests.api.conftest import _key, ready_dataset


@pytest.mark.parametrize("name", list_bundled_cfgs())
def test_parameter_count_is_what_pytorch_builds(name: str) -> None:
    cfg = load_cfg(bundled_cfg_path(name))
    model = Darknet(cfg)
    assert parameter_count(cfg.layer_table()) == sum(p.numel() for p in model.parameters())


def _saved_for_backward(model: torch.nn.Module, images: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for the backward pass (weights not counted), and
    the outputs, each storage once."""
    storages = {p.untyped_storage().data_ptr(): 0 for p in model.parameters()}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages.setdefault(storage.data_ptr(), storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        outputs = model(images)
    for output in outputs if isinstance(outputs, list) else [outputs]:
        storages.setdefault(output.untyped_storage().data_ptr(), output.untyped_storage().nbytes())
    return sum(storages.values())


@pytest.mark.parametrize(
    ("name", "size"),
    [("yolov3-tiny-small", 96), ("yolov3-small", 128), ("yolov2-tiny-small", 96),
     ("yolov4-tiny-small", 128), ("yolov3-tiny", 160)],
)  # fmt: skip
def test_activation_estimate_is_within_fifteen_percent_of_what_autograd_keeps(
    name: str, size: int
) -> None:
    cfg = load_cfg(bundled_cfg_path(name))
    model = Darknet(cfg).train()
    estimate = 4 * 2 * saved_activations(cfg.layer_table(size, size))
    measured = _saved_for_backward(model, torch.randn(2, cfg.net.channels, size, size))
    assert 0.85 <= measured / estimate <= 1.15, (measured, estimate)


@pytest.mark.parametrize(("base", "random"), [((416, 416), 1.0), ((320, 192), 1.0),
                                              ((608, 608), 1.2), ((160, 96), 2.0)])  # fmt: skip
def test_largest_training_size_is_the_trainers_largest_multiscale_size(
    base: tuple[int, int], random: float
) -> None:
    text = bundled_cfg_path("yolov3-tiny").read_text()  # random=1 on its heads
    cfg = parse_cfg(text.replace("random=1", f"random={random:g}"))

    def resolved(multiscale: bool) -> ResolvedTraining:
        options = TrainOptions(width=base[0], height=base[1], multiscale=multiscale)
        return resolve_training(cfg, options, train_images=1)

    # The trainer's first block of iterations runs at the largest size.
    assert largest_training_size(resolved(True)) == multiscale_size(0, 0, base, random)
    assert largest_training_size(resolved(False)) == base


@pytest.mark.parametrize("name", list_bundled_cfgs())
def test_every_bundled_cfg_as_written_fits_the_default_budgets(name: str) -> None:
    cfg = load_cfg(bundled_cfg_path(name))
    settings = Settings()
    assert parameter_count(cfg.layer_table()) <= settings.max_params_m * 1e6
    memory = training_step_memory(resolve_training(cfg, TrainOptions(), train_images=1))
    assert memory.over_budget(settings.max_train_memory_gib) is None
    assert memory.total_bytes < 16 * GIB  # the bundled cfgs train on a 16 GiB GPU


def test_budgets_lowered_by_settings_refuse_uploads_and_jobs(settings: Settings) -> None:
    tight = settings.model_copy(update={"max_params_m": 5.0, "max_train_memory_gib": 0.5})
    with TestClient(create_app(tight)) as client:
        auth = _key(tight, "alice")
        dataset = ready_dataset(tight, "alice")
        yolov3_tiny = bundled_cfg_path("yolov3-tiny").read_text()
        upload = client.post("/v1/models", json={"name": "t", "cfg": yolov3_tiny}, headers=auth)
        assert upload.status_code == 422, upload.text
        assert upload.json()["detail"] == (
            "t.cfg: the network has 8.9 M parameters, over this server's budget of 5 M; use "
            "fewer or narrower layers (smaller filters= or size=)"
        )
        job: dict[str, Any] = {"model": "yolov3-tiny", "dataset_id": dataset}
        [error] = client.post("/v1/jobs", json=job, headers=auth).json()["detail"]
        assert error["loc"] == ["body", "model"] and "8.9 M parameters" in error["msg"]
        small = {**job, "model": "yolov3-tiny-small", "train": {"batch": 64, "width": 416,
                                                               "height": 416}}  # fmt: skip
        [error] = client.post("/v1/jobs", json=small, headers=auth).json()["detail"]
        assert error["loc"] == ["body", "train"]
        assert "over this server's budget of 0.5 GiB" in error["msg"]
        small["train"]["subdivisions"] = 16  # 4 images per micro-batch fit
        assert client.post("/v1/jobs", json=small, headers=auth).status_code == 201
