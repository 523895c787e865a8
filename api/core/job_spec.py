"""What a training job asks for: validated at the API, turned into a TrainConfig by the worker.

Every field has the meaning it has in a darknet cfg's ``[net]`` or in
``ae_model.train.TrainConfig``; ``None`` means "as the cfg says".
"""

import re
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

QUEUE_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class StrictModel(BaseModel):
    # Unknown fields are errors: a typo like "learning_rat" must not be silently ignored. Types
    # are strict: JSON `true` or "3" is no integer, and 3.0 no integer either (an integer is
    # still a number); subclasses' configs add to this one.
    model_config = ConfigDict(extra="forbid", strict=True)


class StrideSpec(StrictModel):
    stride: Annotated[int, Field(ge=1, le=1024, description="Output stride of the layer.")]


class AESpec(StrictModel):
    """Assisted Excitation settings (see docs/assisted_excitation.md)."""

    layers: int | list[int] | StrideSpec = Field(
        description='Darknet layer index, indices, or {"stride": S} for the documented rule.',
    )
    schedule: Literal["cosine", "quarter_cosine", "linear", "constant", "darknet"] = "cosine"
    iterations: Annotated[int | None, Field(ge=1, description="Schedule length T.")] = None
    alpha_max: Annotated[float, Field(ge=0, le=10, allow_inf_nan=False)] = 1.0
    mode: Literal["excite", "suppress_background", "multiplicative"] = "excite"
    detach: bool = True

    @field_validator("layers")
    @classmethod
    def _layers_non_negative(cls, value: int | list[int] | StrideSpec) -> object:
        indices = [value] if isinstance(value, int) else value
        if isinstance(indices, list):
            if not indices:
                raise ValueError("give at least one layer index")
            if any(i < 0 for i in indices):
                raise ValueError("layer indices are 0-based darknet indices and must be >= 0")
        return value


class TrainSpec(StrictModel):
    """Training overrides; omitted fields follow the cfg's [net]."""

    max_batches: Annotated[int | None, Field(ge=1, le=10_000_000)] = None
    epochs: Annotated[
        float | None,
        Field(gt=0, le=100_000, allow_inf_nan=False,
              description="Instead of max_batches: passes over the training images."),
    ] = None  # fmt: skip
    batch: Annotated[int | None, Field(ge=1, le=4096)] = None
    subdivisions: Annotated[int | None, Field(ge=1, le=4096)] = None
    learning_rate: Annotated[float | None, Field(gt=0, le=10, allow_inf_nan=False)] = None
    momentum: Annotated[float | None, Field(ge=0, lt=1)] = None
    decay: Annotated[float | None, Field(ge=0, le=1)] = None
    burn_in: Annotated[int | None, Field(ge=0)] = None
    policy: Literal["constant", "steps", "step", "poly", "exp", "sig", "sgdr"] | None = None
    steps: list[Annotated[int, Field(ge=0)]] | None = None
    scales: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] | None = None
    width: Annotated[int | None, Field(ge=32, le=4096, multiple_of=32)] = None
    height: Annotated[int | None, Field(ge=32, le=4096, multiple_of=32)] = None
    multiscale: bool | None = None
    augment: bool = True
    eval_interval: Annotated[int, Field(ge=0)] = 0
    checkpoint_interval: Annotated[int, Field(ge=1)] = 100
    val_limit: Annotated[int | None, Field(ge=1)] = None
    workers: Annotated[int, Field(ge=0, le=32)] = 2
    amp: bool = Field(
        default=True,
        description="Mixed precision where the device computes it fast: bfloat16 (else "
        "float16) on CUDA, bfloat16 on CPUs with native bf16 instructions, float32 elsewhere. "
        "resolved.amp_dtype says what the job used (null: float32).",
    )
    compile: bool = Field(
        default=False,
        description="Train through torch.compile. Meant for GPUs: on CPU it measured slower "
        "than eager (docs/benchmarks.md). The first step, and the first at each new input "
        "size, take longer while it compiles.",
    )
    world_size: Annotated[
        int,
        Field(ge=1, le=16,
              description="Processes training the job data-parallel (DDP) on its worker: one "
              "per GPU on a GPU worker; subdivisions must be a multiple of it."),
    ] = 1  # fmt: skip
    nan_rollbacks: Annotated[
        int,
        Field(ge=0, le=10,
              description="On a non-finite loss, go back to the last checkpoint with a lower "
              "learning rate, at most this many times; 0: the job fails at once."),
    ] = 0  # fmt: skip
    nan_lr_factor: Annotated[
        float,
        Field(gt=0, lt=1, allow_inf_nan=False,
              description="What each rollback multiplies the learning rate by."),
    ] = 0.1  # fmt: skip

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.max_batches is not None and self.epochs is not None:
            raise ValueError("give max_batches or epochs, not both")
        if self.batch and self.subdivisions and self.batch % self.subdivisions:
            raise ValueError(
                f"batch={self.batch} must be divisible by subdivisions={self.subdivisions}"
            )
        if (self.steps is None) != (self.scales is None) or (
            self.steps is not None
            and self.scales is not None
            and len(self.steps) != len(self.scales)
        ):
            raise ValueError("steps and scales go together, one scale per step")
        return self


class JobCreate(StrictModel):
    """A training job: a model (cfg), a dataset, a seed, training overrides and optional AE."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "yolov3-tiny-small",
                    "dataset_id": 1,
                    "seed": 0,
                    "train": {"max_batches": 500, "batch": 16, "width": 160, "height": 160},
                    "ae": {"layers": {"stride": 16}, "schedule": "cosine", "alpha_max": 1.0},
                }
            ]
        },
    )

    model: str | int = Field(
        description="A bundled cfg name (GET /v1/models) or the id of an uploaded cfg."
    )
    dataset_id: int = Field(ge=1, le=2**31 - 1)
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    train: TrainSpec = Field(default_factory=TrainSpec)
    ae: AESpec | None = None
    queue: Annotated[str, Field(pattern=QUEUE_PATTERN)] = "cpu"
    device: str = "auto"
    name: Annotated[str | None, Field(max_length=200)] = None

    @field_validator("model")
    @classmethod
    def _model_ref(cls, value: str | int) -> str | int:
        # GET /v1/models gives an upload's `ref` as a string of digits: the same model as the id.
        return (
            int(value) if isinstance(value, str) and value.isascii() and value.isdigit() else value
        )

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not DEVICE_PATTERN.match(value):
            raise ValueError("device must be auto, cpu, cuda or cuda:N")
        return value


class ArmSpec(StrictModel):
    """One arm of a comparison: overrides applied to the base job.

    ``ae`` given (even as null) replaces the base's AE settings; omitted, the base's are kept.
    ``train`` entries replace the base's training settings of the same name.
    """

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.+-]{1,64}$")]
    ae: AESpec | None = None
    train: dict[str, Any] = Field(default_factory=dict)


class ComparisonCreate(StrictModel):
    """Train every arm with every seed; the same seed gives every arm the same initial
    weights, data order and augmentation, so results pair by seed."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "AE at stride 16 vs baseline",
                    "base": {
                        "model": "yolov3-tiny-small",
                        "dataset_id": 1,
                        "train": {"max_batches": 500, "width": 160, "height": 160},
                    },
                    "arms": [
                        {"name": "baseline", "ae": None},
                        {"name": "ae16", "ae": {"layers": {"stride": 16}}},
                    ],
                    "seeds": [0, 1, 2],
                }
            ]
        },
    )

    name: Annotated[str | None, Field(max_length=200)] = None
    base: JobCreate
    arms: Annotated[list[ArmSpec], Field(min_length=2, max_length=8)]
    seeds: Annotated[
        list[Annotated[int, Field(ge=0, le=2**31 - 1)]], Field(min_length=1, max_length=20)
    ] = Field(default_factory=lambda: [0, 1, 2])
    reference: str | None = Field(
        default=None, description="Arm the others are compared to; default the first."
    )

    @model_validator(mode="after")
    def _names(self) -> Self:
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique, got {names}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be unique, got {self.seeds}")
        if self.reference is not None and self.reference not in names:
            raise ValueError(f"reference {self.reference!r} is not an arm; arms are {names}")
        return self

    @property
    def reference_arm(self) -> str:
        return self.reference or self.arms[0].name

    def job_specs(self) -> list[tuple[str, int, dict[str, Any]]]:
        """``(arm, seed, job spec)`` for every run, seed by seed so pairs finish together.

        The specs are plain dicts; validate each with ``JobCreate.model_validate``.
        """
        runs = []
        for seed in self.seeds:
            for arm in self.arms:
                spec = self.base.model_dump(mode="json")
                spec["seed"] = seed
                if "ae" in arm.model_fields_set:
                    spec["ae"] = arm.ae.model_dump(mode="json") if arm.ae else None
                spec["train"] = {**spec["train"], **arm.train}
                runs.append((arm.name, seed, spec))
        return runs
