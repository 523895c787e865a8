"""Every option of a training run and of Assisted Excitation, defined once (no torch).

:class:`TrainOptions` and :class:`AEConfig` are the one definition: :class:`TrainConfig`, the
Trainer's configuration, extends the first with where a run's cfg, data and output are; the
HTTP job spec (``api.core.job_spec``) is generated from
both, and the ``train`` command (``ae_model.cli``) is checked against them field by field
(``tests/ae_model/test_options.py``). Each field's metadata holds its help text and its bounds in
pydantic's words (``ge``, ``gt``, ``le``, ``lt``, ``multiple_of``), which :func:`check_bounds`
enforces here too, so a value the API refuses is refused by the library in the same words.
``None`` means "as the cfg's ``[net]`` says".
"""

import dataclasses
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class LRPolicy(StrEnum):
    """Darknet's learning-rate policies that aetrain runs (``ae_model.optim.LRSchedule``)."""

    CONSTANT = "constant"
    STEPS = "steps"
    STEP = "step"
    POLY = "poly"
    EXP = "exp"
    SIG = "sig"
    SGDR = "sgdr"
    COSINE = "cosine"
    """aetrain's, not darknet's: one cosine decay to learning_rate_min after the burn-in."""


class AnchorSource(StrEnum):
    """Where a run's anchors come from (docs/training.md, "Anchors")."""

    CFG = "cfg"
    """The cfg's ``anchors=`` as written."""
    FIT = "fit"
    """Fitted to the dataset's training boxes at the run's input size (darknet's
    ``calc_anchors``: k-means with distance 1 - IoU), written into every head of the cfg."""


class AESchedule(StrEnum):
    """How AE's alpha decays over the iterations (docs/assisted_excitation.md)."""

    COSINE = "cosine"
    QUARTER_COSINE = "quarter_cosine"
    LINEAR = "linear"
    CONSTANT = "constant"
    DARKNET = "darknet"


class AEMode(StrEnum):
    """What AE adds to a layer's activations (docs/assisted_excitation.md)."""

    EXCITE = "excite"
    SUPPRESS_BACKGROUND = "suppress_background"
    MULTIPLICATIVE = "multiplicative"


def option(default: Any, help: str, **bounds: float) -> Any:
    """A dataclass field with its help text and its bounds (pydantic's names) as metadata."""
    return field(default=default, metadata={"help": help, "bounds": bounds})


def list_option(help: str, **bounds: float) -> Any:
    """A list field, ``None`` by default; ``bounds`` apply to each item."""
    return field(default=None, metadata={"help": help, "bounds": {}, "item_bounds": bounds})


@dataclass
class AEConfig:
    """Where and how to apply Assisted Excitation (see docs/assisted_excitation.md)."""

    layers: int | list[int] | dict[str, int] = field(
        metadata={
            "help": 'Darknet layer index, indices, or {"stride": S} for the documented rule.',
            "bounds": {},
        }
    )
    schedule: AESchedule = option(AESchedule.COSINE, "How alpha decays to 0.")
    iterations: int | None = option(
        None, "Schedule length T; default the job's total iterations.", ge=1
    )
    alpha_max: float = option(1.0, "Alpha at the start of the schedule.", ge=0, le=10)
    mode: AEMode = option(AEMode.EXCITE, "What AE adds to the activations.")
    detach: bool = option(True, "Treat the excitation term as a constant in the backward pass.")

    def __post_init__(self) -> None:
        self.schedule = AESchedule(self.schedule)
        self.mode = AEMode(self.mode)
        check_bounds(self, "ae.")


@dataclass(kw_only=True)
class TrainOptions:
    """Training settings a job may set; omitted (``None``) ones follow the cfg's ``[net]``."""

    max_batches: int | None = option(
        None, "Iterations (optimizer steps); default the cfg's max_batches.",
        ge=1, le=10_000_000,
    )  # fmt: skip
    epochs: float | None = option(
        None, "Instead of max_batches: passes over the training images (rounded up to "
        "iterations). A run shorter than the cfg's max_batches scales the cfg's burn_in and "
        "steps to its length (docs/training.md).", gt=0, le=100_000,
    )  # fmt: skip
    batch: int | None = option(None, "Images per iteration.", ge=1, le=4096)
    subdivisions: int | None = option(
        None, "Micro-batches per iteration (gradients accumulate).", ge=1, le=4096
    )
    learning_rate: float | None = option(None, "Base learning rate.", gt=0, le=10)
    momentum: float | None = option(None, "SGD momentum.", ge=0, lt=1)
    decay: float | None = option(None, "Weight decay (not on biases and batch norm).", ge=0, le=1)
    burn_in: int | None = option(
        None, "Iterations of darknet's power-4 learning-rate ramp.", ge=0, le=10_000_000
    )
    policy: LRPolicy | None = option(None, "Learning-rate policy after the burn-in.")
    steps: list[int] | None = list_option(
        "Iterations at which policy=steps multiplies the rate by the matching scale.",
        ge=0, le=10_000_000,
    )  # fmt: skip
    scales: list[float] | None = list_option("One factor per step.", gt=0, le=1000)
    width: int | None = option(None, "Network input width.", ge=32, le=4096, multiple_of=32)
    height: int | None = option(None, "Network input height.", ge=32, le=4096, multiple_of=32)
    multiscale: bool | None = option(
        None, "Darknet's multi-scale training; default the cfg's random= on its heads."
    )
    augment: bool = option(True, "Apply the cfg's augmentation (jitter, hue, flip, mosaic...).")
    anchors: AnchorSource = option(
        AnchorSource.CFG, "cfg: the cfg's anchors; fit: anchors fitted to the dataset's "
        "training boxes at the input size when the job starts (darknet's calc_anchors).",
    )  # fmt: skip
    eval_interval: int = option(
        0, "Evaluate every N iterations (0: only at the end).", ge=0, le=10_000_000
    )
    checkpoint_interval: int = option(
        100, "Write last.pt every N iterations (0: only at the end).", ge=0, le=10_000_000
    )
    keep: int = option(
        0, "Also keep every N-th of those checkpoints as iter_<iteration>.pt (0: none; "
        "last.pt and best.pt are always kept, each overwritten by the next).", ge=0, le=1_000_000,
    )  # fmt: skip
    val_limit: int | None = option(
        None, "Evaluate on the first N validation images only.", ge=1, le=10_000_000
    )
    workers: int = option(
        2, "DataLoader worker processes (0: load in the training process). More help only "
        "where cores are spare (docs/benchmarks.md).", ge=0, le=32,
    )  # fmt: skip
    amp: bool = option(
        True,
        "Mixed precision where the device computes it fast: bfloat16 (else float16) on CUDA, "
        "bfloat16 on CPUs with native bf16 instructions, float32 elsewhere. resolved.amp_dtype "
        "says what the job used (null: float32).",
    )
    compile: bool = option(
        False,
        "Train through torch.compile. Meant for GPUs: on CPU it measured slower than eager "
        "(docs/benchmarks.md). The first step, and the first at each new input size, take "
        "longer while it compiles.",
    )
    world_size: int = option(
        1, "Processes training the job data-parallel (DDP) on its worker: one per GPU on a "
        "GPU worker; subdivisions must be a multiple of it.", ge=1, le=16,
    )  # fmt: skip
    nan_rollbacks: int = option(
        0, "On a non-finite loss, go back to the last checkpoint with a lower learning rate, "
        "at most this many times; 0: the run fails at once.", ge=0, le=10,
    )  # fmt: skip
    nan_lr_factor: float = option(
        0.1, "What each rollback multiplies the learning rate by.", gt=0, lt=1
    )

    def __post_init__(self) -> None:
        if self.policy is not None:
            self.policy = LRPolicy(self.policy)
        self.anchors = AnchorSource(self.anchors)
        check_bounds(self)
        problem = consistency_problem(self)
        if problem:
            raise ValueError(problem)


def consistency_problem(options: TrainOptions) -> str | None:
    """What is inconsistent between the fields of ``options``, in words, or None."""
    if options.max_batches is not None and options.epochs is not None:
        return "give max_batches or epochs, not both"
    if options.batch and options.subdivisions and options.batch % options.subdivisions:
        return f"batch={options.batch} must be divisible by subdivisions={options.subdivisions}"
    steps, scales = options.steps, options.scales
    if (steps is None) != (scales is None) or (
        steps is not None and scales is not None and len(steps) != len(scales)
    ):
        return "steps and scales go together, one scale per step"
    return None


_COMPARE: dict[str, tuple[Callable[[Any, Any], bool], str]] = {
    "ge": (operator.ge, ">="),
    "gt": (operator.gt, ">"),
    "le": (operator.le, "<="),
    "lt": (operator.lt, "<"),
}


def _bound_problem(name: str, value: Any, bounds: dict[str, float]) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value):
        return f"{name} must be a finite number, got {value}"
    for key, limit in bounds.items():
        if key == "multiple_of":
            if value % limit:
                return f"{name}={value} must be a multiple of {limit:g}"
        elif not _COMPARE[key][0](value, limit):
            return f"{name}={value} must be {_COMPARE[key][1]} {limit:g}"
    return None


def check_bounds(options: Any, prefix: str = "") -> None:
    """``ValueError`` naming the first field of a dataclass outside its metadata's bounds."""
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if value is None or "bounds" not in f.metadata:
            continue
        items = value if isinstance(value, list) else [value]
        bounds = f.metadata.get("item_bounds", f.metadata["bounds"])
        for item in items:
            problem = _bound_problem(prefix + f.name, item, bounds)
            if problem:
                raise ValueError(problem)


def option_help(cls: type, name: str) -> str:
    """The help text of field ``name`` of an options dataclass (for the CLI)."""
    help_text: str = {f.name: f for f in dataclasses.fields(cls)}[name].metadata["help"]
    return help_text


@dataclass(kw_only=True)
class TrainConfig(TrainOptions):
    """Everything a training run needs: the options a job may set (:class:`TrainOptions`,
    ``None`` meaning "as the cfg's [net] says") and where its cfg, data and output are.

    Saved, with ``resolved`` filled in, inside every checkpoint.
    """

    cfg: str
    """A cfg file's path or a bundled cfg's name (:func:`ae_model.cfg.resolve_cfg`); with
    ``cfg_text``, only the name the text is reported under."""
    data: str
    cfg_text: str | None = None
    """The cfg's text, when it comes from elsewhere than a file (an uploaded model)."""
    out: str = "runs/train"
    seed: int = 0
    ae: AEConfig | None = None
    device: str = "auto"
    channels_last: bool = True
    weights: str | None = None
    """Start weights (docs/training.md): a darknet ``.weights`` file made for ``cfg`` (full, or
    a ``.conv.N`` backbone) or an aetrain checkpoint (``.pt``), to fine-tune from; None: the
    seeded initialisation."""
    weights_cutoff: int | None = option(
        None, "Load only the first N layers of the start weights (darknet's partial).", ge=1
    )
    resolved: dict[str, Any] = field(default_factory=dict)
    """:class:`ae_model.resolve.ResolvedTraining` as a dict, plus what the Trainer adds."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weights_cutoff is not None and self.weights is None:
            raise ValueError("weights_cutoff applies to start weights: give weights too")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        data = dict(data)
        if data.get("ae") is not None:
            data["ae"] = AEConfig(**data["ae"])
        return cls(**data)
