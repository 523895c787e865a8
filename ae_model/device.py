"""Where and in what precision a run computes: the device, mixed precision, torch.compile."""

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def select_device(name: str, rank: int = 0, world_size: int = 1) -> torch.device:
    """The device of rank ``rank``: ``name`` (``auto``: CUDA if there is one, else the CPU),
    one GPU per process when several train together."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and world_size > 1:
        return torch.device("cuda", rank)  # one GPU per process
    device = torch.device(name)
    if device.type == "cuda":
        _check_cuda_device(device)
    return device


def _check_cuda_device(device: torch.device) -> None:
    """ValueError naming the devices there are, when this machine has no ``device``: torch
    would say only that it found no driver, or that an ordinal is invalid."""
    count = torch.cuda.device_count()
    index = device.index or 0
    if index < count:
        return
    have = f"CUDA devices cuda:0..cuda:{count - 1}" if count else "no CUDA device"
    raise ValueError(
        f"device {str(device)!r} is not on this machine, which has {have}; use device "
        "'auto' or 'cpu', or submit to a queue whose workers have that GPU"
    )


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bfloat16 convolutions natively on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    except (AttributeError, RuntimeError):  # a build without oneDNN's bf16 check
        return False


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype mixed precision computes in on ``device``, or None for float32.

    CUDA: bfloat16 where the GPU has it, else float16 (with a gradient scaler). CPU: bfloat16
    where the CPU has native bf16 instructions, which nearly halves the time of a yolov3
    training step (docs/benchmarks.md); float32 elsewhere, where bfloat16 would be emulated
    and slower.
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


# Graphs one compiled network may hold: one per input size (darknet's multi-scale training
# draws from up to 10) and AE state (on, then off once alpha reaches 0), with room to spare.
COMPILED_GRAPHS = 64


def compile_network(network: nn.Module) -> Callable[[torch.Tensor], Any]:
    """``torch.compile`` for training ``network`` (a Darknet, or DDP around one).

    Shapes are static: each input size gets its own graph, compiled when first seen, because
    inductor's convolution backward specialises on the spatial size anyway and a dynamic graph
    then recompiles per size all the same. Dynamo's recompile limit (8 by default, after which
    it falls back to eager) is raised to :data:`COMPILED_GRAPHS` for that. Around DDP, its
    DDPOptimizer splits the graph at the gradient buckets.
    """
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), COMPILED_GRAPHS))
    return torch.compile(network, dynamic=False)
