"""The sections of a parsed cfg: ``[net]`` options and one class per darknet layer type, each
with its shape inference and the BFLOPs darknet's layer table counts.

Shapes are ``(w, h, c)`` tuples, darknet's order, as in its layer table.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from ae_model.cfg.lexer import CfgError
from ae_model.options import LRPolicy

Shape = tuple[int, int, int]

# Activation names accepted in [convolutional] and [shortcut]; ae_model.layers maps each to a
# module. Darknet falls back to relu on an unknown name; here it is an error.
ACTIVATIONS = frozenset(
    [
        "linear",
        "leaky",
        "relu",
        "relu6",
        "logistic",
        "tanh",
        "mish",
        "swish",
        "hardswish",
        "hard-swish",
        "elu",
        "selu",
    ]
)

IOU_LOSSES = frozenset({"mse", "giou", "diou", "ciou"})
# The learning-rate policies aetrain trains (darknet's random is not one): a cfg asking for
# another is refused when it is read, naming the key.
LR_POLICIES = frozenset(policy.value for policy in LRPolicy)

# darknet's section names (and its aliases) -> the name used here.
SECTION_TYPES = {
    "net": "net",
    "network": "net",
    "convolutional": "convolutional",
    "conv": "convolutional",
    "maxpool": "maxpool",
    "max": "maxpool",
    "avgpool": "avgpool",
    "avg": "avgpool",
    "upsample": "upsample",
    "route": "route",
    "shortcut": "shortcut",
    "reorg": "reorg",
    "dropout": "dropout",
    "yolo": "yolo",
    "region": "region",
}


@dataclass(frozen=True, kw_only=True)
class NetOptions(Mapping[str, str]):
    """The ``[net]`` section. Its fields hold typed values, darknet's defaults filled in
    (``net.width``, ``net.steps``); as a mapping it is the raw options as written
    (``net["steps"] == "400000,450000"``, and ``"burn_in" in net`` only if the cfg sets it).
    """

    options: Mapping[str, str]
    line: int
    batch: int
    subdivisions: int
    width: int
    height: int
    channels: int
    momentum: float
    decay: float
    learning_rate: float
    burn_in: int
    power: float
    max_batches: int
    policy: str
    step: int
    scale: float
    gamma: float
    steps: tuple[int, ...]
    scales: tuple[float, ...]
    angle: float
    aspect: float
    saturation: float
    exposure: float
    hue: float
    flip: bool
    mosaic: bool
    letter_box: bool
    adam: bool
    b1: float
    b2: float
    eps: float
    ema_alpha: float
    learning_rate_min: float
    sgdr_cycle: int
    """0 when the cfg does not set it: darknet's default is the run's max_batches."""
    sgdr_mult: int

    def __getitem__(self, key: str) -> str:
        return self.options[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.options)

    def __len__(self) -> int:
        return len(self.options)


@dataclass(frozen=True, kw_only=True)
class Section:
    """One darknet layer as written: ``type`` (canonical name), raw ``options``, header ``line``.

    ``index`` is the darknet layer index (the ``[net]`` section does not count).
    """

    type: str
    options: Mapping[str, str]
    line: int
    source: str
    index: int

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"

    def error(self, message: str) -> CfgError:
        return CfgError(f"{self.where}: [{self.type}] (layer {self.index}) {message}")

    def input_shape(self, prev: Shape, outputs: Sequence[Shape]) -> Shape:
        """What this layer reads: by default the previous layer's output."""
        return prev

    def output_shape(self, prev: Shape, outputs: Sequence[Shape]) -> Shape:
        """Output ``(w, h, c)`` given the previous output and all earlier layers' outputs."""
        return prev

    def bflops(self, inp: Shape, out: Shape) -> float:
        """Billions of floating point operations darknet's layer table counts for this layer."""
        return 0.0


@dataclass(frozen=True, kw_only=True)
class ConvolutionalSection(Section):
    filters: int
    size: int
    stride_x: int
    stride_y: int
    padding: int  # darknet's l.pad; the convolution pads padding * dilation on every side
    dilation: int
    groups: int
    batch_normalize: bool
    activation: str

    def output_shape(self, prev: Shape, outputs: Sequence[Shape]) -> Shape:
        w, h, c = prev
        if c % self.groups:
            raise self.error(f"groups={self.groups} does not divide its {c} input channels")
        span = self.dilation * (self.size - 1) + 1
        pad = 2 * self.padding * self.dilation
        out = ((w + pad - span) // self.stride_x + 1, (h + pad - span) // self.stride_y + 1)
        if min(out) < 1:
            raise self.error(f"a {w}x{h} input is too small for size={self.size}")
        return (*out, self.filters)

    def bflops(self, inp: Shape, out: Shape) -> float:
        weights = inp[2] // self.groups * self.filters * self.size * self.size
        return 2.0 * weights * out[0] * out[1] / 1e9


@dataclass(frozen=True, kw_only=True)
class MaxpoolSection(Section):
    size: int
    stride_x: int
    stride_y: int
    padding: int  # total over both sides: darknet pads padding // 2 before, the rest after

    def output_shape(self, prev: Shape, outputs: Sequence[Shape]) -> Shape:
        w, h, c = prev
        out = (
            (w + self.padding - self.size) // self.stride_x + 1,
            (h + self.padding - self.size) // self.stride_y + 1,
        )
        if min(out) < 1:
            raise self.error(f"a {w}x{h} input is too small for size={self.size}")
        return (*out, c)

    def bflops(self, inp: Shape, out: Shape) -> float:
        # AlexeyAB's darknet counts size*size comparisons per output value.
        return self.size * self.size * inp[2] * out[0] * out[1] / 1e9


@dataclass(frozen=True, kw_only=True)
class AvgpoolSection(Section):
    """darknet's [avgpool] is global: every channel averaged to 1x1."""

    def output_shape(self, prev: Shape, outputs: Sequence[Shape]) -> Shape:
        return (1, 1, prev[2])


@dataclass(frozen=True, kw_only=True)
class UpsampleSection(Section):
    stride: int
    scale: float  # darknet multiplies the upsampled map by this

    def output_shape(self, prev: Shape, outputs: Sequence[Shape]) -> Shape:
        w, h, c = prev
        return (w * self.stride, h * self.stride, c)


@dataclass(frozen=True, kw_only=True)
class RouteSection(Section):
    layers: tuple[int, ...]  # absolute darknet indices
    groups: int
    group_id: int

    def input_shape(self, prev: Shape, outputs: Sequence[Shape]) -> Shape:
        shapes = [outputs[i] for i in self.layers]
        w, h, _ = shapes[0]
        for i, (wi, hi, _) in zip(self.layers, shapes, strict=True):
            if (wi, hi) != (w, h):
                raise self.error(
                    f"layers: layer {i} is {wi}x{hi} but layer {self.layers[0]} is {w}x{h}; "
                    "routed layers need the same width and height"
                )
            if outputs[i][2] % self.groups:
                raise self.error(
                    f"groups={self.groups} does not divide the {outputs[i][2]} "
                    f"channels of layer {i}"
                )
        return (w, h, sum(s[2] for s in shapes))

    def output_shape(self, prev: Shape, outputs: Sequence[Shape]) -> Shape:
        w, h, c = self.input_shape(prev, outputs)
        return (w, h, c // self.groups)


@dataclass(frozen=True, kw_only=True)
class ShortcutSection(Section):
    from_layer: int  # absolute index of the `from` layer
    activation: str

    def output_shape(self, prev: Shape, outputs: Sequence[Shape]) -> Shape:
        w, h, c = outputs[self.from_layer]
        if (w, h) != prev[:2]:
            raise self.error(
                f"from={self.options['from']}: layer {self.from_layer} is {w}x{h}x{c} but the "
                f"previous layer is {prev[0]}x{prev[1]}x{prev[2]}; a shortcut adds maps of "
                "the same width and height"
            )
        return prev

    def bflops(self, inp: Shape, out: Shape) -> float:
        # AlexeyAB's darknet counts one addition per output value.
        return out[0] * out[1] * out[2] / 1e9


@dataclass(frozen=True, kw_only=True)
class ReorgSection(Section):
    stride: int

    def output_shape(self, prev: Shape, outputs: Sequence[Shape]) -> Shape:
        w, h, c = prev
        s = self.stride
        if w % s or h % s or c % (s * s):
            raise self.error(
                f"stride={s} needs width and height divisible by {s} and channels by {s * s}; "
                f"the input is {w}x{h}x{c}"
            )
        return (w // s, h // s, c * s * s)


@dataclass(frozen=True, kw_only=True)
class DropoutSection(Section):
    probability: float


@dataclass(frozen=True, kw_only=True)
class YoloSection(Section):
    classes: int
    num: int
    mask: tuple[int, ...]
    anchors: tuple[tuple[float, float], ...]  # all `num` anchors, (w, h) in input pixels
    ignore_thresh: float
    truth_thresh: float
    iou_thresh: float
    scale_x_y: float
    iou_loss: str
    iou_normalizer: float
    cls_normalizer: float
    obj_normalizer: float
    max_delta: float
    label_smooth_eps: float
    random: float
    jitter: float

    def output_shape(self, prev: Shape, outputs: Sequence[Shape]) -> Shape:
        expected = len(self.mask) * (self.classes + 5)
        if prev[2] != expected:
            raise self.error(
                f"expects {len(self.mask)} masks * (classes={self.classes} + 5) = {expected} "
                f"input channels but gets {prev[2]}: set filters={expected} in the "
                "[convolutional] before it"
            )
        return prev


@dataclass(frozen=True, kw_only=True)
class RegionSection(Section):
    classes: int
    coords: int
    num: int
    anchors: tuple[tuple[float, float], ...]  # (w, h) in grid cells
    softmax: bool
    rescore: bool
    bias_match: bool
    object_scale: float
    noobject_scale: float
    class_scale: float
    coord_scale: float
    thresh: float
    random: float
    jitter: float

    def output_shape(self, prev: Shape, outputs: Sequence[Shape]) -> Shape:
        expected = self.num * (self.classes + self.coords + 1)
        if prev[2] != expected:
            raise self.error(
                f"expects num={self.num} * (classes={self.classes} + coords={self.coords} + 1) "
                f"= {expected} input channels but gets {prev[2]}: set filters={expected} in "
                "the [convolutional] before it"
            )
        return prev
