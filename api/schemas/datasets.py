"""Datasets: the generator's request, the validation report, and a dataset as clients see it."""

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.schemas.common import Name, UtcDatetime

# Rendering time grows with pixels: 5000 images of 256 px take about a minute on one core.
MAX_GENERATED_IMAGES = 5000
MAX_GENERATED_PIXELS = MAX_GENERATED_IMAGES * 256 * 256


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
    num_test: int = Field(
        default=0,
        description="Images in the test split; 0: none. A job may evaluate its best "
        'checkpoint (`"evaluate": {"checkpoint": "best"}`) only with one.',
    )
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
                    "test": 16,
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
    test: int = Field(
        default=0,
        ge=0,
        le=MAX_GENERATED_IMAGES,
        description="Test images, held out from training and from choosing a checkpoint; "
        "0: no test split.",
    )
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
        images = self.train + self.val + self.test
        if images > MAX_GENERATED_IMAGES:
            raise ValueError(
                f"train + val + test = {images}: at most {MAX_GENERATED_IMAGES} images"
            )
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
