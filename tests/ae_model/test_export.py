"""ONNX export: the file ONNX Runtime runs gives the boxes the PyTorch network gives in eval
mode, for a [yolo] and a [region] network, at batch 1 and 3 (the batch axis is dynamic)."""

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime  # type: ignore[import-untyped]
import pytest
import torch
from torch import nn

from ae_model.darknet import Darknet
from ae_model.export import (
    ONNX_OPSET,
    TrainedNetwork,
    export_onnx,
    inference_copy,
    same_network,
)

# Boxes are in input pixels (up to a few hundred) and probabilities in 0..1: float32 through
# two runtimes agrees to about 1e-5 of either.
RTOL, ATOL = 1e-3, 1e-4


def trained_looking(cfg: str, seed: int) -> Darknet:
    """``cfg``'s network with batch-norm statistics and affine parameters away from their
    initial 0 and 1, as training leaves them, so a mistake in folding them would show."""
    torch.manual_seed(seed)
    model = Darknet(cfg)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert bn.running_mean is not None and bn.running_var is not None
        nn.init.uniform_(bn.running_mean, -0.2, 0.2)
        nn.init.uniform_(bn.running_var, 0.5, 1.5)
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.uniform_(bn.bias, -0.2, 0.2)
    return model


@pytest.mark.parametrize("cfg", ["yolov3-tiny-small", "yolov2-tiny-small"])
def test_onnx_runtime_gives_the_boxes_of_the_eval_mode_network(cfg: str, tmp_path: Path) -> None:
    model = trained_looking(cfg, seed=3)
    model.train()  # the exporter puts its own copy in eval mode, as it finds the network
    width, height = 160, 96  # not square: width and height must not swap anywhere
    path = export_onnx(model, tmp_path / "net.onnx", width, height, classes=["a", "b"])
    assert model.training

    stored = onnx.load(path)
    onnx.checker.check_model(stored)
    (graph_input,) = stored.graph.input
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert (graph_input.name, dims) == ("images", ["batch", 3, height, width])
    assert [o.name for o in stored.graph.output] == ["boxes"]
    assert {o.version for o in stored.opset_import if o.domain == ""} == {ONNX_OPSET}
    meta = {p.key: p.value for p in stored.metadata_props}
    assert (meta["width"], meta["height"], meta["classes"]) == ("160", "96", '["a", "b"]')

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    reference = model.eval()
    for batch in (1, 3):
        images = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = reference(images).numpy()
        (boxes,) = session.run(None, {"images": images.numpy()})
        assert boxes.shape == expected.shape
        assert (batch, 5 + reference.heads[0].classes) == expected.shape[::2]
        np.testing.assert_allclose(boxes, expected, rtol=RTOL, atol=ATOL)


def test_the_exported_network_has_no_excitation_and_refuses_odd_sizes(tmp_path: Path) -> None:
    from ae_model.excitation import ExcitationContext, attach_excitation

    model = Darknet("yolov3-tiny-small")
    assert attach_excitation(model, {"stride": 16}, ExcitationContext(), T=10, width=96,
                             height=96, max_batches=10, burn_in=0)  # fmt: skip
    assert model.excitations and not inference_copy(model).excitations
    with pytest.raises(ValueError, match="multiples of 32"):
        export_onnx(model, tmp_path / "net.onnx", 100, 96)
    assert not list(tmp_path.iterdir())


def test_same_network_means_equal_weights_at_one_size() -> None:
    first = TrainedNetwork(Darknet("yolov2-tiny-small"), 96, 96, ["a"], 30, 120)
    twin = dataclasses.replace(first, model=inference_copy(first.model), iteration=20)
    assert same_network(first, twin)
    assert not same_network(first, dataclasses.replace(twin, width=128))
    with torch.no_grad():
        next(twin.model.parameters()).add_(1e-3)
    assert not same_network(first, twin)
