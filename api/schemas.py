"""Request and response schemas of the HTTP API, per resource: ``XCreate`` in, ``XPublic`` out.

Database rows (``api.core.db.models``) are never returned as they are: a public schema says what a
client may see (no server paths, no other tenant's data).
"""

from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, Self, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

T = TypeVar("T")


def _as_utc(value: datetime) -> datetime:
    # Times are stored in UTC; SQLite hands them back without a zone.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
# Row ids are 32-bit integers (PostgreSQL `integer`); larger ids in a path name nothing.
MAX_ROW_ID = 2**31 - 1
# Documented on every route that needs an API key.
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, unknown or revoked API key."}
}
# Documented on every route with a JSON body.
BAD_JSON: dict[int | str, dict[str, Any]] = {400: {"description": "The body is not valid JSON."}}
# A name a person gave: printable, one line.
NAME_PATTERN = r"^[^\x00-\x1f\x7f]+$"
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=NAME_PATTERN)]

# Rendering time grows with pixels: 5000 images of 256 px take about a minute on one core.
MAX_GENERATED_IMAGES = 5000
MAX_GENERATED_PIXELS = MAX_GENERATED_IMAGES * 256 * 256
# Generous for any darknet cfg (yolov4.cfg is about 12 KB).
MAX_CFG_CHARS = 512 * 1024


class Page(BaseModel, Generic[T]):
    """One page of a list: ``data`` in the list's order and ``count``, the total over all pages."""

    data: list[T]
    count: int = Field(ge=0, description="Number of items over all pages.")


# ---------------------------------------------------------------------------------------------
# Datasets


class DatasetProblem(BaseModel):
    """One problem in a dataset: the file (as in the zip), where in it, and what to fix."""

    file: str = Field(description="Path relative to the zip's top level.")
    line: int | None = Field(default=None, description="Line of a YOLO label or list file.")
    image_id: int | None = Field(default=None, description="COCO image id.")
    annotation_id: int | None = Field(default=None, description="COCO annotation id.")
    message: str


class SplitCounts(BaseModel):
    layout: Literal["coco", "yolo", "darknet_list"]
    images: int
    objects: int = Field(description="Boxes used for training (COCO crowd boxes excluded).")


class DatasetReport(BaseModel):
    """What validation found. Errors reject an upload; warnings are kept with the dataset."""

    errors: list[DatasetProblem] = Field(default_factory=list)
    warnings: list[DatasetProblem] = Field(default_factory=list)
    omitted_errors: int = Field(default=0, description="Errors beyond the first 100, unlisted.")
    omitted_warnings: int = Field(default=0, description="Warnings beyond the first 100.")
    counts: dict[str, SplitCounts] = Field(default_factory=dict, description="Per split.")
    generator: dict[str, Any] | None = Field(
        default=None, description="For generated datasets: the request that made it."
    )


class DatasetPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    status: str = Field(description="`ready`: validated and usable by jobs.")
    class_names: list[str] = Field(description="Class index i is class_names[i].")
    num_train: int = Field(description="Images in the train split.")
    num_val: int = Field(description="Images in the val split.")
    report: DatasetReport
    created_at: UtcDatetime


class DatasetRejected(BaseModel):
    """A refused upload; nothing was stored. ``report`` lists the dataset's errors; it is
    absent when the zip itself was refused (unsafe, too large, not a zip)."""

    detail: str | list[dict[str, Any]] = Field(
        description="What to fix; FastAPI's list of field errors when the request itself is "
        "malformed (no file part, say)."
    )
    report: DatasetReport | None = None


class DatasetGenerate(BaseModel):
    """A generated dataset (COCO layout, deterministic by seed; see docs/data.md)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {"kind": "digits", "train": 500, "val": 100, "size": 256, "seed": 0},
                {
                    "kind": "shapes",
                    "train": 64,
                    "val": 16,
                    "size": 160,
                    "seed": 7,
                    "name": "shapes-smoke",
                    "min_objects": 1,
                    "max_objects": 3,
                    "min_scale": 0.1,
                    "max_scale": 0.4,
                },
            ]
        },
    )

    kind: Literal["digits", "shapes"] = Field(
        description="`digits`: handwritten digits on textured backgrounds, 10 classes; "
        "`shapes`: geometric shapes, 6 classes."
    )
    train: int = Field(default=500, ge=1, le=MAX_GENERATED_IMAGES, description="Train images.")
    val: int = Field(default=100, ge=1, le=MAX_GENERATED_IMAGES, description="Val images.")
    size: int = Field(default=256, ge=64, le=1024, description="Image side in pixels.")
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    name: Name | None = None
    min_objects: int = Field(default=1, ge=0, le=50)
    max_objects: int = Field(default=6, ge=1, le=50)
    min_scale: float = Field(
        default=0.05, gt=0, le=1, description="Smallest object side as a fraction of `size`."
    )
    max_scale: float = Field(
        default=0.3, gt=0, le=1, description="Largest object side as a fraction of `size`."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        images = self.train + self.val
        if images > MAX_GENERATED_IMAGES:
            raise ValueError(f"train + val = {images}: at most {MAX_GENERATED_IMAGES} images")
        if images * self.size**2 > MAX_GENERATED_PIXELS:
            raise ValueError(
                f"{images} images of {self.size} px are too many pixels to render in a request "
                f"(at most {MAX_GENERATED_PIXELS // self.size**2} at this size); ask for fewer "
                "or smaller images"
            )
        if self.min_objects > self.max_objects:
            raise ValueError("min_objects must not exceed max_objects")
        if self.min_scale > self.max_scale:
            raise ValueError("min_scale must not exceed max_scale")
        if self.min_scale * self.size < 6:
            raise ValueError(
                f"min_scale {self.min_scale} gives objects under 6 px at size {self.size}; "
                "raise min_scale or size"
            )
        return self


# ---------------------------------------------------------------------------------------------
# Models (darknet cfgs)

_EXAMPLE_CFG = """[net]
batch=16
subdivisions=1
width=160
height=160
channels=3
learning_rate=0.001
max_batches=2000

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=leaky

[convolutional]
filters=45
size=1
stride=1
pad=1
activation=linear

[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58
classes=10
num=3
"""


class ModelCreate(BaseModel):
    """A darknet cfg to train later: ``POST /v1/jobs`` takes its id as ``model``."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"name": "tiny-digits", "cfg": _EXAMPLE_CFG}]},
    )

    name: Name = Field(description="Shown in lists and in the cfg's error messages.")
    cfg: str = Field(
        min_length=1,
        max_length=MAX_CFG_CHARS,
        pattern=r"^[^\x00]*$",
        description="The cfg file's text, as darknet reads it.",
    )


class ModelPublic(BaseModel):
    """A cfg, bundled or uploaded, with what its layer table says at the cfg's own size."""

    ref: str = Field(description="What to pass as `model` to POST /v1/jobs: name or id.")
    id: int | None = Field(description="Id of an uploaded cfg; null for bundled ones.")
    name: str
    source: Literal["bundled", "uploaded"]
    classes: int | None = Field(description="Classes of the detection head; null without one.")
    width: int = Field(description="Network input width ([net] width).")
    height: int = Field(description="Network input height ([net] height).")
    channels: int
    layers: int = Field(description="Darknet layers (the [net] section does not count).")
    bflops: float = Field(description="Total BFLOPs at width x height, as darknet prints it.")
    warnings: list[str] = Field(
        default_factory=list, description="Lines accepted but without effect (unknown keys)."
    )
    created_at: UtcDatetime | None = Field(
        default=None, description="Upload time; null if bundled."
    )


class LayerRowPublic(BaseModel):
    """One row of darknet's layer table; shapes are ``[width, height, channels]``."""

    index: int
    type: str
    filters: int = Field(description="0 where the layer has none.")
    size: int = Field(description="Kernel size; 0 where the layer has none.")
    stride: int
    input: list[int]
    output: list[int]
    bflops: float
    out_stride: float = Field(description="Network input width / output width (8, 16, 32...).")


class LayerTablePublic(BaseModel):
    ref: str
    name: str
    width: int
    height: int
    layers: list[LayerRowPublic]
    total_bflops: float
