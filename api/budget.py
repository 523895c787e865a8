"""What training a network asks of a worker, from its darknet layer table alone (no torch).

The API refuses a cfg or a job over this server's budgets before any worker sees it: compute
per image (``AETRAIN_MAX_BFLOPS``, checked in the routes), parameters (``AETRAIN_MAX_PARAMS_M``)
and the memory of one training step (``AETRAIN_MAX_TRAIN_MEMORY_GIB``).

The memory estimate counts float32 values: the activations the forward pass of one micro-batch
keeps for the backward pass, at the largest input size the job trains at, plus the weights,
their gradients and SGD's momentum. ``tests/api/test_budget.py`` checks it against what PyTorch
actually saves for the bundled cfgs.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ae_model.cfg import (
    ConvolutionalSection,
    LayerRow,
    MaxpoolSection,
    largest_multiscale_size,
)
from ae_model.resolve import ResolvedTraining

BYTES_PER_VALUE = 4  # float32
PARAMETER_COPIES = 3  # weights, gradients, momentum
GIB = 2**30


def parameter_count(rows: Sequence[LayerRow]) -> int:
    """Trainable parameters of the network ``rows`` describe: each [convolutional] layer's
    kernel (``in_channels / groups x filters x size x size``) and its bias, or with
    ``batch_normalize`` the batch norm's scale and shift. No other layer type has any."""
    total = 0
    for row in rows:
        conv = row.section
        if isinstance(conv, ConvolutionalSection):
            kernel = row.input[2] // conv.groups * conv.filters * conv.size * conv.size
            total += kernel + conv.filters * (2 if conv.batch_normalize else 1)
    return total


def _saved_per_output(row: LayerRow) -> int:
    """Values the backward pass keeps per output value of ``row``: a convolution's output, the
    batch norm's and the activation's outputs where present; a max pool's output and its
    argmax indices (int64, two float32s); one for the other layers."""
    section = row.section
    if isinstance(section, ConvolutionalSection):
        return 1 + section.batch_normalize + (section.activation != "linear")
    if isinstance(section, MaxpoolSection):
        return 3
    return 1


def saved_activations(rows: Sequence[LayerRow]) -> int:
    """Values per image the forward pass keeps for the backward pass (a float32 each)."""
    return sum(_saved_per_output(row) * math.prod(row.output) for row in rows)


def largest_training_size(resolved: ResolvedTraining) -> tuple[int, int]:
    """The largest ``(width, height)`` a run trains at: its size, or with multi-scale darknet's
    largest multi-scale size."""
    return largest_multiscale_size((resolved.width, resolved.height), resolved.random)


@dataclass(frozen=True)
class StepMemory:
    """Estimated memory of one training step (see the module's docstring)."""

    micro_batch: int
    batch: int
    subdivisions: int
    width: int
    height: int
    multiscale: bool
    activation_bytes: int
    parameter_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.activation_bytes + self.parameter_bytes

    def over_budget(self, budget_gib: float) -> str | None:
        """What to change when the step needs more than ``budget_gib``; None if it fits."""
        if self.total_bytes <= budget_gib * GIB:
            return None
        size = f"{self.width}x{self.height}" + (" (the largest multi-scale size)" * self.multiscale)
        return (
            f"a training step needs about {self.total_bytes / GIB:.1f} GiB: "
            f"{self.activation_bytes / GIB:.1f} GiB of activations for a micro-batch of "
            f"{self.micro_batch} images (batch={self.batch} / subdivisions={self.subdivisions}) "
            f"at {size}, and {self.parameter_bytes / GIB:.1f} GiB of weights, gradients and "
            f"momentum; that is over this server's budget of {budget_gib:g} GiB: raise "
            "subdivisions, lower batch or width/height, or set multiscale to false"
        )


def training_step_memory(resolved: ResolvedTraining) -> StepMemory:
    """The memory estimate of a training step of a resolved run (its network as trained: heads
    retargeted to the dataset's classes).

    Raises ``CfgError`` when the layers do not fit together at the largest training size.
    """
    width, height = largest_training_size(resolved)
    same_size = (width, height) == (resolved.width, resolved.height)
    rows = resolved.layers if same_size else resolved.cfg.layer_table(width, height)
    return StepMemory(
        micro_batch=resolved.micro_batch,
        batch=resolved.batch,
        subdivisions=resolved.subdivisions,
        width=width,
        height=height,
        multiscale=not same_size,
        activation_bytes=BYTES_PER_VALUE * resolved.micro_batch * saved_activations(rows),
        parameter_bytes=BYTES_PER_VALUE * PARAMETER_COPIES * parameter_count(rows),
    )


def parameters_over_budget(rows: Sequence[LayerRow], budget_millions: float) -> str | None:
    """What to change when the network has more than ``budget_millions`` parameters."""
    count = parameter_count(rows)
    if count <= budget_millions * 1e6:
        return None
    return (
        f"the network has {count / 1e6:.1f} M parameters, over this server's budget of "
        f"{budget_millions:g} M; use fewer or narrower layers (smaller filters= or size=)"
    )
