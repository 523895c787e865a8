"""What a training job asks for: validated at the API, turned into a TrainConfig by the worker.

``TrainSpec`` and ``AESpec`` are generated from ``ae_model.options`` (the one definition of
every training and AE option, its default, help text and bounds); ``None`` means "as the cfg
says".
"""

import dataclasses
import enum
import re
import types
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    Literal,
    Self,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    create_model,
    field_validator,
    model_validator,
)

from ae_model.options import AEConfig, TrainOptions, consistency_problem
from api.core.model_refs import model_ref

QUEUE_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _http_url(value: str) -> str:
    """``value`` when it is an http(s) URL with a host; ValueError saying what to fix."""
    parts = urlsplit(value)
    _ = parts.port  # ValueError for a port that is no number or out of range
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"webhook must be an http:// or https:// URL with a host, e.g. "
            f"https://example.com/hooks/aetrain; got {value!r}"
        )
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError("webhook must not contain spaces or control characters")
    return value


WebhookUrl = Annotated[
    str,
    Field(
        max_length=2000,
        description="URL called (POST, signed JSON) on each state change (docs/webhooks.md).",
    ),
    AfterValidator(_http_url),
]


class StrictModel(BaseModel):
    # Unknown fields are errors: a typo like "learning_rat" must not be silently ignored. Types
    # are strict: JSON `true` or "3" is no integer, and 3.0 no integer either (an integer is
    # still a number); subclasses' configs add to this one.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _literal(tp: Any) -> Any:
    """``tp`` with every enumeration replaced by a ``Literal`` of its values: strict models
    accept JSON strings for a Literal, and the OpenAPI schema lists the values."""
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return Literal[tuple(member.value for member in tp)]
    args = get_args(tp)
    if args and get_origin(tp) in (types.UnionType, Union):
        return Union[tuple(_literal(arg) for arg in args)]  # noqa: UP007 (built from a tuple)
    return tp


def _spec_fields(cls: type, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """pydantic field definitions of an ``ae_model.options`` dataclass: its types, defaults,
    help texts and bounds, and finite numbers only."""
    hints = get_type_hints(cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp = _literal(hints[f.name])
        item_bounds = f.metadata.get("item_bounds")
        if item_bounds is not None:
            (item,) = get_args(get_args(tp)[0])  # list[X] | None
            tp = list[Annotated[item, Field(**item_bounds)]] | None  # type: ignore[valid-type]
        info = Field(description=f.metadata["help"], **f.metadata["bounds"])
        fields[f.name] = (Annotated[tp, info], f.default)
    return fields


class StrideSpec(StrictModel):
    stride: Annotated[int, Field(ge=1, le=1024, description="Output stride of the layer.")]


class _AESpecBase(StrictModel):
    layers: int | list[int] | StrideSpec = Field(
        description='Darknet layer index, indices, or {"stride": S} for the documented rule.',
    )

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

    def config(self) -> AEConfig:
        """The ``ae_model`` form of these settings."""
        return AEConfig(**self.model_dump())


if TYPE_CHECKING:  # the fields are made at run time; type checkers see the base

    class AESpec(_AESpecBase):
        def __getattr__(self, name: str) -> Any: ...

else:
    AESpec = create_model(
        "AESpec",
        __base__=_AESpecBase,
        __doc__="Assisted Excitation settings (see docs/assisted_excitation.md).",
        **_spec_fields(AEConfig, skip=("layers",)),
    )


class _TrainSpecBase(StrictModel):
    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problem = consistency_problem(self)  # type: ignore[arg-type]  # same fields
        if problem:
            raise ValueError(problem)
        return self

    def options(self) -> TrainOptions:
        """The ``ae_model`` form of these settings."""
        return TrainOptions(**self.model_dump())


if TYPE_CHECKING:

    class TrainSpec(_TrainSpecBase):
        def __getattr__(self, name: str) -> Any: ...

else:
    TrainSpec = create_model(
        "TrainSpec",
        __base__=_TrainSpecBase,
        __doc__="Training overrides; omitted fields follow the cfg's [net] (ae_model.options).",
        **_spec_fields(TrainOptions),
    )


class ModelWeightsStart(StrictModel):
    """Start from the .weights uploaded for the job's model (``POST /v1/models/{id}/weights``),
    up to the cutoff given there."""

    source: Literal["model_weights"]


class CheckpointStart(StrictModel):
    """Fine-tune: start from a checkpoint of one of your finished jobs. Layers whose shapes
    differ (the heads and the convolutions feeding them, on a dataset with other classes) are
    re-initialised."""

    source: Literal["job"]
    job_id: int = Field(ge=1, le=2**31 - 1)
    checkpoint: Literal["last", "best"] = "last"


StartSpec = Annotated[ModelWeightsStart | CheckpointStart, Field(discriminator="source")]


class EvaluateSpec(StrictModel):
    """Which evaluation is the job's result, declared before it trains (docs/comparisons.md)."""

    checkpoint: Literal["last", "best"] = Field(
        default="last",
        description="last: the final checkpoint on val. best: the checkpoint with the best val "
        "AP, evaluated on the dataset's test split (its val AP was used to choose it, so it is "
        "biased upward); needs a dataset with a test split.",
    )


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
    init: StartSpec | None = Field(
        default=None,
        description="Start weights: the model's uploaded .weights, or a finished job's "
        "checkpoint; null: the seed's initialisation.",
    )
    queue: Annotated[str, Field(pattern=QUEUE_PATTERN)] = "cpu"
    device: str = "auto"
    name: Annotated[str | None, Field(max_length=200)] = None
    webhook: WebhookUrl | None = None
    evaluate: EvaluateSpec = Field(
        default_factory=EvaluateSpec,
        description="Which checkpoint's evaluation is the job's result (and what comparisons "
        "compare); default the last on val.",
    )

    @field_validator("model")
    @classmethod
    def _model_ref(cls, value: str | int) -> str | int:
        # Stored as resolved: GET /v1/models gives an upload's `ref` as a string of digits.
        return model_ref(value)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not DEVICE_PATTERN.match(value):
            raise ValueError("device must be auto, cpu, cuda or cuda:N")
        return value


class ArmSpec(StrictModel):
    """One arm of a comparison: overrides applied to the base job.

    ``ae`` given (even as null) replaces the base's AE settings; omitted, the base's are kept.
    ``train`` entries replace the base's training settings of the same name. ``evaluate``
    is the base's for every arm (arms compare one declared evaluation); an arm may only repeat it.
    """

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.+-]{1,64}$")]
    ae: AESpec | None = None
    train: dict[str, Any] = Field(default_factory=dict)
    evaluate: EvaluateSpec | None = Field(
        default=None, description="Omit, or repeat the base's: every arm is evaluated alike."
    )


SeedList = Annotated[
    list[Annotated[int, Field(ge=0, le=2**31 - 1)]], Field(min_length=1, max_length=20)
]
MAX_ROUND_SEEDS = 100
"""Most seeds a comparison with seeds until decided may try."""


class SeedsUntilDecided(StrictModel):
    """Seeds in rounds: ``min`` seeds first, then ``round`` more each time every job has ended
    and the sequential rule has not stopped the comparison, up to ``max`` seeds tried (failed
    jobs count). Seeds are ``start``, ``start + 1``, ... (docs/comparisons.md)."""

    min: int = Field(ge=2, le=MAX_ROUND_SEEDS, description="Seeds of the first round.")
    max: int = Field(
        ge=2, le=MAX_ROUND_SEEDS, description="Most seeds tried, failed jobs' seeds included."
    )
    until: Literal["decided"] = Field(
        default="decided",
        description="decided: stop once the anytime-valid interval of every arm's AP "
        "difference excludes 0 or is narrower than target_effect, or at max.",
    )
    round: int = Field(
        default=2, ge=1, le=MAX_ROUND_SEEDS, description="Seeds added by each later round."
    )
    start: int = Field(default=0, ge=0, le=2**31 - 1 - MAX_ROUND_SEEDS, description="First seed.")

    @model_validator(mode="after")
    def _min_within_max(self) -> Self:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max}) seeds")
        return self

    def next_round(self, tried: int) -> list[int]:
        """The seeds of the round after ``tried`` seeds (the first round after 0); none at max."""
        count = self.min if tried == 0 else min(self.round, self.max - tried)
        return list(range(self.start + tried, self.start + tried + max(count, 0)))


# Which form of ``seeds`` a comparison gives. Pydantic puts a tagged union's tag in an error's
# location (``seeds.<tag>.0``); the API's 422 leaves these out, so clients read ``seeds.0``.
SEED_LIST_TAG, SEEDS_UNTIL_TAG = "<seed list>", "<seeds until decided>"
UNION_TAGS = frozenset({SEED_LIST_TAG, SEEDS_UNTIL_TAG})


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
                },
                {
                    "name": "AE at stride 16 vs baseline, seeds until decided",
                    "base": {"model": "yolov3-tiny-small", "dataset_id": 1},
                    "arms": [
                        {"name": "baseline", "ae": None},
                        {"name": "ae16", "ae": {"layers": {"stride": 16}}},
                    ],
                    "seeds": {"min": 4, "max": 30, "until": "decided"},
                    "target_effect": 0.01,
                },
            ]
        },
    )

    name: Annotated[str | None, Field(max_length=200)] = None
    base: JobCreate
    arms: Annotated[list[ArmSpec], Field(min_length=2, max_length=8)]
    seeds: Annotated[
        Annotated[SeedList, Tag(SEED_LIST_TAG)]
        | Annotated[SeedsUntilDecided, Tag(SEEDS_UNTIL_TAG)],
        # Errors of the one form given only (a dict is no list: saying so is noise).
        Discriminator(
            lambda value: (
                SEEDS_UNTIL_TAG if isinstance(value, dict | SeedsUntilDecided) else SEED_LIST_TAG
            )
        ),
    ] = Field(
        default_factory=lambda: [0, 1, 2],
        description='The seeds, or {"min": 4, "max": 30, "until": "decided"} to add seeds in '
        "rounds until the AP difference is decided (docs/comparisons.md).",
    )
    target_effect: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="The AP difference that matters, as a fraction (0.01 = 1 AP point): the "
        "result says how many seed pairs would detect it, and seeds until decided stop once "
        "the interval is narrower than it.",
    )
    reference: str | None = Field(
        default=None, description="Arm the others are compared to; default the first."
    )
    webhook: WebhookUrl | None = None

    @model_validator(mode="after")
    def _names(self) -> Self:
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique, got {names}")
        if isinstance(self.seeds, list) and len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be unique, got {self.seeds}")
        if self.reference is not None and self.reference not in names:
            raise ValueError(f"reference {self.reference!r} is not an arm; arms are {names}")
        return self

    @property
    def reference_arm(self) -> str:
        return self.reference or self.arms[0].name

    @property
    def first_seeds(self) -> list[int]:
        """The seeds trained from the start: all of them, or the first round's."""
        return self.seeds.next_round(0) if isinstance(self.seeds, SeedsUntilDecided) else self.seeds

    def job_specs(self, seeds: list[int] | None = None) -> list[tuple[str, int, dict[str, Any]]]:
        """``(arm, seed, job spec)`` for every run of ``seeds`` (default ``first_seeds``), seed
        by seed so pairs finish together.

        The specs are plain dicts; validate each with ``JobCreate.model_validate``.
        """
        runs = []
        for seed in self.first_seeds if seeds is None else seeds:
            for arm in self.arms:
                spec = self.base.model_dump(mode="json")
                spec["seed"] = seed
                if "ae" in arm.model_fields_set:
                    spec["ae"] = arm.ae.model_dump(mode="json") if arm.ae else None
                spec["train"] = {**spec["train"], **arm.train}
                runs.append((arm.name, seed, spec))
        return runs
