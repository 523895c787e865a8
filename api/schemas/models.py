"""Models (darknet cfgs): an upload, a cfg as clients see it, and its layer table."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas.common import Name, UtcDatetime

# Generous for any darknet cfg (yolov4.cfg is about 12 KB).
MAX_CFG_CHARS = 512 * 1024

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


class ModelWeightsPublic(BaseModel):
    """Darknet .weights uploaded for a cfg: jobs of the cfg start from them with
    ``"init": {"source": "model_weights"}``."""

    size: int = Field(description="Bytes of the file.")
    sha256: str
    cutoff: int | None = Field(
        description="The file holds the first `cutoff` layers (a .conv.N backbone); null: all."
    )
    layers: int = Field(description="[convolutional] layers the file holds.")
    version: str = Field(description="The header's major.minor.revision.")
    seen: int = Field(description="Images the weights were trained on, as the header says.")
    created_at: UtcDatetime


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
    weights: ModelWeightsPublic | None = Field(
        default=None, description="Start weights uploaded for the cfg; null: none."
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
