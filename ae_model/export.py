"""A trained network as an ONNX file, and an aetrain checkpoint back as its network.

The ONNX graph is the network in eval mode: Assisted Excitation (training-only) is absent, and
the output is the decoded boxes ``Darknet.forward`` gives in eval mode. Input ``images``
``(batch, 3, height, width)``: RGB in 0..1, letterboxed on grey as evaluation does; output
``boxes`` ``(batch, N, 5 + classes)``: ``cx, cy, w, h`` in input pixels, objectness and class
probabilities, N the boxes of all heads. The batch axis is dynamic; the input size is fixed
at export (the grid offsets are constants of the graph).
"""

import json
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ae_model.cfg import parse_cfg
from ae_model.darknet import Darknet
from ae_model.weights import load_start_weights

# ONNX Runtime 1.14 and newer run opset 18.
ONNX_OPSET = 18
INPUT_NAME = "images"
OUTPUT_NAME = "boxes"
OUTPUT_LAYOUT = "cx, cy, w, h (input pixels), objectness, class probabilities"
DESCRIPTION = (
    "aetrain detector in eval mode. Input images (batch, 3, height, width): RGB in 0..1, "
    f"letterboxed on grey. Output boxes (batch, N, 5 + classes): {OUTPUT_LAYOUT}."
)


@dataclass(frozen=True)
class TrainedNetwork:
    """A checkpoint's network (its weights' moving average when the run kept one) with the
    input size it trained at, its class names and the iteration it was saved at."""

    model: Darknet
    width: int
    height: int
    classes: list[str]
    iteration: int
    images_seen: int


def load_trained_network(checkpoint: Path) -> TrainedNetwork:
    """The network an aetrain checkpoint (``last.pt``, ``best.pt``) holds, built from the
    resolved cfg saved in it, in eval mode on the CPU. ValueError for a file that is not one."""
    try:  # an aetrain checkpoint also holds its config and RNG states (plain Python objects)
        state: dict[str, Any] = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError) as error:
        raise ValueError(f"{checkpoint}: not a PyTorch checkpoint ({error})") from error
    resolved = state.get("config", {}).get("resolved", {}) if isinstance(state, dict) else {}
    if "cfg_text" not in resolved:
        raise ValueError(f"{checkpoint}: not an aetrain checkpoint (no resolved cfg in it)")
    model = Darknet(parse_cfg(resolved["cfg_text"], checkpoint.name))
    report = load_start_weights(model, checkpoint)
    if report.reshaped or report.missing:
        raise ValueError(f"{checkpoint}: its weights do not fit its own cfg ({report.describe()})")
    iteration = int(state["iteration"])
    return TrainedNetwork(
        model=model.eval(), width=resolved["width"], height=resolved["height"],
        classes=list(resolved.get("classes", [])), iteration=iteration,
        images_seen=iteration * int(resolved["batch"]),
    )  # fmt: skip


def same_network(a: TrainedNetwork, b: TrainedNetwork) -> bool:
    """Whether ``a`` and ``b`` export to the same file: one input size, one cfg, equal weights
    (``best.pt`` and ``last.pt`` written after a final evaluation that was the best)."""
    if (a.width, a.height, a.classes) != (b.width, b.height, b.classes):
        return False
    if a.model.config.text != b.model.config.text:
        return False
    wa, wb = a.model.state_dict(), b.model.state_dict()
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def inference_copy(model: Darknet) -> Darknet:
    """A CPU copy of ``model`` in eval mode without its excitation modules (AE acts only in
    training), whatever device, memory format or moving-average wrapper it trains in."""
    copy = Darknet(model.config)
    weights = {k: v for k, v in model.state_dict().items() if not k.startswith("excitations.")}
    copy.load_state_dict(weights)
    return copy.eval()


def export_onnx(
    model: Darknet,
    path: Path,
    width: int,
    height: int,
    opset: int = ONNX_OPSET,
    classes: list[str] | None = None,
) -> Path:
    """Write ``model`` in eval mode as an ONNX file at ``path`` (atomically: a reader never
    sees half a file) for ``width x height`` inputs with a dynamic batch axis; the file's
    metadata states the input size, the output layout, the opset and the class names."""
    if width % 32 or height % 32:
        raise ValueError(f"input size {width}x{height}: width and height must be multiples of 32")
    import onnx  # here: training (which imports this module) must not need onnx installed

    network = inference_copy(model)
    example = torch.zeros(1, 3, height, width)
    partial = path.with_name(path.name + ".tmp")
    # torch's TorchScript-based exporter: 0.2 s for yolov3-tiny-small where the dynamo exporter
    # takes 3-6 s (bench/bench_export.py), and the worker exports at the end of every job.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        # The input size is fixed at export: sizes traced as constants are what is meant.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            network, (example,), partial, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            opset_version=opset, dynamo=False,
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )  # fmt: skip
    graph = onnx.load_model(partial)
    graph.doc_string = DESCRIPTION
    for key, value in {
        "input": f"{INPUT_NAME} (batch, 3, {height}, {width}) RGB in 0..1",
        "output": f"{OUTPUT_NAME} (batch, N, 5 + classes): {OUTPUT_LAYOUT}",
        "width": str(width),
        "height": str(height),
        "opset": str(opset),
        "classes": json.dumps(classes or []),
    }.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save_model(graph, partial)
    partial.replace(path)
    return path


def export_checkpoint_onnx(
    checkpoint: Path,
    path: Path,
    size: tuple[int, int] | None = None,
    opset: int = ONNX_OPSET,
) -> TrainedNetwork:
    """Export the network of aetrain ``checkpoint`` to ``path`` at ``size`` (width, height;
    default the size it trained at); the network exported."""
    trained = load_trained_network(checkpoint)
    width, height = size or (trained.width, trained.height)
    export_onnx(trained.model, path, width, height, opset, trained.classes)
    return trained
