"""Darknet ``.cfg`` files: darknet's lexing and defaults, shape inference and the layer table.

Torch-free on purpose: the API and the CLI read cfgs and print layer tables without importing
torch. ``ae_model.layers`` builds the PyTorch modules from the sections parsed here.

Shapes are ``(w, h, c)`` tuples, darknet's order, as in its layer table.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Shape = tuple[int, int, int]

BUNDLED_CFG_DIR = Path(__file__).parent / "cfg"

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

# darknet's resize_step: the network input is divided by up to 32 (five stride-2 stages),
# so every input side is a multiple of it.
SIZE_STEP = 32
# darknet's rand_coef when random=1.
MULTISCALE_DEFAULT_COEF = 1.4

IOU_LOSSES = frozenset({"mse", "giou", "diou", "ciou"})
LR_POLICIES = frozenset({"constant", "step", "exp", "poly", "steps", "sig", "random", "sgdr"})

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

# Keys every layer section may carry: read by the Assisted Excitation code, not by the parser.
_ANY_LAYER_KEYS = frozenset({"assisted_excitation"})

# Keys darknet knows that do not change the network built here (switches of darknet's own
# trainer, memory and speed knobs); accepted without a warning, their raw values kept.
_IGNORED_KEYS = {
    "net": frozenset(
        [
            "min_crop",
            "max_crop",
            "blur",
            "gaussian_noise",
            "mixup",
            "cutmix",
            "max_chart_loss",
            "optimized_memory",
            "workspace_size_limit_MB",
            "adam",
            "B1",
            "B2",
            "eps",
            "track",
            "time_steps",
            "augment_speed",
            "sequential_subdivisions",
            "init_sequential_subdivisions",
            "try_fix_nan",
            "loss_scale",
            "dynamic_minibatch",
            "learning_rate_min",
            "sgdr_cycle",
            "sgdr_mult",
            "seed",
            "resize_step",
            "label_smooth_eps",
            "inputs",
            "max_batches_burn_in",
            "num_sigmas",
            "show_receptive_field",
            "contrastive",
        ]
    ),
    "yolo": frozenset(
        [
            "max",
            "resize",
            "nms_kind",
            "beta_nms",
            "counters_per_class",
            "focal_loss",
            "objectness_smooth",
            "iou_thresh_kind",
            "delta_normalizer",
            "map",
        ]
    ),
    "region": frozenset(["absolute", "max", "log", "sqrt", "map", "nms_kind", "beta_nms"]),
}


class CfgError(ValueError):
    """A cfg that cannot be built; the message names the file, the line and what is expected."""


class CfgWarning(UserWarning):
    """A cfg line that is accepted but has no effect (an unknown or a repeated key)."""


@dataclass
class RawSection:
    """One ``[section]`` as lexed: its name as written, header line and ``key -> value``."""

    name: str
    line: int
    options: dict[str, str] = field(default_factory=dict)
    option_lines: dict[str, int] = field(default_factory=dict)


def lex_cfg(text: str, source: str = "<cfg>") -> list[RawSection]:
    """Split cfg text into sections the way darknet's ``read_cfg`` does.

    Every whitespace character is removed from a line (so ``hue = .1`` is ``hue=.1``); lines
    starting with ``#`` or ``;`` are comments; the first occurrence of a key in a section wins
    and later ones are warned about (darknet silently ignores them).
    """
    sections: list[RawSection] = []
    for number, raw_line in enumerate(text.split("\n"), start=1):
        line = "".join(raw_line.split())
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if line[-1] != "]":
                raise CfgError(f"{source}:{number}: section header {line!r} does not end in ']'")
            sections.append(RawSection(line[1:-1], number))
            continue
        key, equals, value = line.partition("=")
        if not equals or not key:
            raise CfgError(
                f"{source}:{number}: expected key=value, a [section] or a # comment, "
                f"got {raw_line.strip()!r}"
            )
        if not sections:
            raise CfgError(
                f"{source}:{number}: '{key}=' comes before the first section; "
                "a cfg starts with [net]"
            )
        current = sections[-1]
        if key in current.options:
            warnings.warn(
                f"{source}:{number}: repeated key '{key}' in [{current.name}] ignored; "
                f"darknet uses the first one, at line {current.option_lines[key]}",
                CfgWarning,
                stacklevel=2,
            )
            continue
        current.options[key] = value
        current.option_lines[key] = number
    return sections


class _Reader:
    """Typed reads of one section's options with darknet's defaults; remembers what was read."""

    def __init__(self, raw: RawSection, kind: str, source: str) -> None:
        self.raw = raw
        self.kind = kind
        self.source = source
        self.read: set[str] = set()

    def where(self, key: str | None = None) -> str:
        line = self.raw.option_lines.get(key, self.raw.line) if key else self.raw.line
        return f"{self.source}:{line}"

    def error(self, message: str, key: str | None = None) -> CfgError:
        return CfgError(f"{self.where(key)}: [{self.kind}] {message}")

    def get(self, key: str) -> str | None:
        self.read.add(key)
        return self.raw.options.get(key)

    def text(self, key: str, default: str) -> str:
        value = self.get(key)
        return default if value is None else value

    def integer(self, key: str, default: int, minimum: int | None = None) -> int:
        value = self.get(key)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise self.error(f"{key}={value}: expected an integer", key) from None
        if minimum is not None and number < minimum:
            raise self.error(f"{key}={value}: expected an integer >= {minimum}", key)
        return number

    def number(self, key: str, default: float) -> float:
        value = self.get(key)
        if value is None:
            return default
        try:
            return float(value)
        except ValueError:
            raise self.error(f"{key}={value}: expected a number", key) from None

    def flag(self, key: str, default: bool = False) -> bool:
        return self.integer(key, int(default)) != 0

    def _items(self, key: str) -> list[str]:
        value = self.get(key)
        if value is None:
            return []
        # darknet counts commas, so a trailing comma is harmless there too.
        items = value.removesuffix(",").split(",")
        if any(not item for item in items):
            raise self.error(f"{key}={value}: empty item in a comma-separated list", key)
        return items

    def integers(self, key: str) -> tuple[int, ...]:
        try:
            return tuple(int(item) for item in self._items(key))
        except ValueError:
            raise self.error(
                f"{key}={self.raw.options[key]}: expected integers, separated by commas", key
            ) from None

    def numbers(self, key: str) -> tuple[float, ...]:
        try:
            return tuple(float(item) for item in self._items(key))
        except ValueError:
            raise self.error(
                f"{key}={self.raw.options[key]}: expected numbers, separated by commas", key
            ) from None

    def activation(self, default: str) -> str:
        name = self.text("activation", default)
        if name not in ACTIVATIONS:
            raise self.error(
                f"activation={name}: expected one of {', '.join(sorted(ACTIVATIONS))}",
                "activation",
            )
        return name

    def reject(self, key: str, default: str) -> None:
        """Refuse a darknet feature not built here, rather than silently building another net."""
        value = self.get(key)
        if value is not None and value != default:
            raise self.error(f"{key}={value} is not supported by aetrain (only {default})", key)

    def warn_unknown(self) -> None:
        known = self.read | _ANY_LAYER_KEYS | _IGNORED_KEYS.get(self.kind, frozenset())
        for key in sorted(self.raw.options.keys() - known, key=self.raw.option_lines.__getitem__):
            warnings.warn(
                f"{self.where(key)}: unknown key '{key}' in [{self.kind}] ignored",
                CfgWarning,
                stacklevel=3,
            )

    def layer_index(self, key: str, value: int, index: int) -> int:
        """Resolve darknet's relative (negative) layer index; it must name an earlier layer."""
        target = index + value if value < 0 else value
        if not 0 <= target < index:
            raise self.error(
                f"{key}={self.raw.options[key]}: {value} refers to layer {target}, but this is "
                f"layer {index}, so only layers 0..{index - 1} can be used",
                key,
            )
        return target


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


def _anchors(r: _Reader, num: int) -> tuple[tuple[float, float], ...]:
    values = r.numbers("anchors")
    if len(values) != 2 * num:
        raise r.error(
            f"anchors= has {len(values)} numbers but num={num} needs {2 * num} "
            "(a width,height pair per anchor)",
            "anchors" if values else None,
        )
    return tuple(zip(values[::2], values[1::2], strict=True))


def _parse_convolutional(r: _Reader) -> dict[str, Any]:
    size = r.integer("size", 1, minimum=1)
    stride = r.integer("stride", 1, minimum=1)
    pad = r.integer("pad", 0)
    padding = r.integer("padding", 0, minimum=0)
    groups = r.integer("groups", 1, minimum=1)
    filters = r.integer("filters", 1, minimum=1)
    if filters % groups:
        raise r.error(f"filters={filters} is not divisible by groups={groups}", "filters")
    for key in ("antialiasing", "binary", "xnor"):
        r.reject(key, "0")
    return {
        "filters": filters,
        "size": size,
        "stride_x": r.integer("stride_x", stride, minimum=1),
        "stride_y": r.integer("stride_y", stride, minimum=1),
        "padding": size // 2 if pad else padding,
        # darknet ignores dilation for 1x1 kernels.
        "dilation": 1 if size == 1 else r.integer("dilation", 1, minimum=1),
        "groups": groups,
        "batch_normalize": r.flag("batch_normalize"),
        "activation": r.activation("logistic"),
    }


def _parse_maxpool(r: _Reader) -> dict[str, Any]:
    stride = r.integer("stride", 1, minimum=1)
    size = r.integer("size", stride, minimum=1)
    for key in ("maxpool_depth", "antialiasing"):
        r.reject(key, "0")
    return {
        "size": size,
        "stride_x": r.integer("stride_x", stride, minimum=1),
        "stride_y": r.integer("stride_y", stride, minimum=1),
        "padding": r.integer("padding", size - 1, minimum=0),
    }


def _parse_upsample(r: _Reader) -> dict[str, Any]:
    return {"stride": r.integer("stride", 2, minimum=1), "scale": r.number("scale", 1.0)}


def _parse_route(r: _Reader, index: int) -> dict[str, Any]:
    layers = r.integers("layers")
    if not layers:
        raise r.error("needs layers= (the layers to concatenate)")
    groups = r.integer("groups", 1, minimum=1)
    group_id = r.integer("group_id", 0, minimum=0)
    if group_id >= groups:
        raise r.error(
            f"group_id={group_id}: expected 0..{groups - 1} for groups={groups}", "group_id"
        )
    return {
        "layers": tuple(r.layer_index("layers", value, index) for value in layers),
        "groups": groups,
        "group_id": group_id,
    }


def _parse_shortcut(r: _Reader, index: int) -> dict[str, Any]:
    sources = r.integers("from")
    if len(sources) != 1:
        raise r.error("needs from= with exactly one layer", "from" if sources else None)
    for key in ("weights_type", "weights_normalization"):
        r.reject(key, "none")
    return {
        "from_layer": r.layer_index("from", sources[0], index),
        "activation": r.activation("linear"),
    }


def _parse_reorg(r: _Reader) -> dict[str, Any]:
    for key in ("reverse", "flatten", "extra"):
        r.reject(key, "0")
    return {"stride": r.integer("stride", 1, minimum=1)}


def _parse_dropout(r: _Reader) -> dict[str, Any]:
    probability = r.number("probability", 0.5)
    if not 0.0 <= probability < 1.0:
        raise r.error(f"probability={probability}: expected 0 <= p < 1", "probability")
    r.reject("dropblock", "0")
    return {"probability": probability}


def _parse_yolo(r: _Reader) -> dict[str, Any]:
    classes = r.integer("classes", 20, minimum=1)
    num = r.integer("num", 1, minimum=1)
    mask = r.integers("mask") or tuple(range(num))
    if any(not 0 <= m < num for m in mask):
        raise r.error(f"mask={r.raw.options['mask']}: expected anchor indices 0..{num - 1}", "mask")
    iou_loss = r.text("iou_loss", "mse")
    if iou_loss not in IOU_LOSSES:
        raise r.error(
            f"iou_loss={iou_loss}: expected one of {', '.join(sorted(IOU_LOSSES))}", "iou_loss"
        )
    r.reject("new_coords", "0")
    return {
        "classes": classes,
        "num": num,
        "mask": mask,
        "anchors": _anchors(r, num),
        "ignore_thresh": r.number("ignore_thresh", 0.5),
        "truth_thresh": r.number("truth_thresh", 1.0),
        "iou_thresh": r.number("iou_thresh", 1.0),
        "scale_x_y": r.number("scale_x_y", 1.0),
        "iou_loss": iou_loss,
        "iou_normalizer": r.number("iou_normalizer", 0.75),
        "cls_normalizer": r.number("cls_normalizer", 1.0),
        "obj_normalizer": r.number("obj_normalizer", 1.0),
        "max_delta": r.number("max_delta", float("inf")),
        "label_smooth_eps": r.number("label_smooth_eps", 0.0),
        "random": r.number("random", 0.0),
        "jitter": r.number("jitter", 0.2),
    }


def _parse_region(r: _Reader) -> dict[str, Any]:
    num = r.integer("num", 1, minimum=1)
    coords = r.integer("coords", 4)
    if coords != 4:
        raise r.error(f"coords={coords} is not supported (only 4)", "coords")
    for key in ("tree", "background"):
        r.reject(key, "0")
    return {
        "classes": r.integer("classes", 20, minimum=1),
        "coords": coords,
        "num": num,
        "anchors": _anchors(r, num),
        "softmax": r.flag("softmax"),
        "rescore": r.flag("rescore"),
        "bias_match": r.flag("bias_match"),
        "object_scale": r.number("object_scale", 1.0),
        "noobject_scale": r.number("noobject_scale", 1.0),
        "class_scale": r.number("class_scale", 1.0),
        "coord_scale": r.number("coord_scale", 1.0),
        "thresh": r.number("thresh", 0.5),
        "random": r.number("random", 0.0),
        "jitter": r.number("jitter", 0.2),
    }


def _parse_net(r: _Reader) -> NetOptions:
    policy = r.text("policy", "constant")
    if policy not in LR_POLICIES:
        raise r.error(
            f"policy={policy}: expected one of {', '.join(sorted(LR_POLICIES))}", "policy"
        )
    steps, scales = r.integers("steps"), r.numbers("scales")
    if policy == "steps" and (not steps or len(steps) != len(scales)):
        raise r.error(
            f"policy=steps needs steps= and as many scales= (got {len(steps)} steps, "
            f"{len(scales)} scales)",
            "steps",
        )
    net = NetOptions(
        options=dict(r.raw.options),
        line=r.raw.line,
        batch=r.integer("batch", 1, minimum=1),
        subdivisions=r.integer("subdivisions", 1, minimum=1),
        width=r.integer("width", 0),
        height=r.integer("height", 0),
        channels=r.integer("channels", 0),
        momentum=r.number("momentum", 0.9),
        decay=r.number("decay", 0.0001),
        learning_rate=r.number("learning_rate", 0.001),
        burn_in=r.integer("burn_in", 0, minimum=0),
        power=r.number("power", 4.0),
        max_batches=r.integer("max_batches", 0, minimum=0),
        policy=policy,
        step=r.integer("step", 1),
        scale=r.number("scale", 1.0),
        gamma=r.number("gamma", 1.0),
        steps=steps,
        scales=scales,
        angle=r.number("angle", 0.0),
        aspect=r.number("aspect", 1.0),
        saturation=r.number("saturation", 1.0),
        exposure=r.number("exposure", 1.0),
        hue=r.number("hue", 0.0),
        flip=r.flag("flip", True),
        mosaic=r.flag("mosaic"),
        letter_box=r.flag("letter_box"),
    )
    if min(net.width, net.height, net.channels) < 1:
        raise r.error("needs width=, height= and channels= (the network input size)")
    return net


_LAYER_PARSERS = {
    "convolutional": (ConvolutionalSection, _parse_convolutional),
    "maxpool": (MaxpoolSection, _parse_maxpool),
    "avgpool": (AvgpoolSection, lambda r: {}),
    "upsample": (UpsampleSection, _parse_upsample),
    "reorg": (ReorgSection, _parse_reorg),
    "dropout": (DropoutSection, _parse_dropout),
    "yolo": (YoloSection, _parse_yolo),
    "region": (RegionSection, _parse_region),
}
_INDEXED_PARSERS = {
    "route": (RouteSection, _parse_route),
    "shortcut": (ShortcutSection, _parse_shortcut),
}


@dataclass(frozen=True)
class DarknetConfig:
    """A parsed cfg: ``net`` options and one ``Section`` per darknet layer, in order."""

    source: str
    text: str
    net: NetOptions
    sections: tuple[Section, ...]

    def layer_table(self, width: int | None = None, height: int | None = None) -> list[LayerRow]:
        """Darknet's layer table at an input of ``width x height`` (default: the cfg's size)."""
        return layer_table(self, width, height)


def parse_cfg(text: str, source: str = "<cfg>") -> DarknetConfig:
    """Parse cfg text; ``source`` names the file in errors and warnings.

    Raises ``CfgError`` on unknown sections, bad values, references to missing layers and
    shapes that do not fit (checked at the cfg's own width and height).
    """
    raw_sections = lex_cfg(text, source)
    if not raw_sections or SECTION_TYPES.get(raw_sections[0].name) != "net":
        line = raw_sections[0].line if raw_sections else 1
        raise CfgError(f"{source}:{line}: the first section must be [net] (or [network])")
    net_reader = _Reader(raw_sections[0], "net", source)
    net = _parse_net(net_reader)
    net_reader.warn_unknown()
    sections: list[Section] = []
    for index, raw in enumerate(raw_sections[1:]):
        kind = SECTION_TYPES.get(raw.name)
        if kind is None or kind == "net":
            supported = ", ".join(f"[{name}]" for name in sorted(set(SECTION_TYPES.values())))
            what = "a second [net]" if kind else f"unknown section [{raw.name}]"
            raise CfgError(f"{source}:{raw.line}: {what}; expected one of {supported}")
        reader = _Reader(raw, kind, source)
        if kind in _INDEXED_PARSERS:
            cls, parse_indexed = _INDEXED_PARSERS[kind]
            values = parse_indexed(reader, index)
        else:
            cls, parse = _LAYER_PARSERS[kind]
            values = parse(reader)
        reader.warn_unknown()
        common = {"type": kind, "options": dict(raw.options), "line": raw.line, "source": source}
        sections.append(cls(**common, index=index, **values))
    if not sections:
        raise CfgError(f"{source}: the cfg has a [net] section but no layers")
    config = DarknetConfig(source=source, text=text, net=net, sections=tuple(sections))
    config.layer_table()  # shape errors surface here, naming their line
    return config


def load_cfg(path: str | os.PathLike[str]) -> DarknetConfig:
    """Read and parse a cfg file (UTF-8, a byte order mark is skipped)."""
    path = Path(path)
    return parse_cfg(path.read_text(encoding="utf-8-sig"), str(path))


def list_bundled_cfgs() -> list[str]:
    """Names of the cfgs shipped in ``ae_model/cfg`` (e.g. ``"yolov3-tiny"``), sorted."""
    return sorted(p.stem for p in BUNDLED_CFG_DIR.glob("*.cfg"))


def bundled_cfg_path(name: str) -> Path:
    """Path of a bundled cfg by name, with or without ``.cfg``; ``CfgError`` if there is none."""
    stem = name.removesuffix(".cfg")
    if stem not in list_bundled_cfgs():
        raise CfgError(f"no bundled cfg named {name!r}; bundled: {', '.join(list_bundled_cfgs())}")
    return BUNDLED_CFG_DIR / f"{stem}.cfg"


def resolve_cfg(cfg: str | os.PathLike[str] | DarknetConfig) -> DarknetConfig:
    """A ``DarknetConfig`` from a parsed config, cfg text (a string with a newline), a file path
    or the name of a bundled cfg (tried when no such file exists)."""
    if isinstance(cfg, DarknetConfig):
        return cfg
    if isinstance(cfg, str) and "\n" in cfg:
        return parse_cfg(cfg)
    path = Path(cfg)
    if path.is_file():
        return load_cfg(path)
    if isinstance(cfg, str) and cfg.removesuffix(".cfg") in list_bundled_cfgs():
        return load_cfg(bundled_cfg_path(cfg))
    raise CfgError(
        f"{os.fspath(cfg)!r} is neither a cfg file nor a bundled cfg "
        f"({', '.join(list_bundled_cfgs())})"
    )


@dataclass(frozen=True)
class LayerRow:
    """One row of darknet's layer table. ``input``/``output`` are ``(w, h, c)``.

    ``filters``, ``size`` and ``stride`` are 0 where the layer has none. ``out_stride`` is the
    network input width divided by the output width (32.0 for a YOLOv3 stride-32 head).
    """

    index: int
    type: str
    filters: int
    size: int
    stride: int
    input: Shape
    output: Shape
    bflops: float
    out_stride: float
    section: Section = field(repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """The row as JSON-ready data (the CLI's ``--json`` and the API)."""
        return {
            "index": self.index,
            "type": self.type,
            "filters": self.filters,
            "size": self.size,
            "stride": self.stride,
            "input": list(self.input),
            "output": list(self.output),
            "bflops": self.bflops,
        }


def _filters_size_stride(section: Section) -> tuple[int, int, int]:
    match section:
        case ConvolutionalSection():
            return section.filters, section.size, section.stride_x
        case MaxpoolSection():
            return 0, section.size, section.stride_x
        case UpsampleSection() | ReorgSection():
            return 0, 0, section.stride
    return 0, 0, 0


def layer_table(
    config: DarknetConfig, width: int | None = None, height: int | None = None
) -> list[LayerRow]:
    """Shapes and BFLOPs of every layer for a ``width x height`` input (default: the cfg's).

    Raises ``CfgError`` naming the line where shapes stop fitting together.
    """
    width = config.net.width if width is None else width
    height = config.net.height if height is None else height
    if width < 1 or height < 1:
        raise CfgError(f"input size {width}x{height}: expected positive width and height")
    prev: Shape = (width, height, config.net.channels)
    outputs: list[Shape] = []
    rows: list[LayerRow] = []
    for section in config.sections:
        inp = section.input_shape(prev, outputs)
        out = section.output_shape(prev, outputs)
        filters, size, stride = _filters_size_stride(section)
        rows.append(
            LayerRow(
                index=section.index,
                type=section.type,
                filters=filters,
                size=size,
                stride=stride,
                input=inp,
                output=out,
                bflops=section.bflops(inp, out),
                out_stride=width / out[0],
                section=section,
            )
        )
        outputs.append(out)
        prev = out
    return rows


def _dims(shape: Shape) -> str:
    return f"{shape[0]:4d} x{shape[1]:4d} x{shape[2]:4d}"


def _row_text(row: LayerRow) -> str:
    """A row in AlexeyAB's darknet format, without the leading index. Input dimensions start
    at column 29 here for every layer type, as in darknet."""
    s = row.section
    io = f"{_dims(row.input)} -> {_dims(row.output)}"
    match s:
        case ConvolutionalSection():
            filters = f"{s.filters:5d}/{s.groups:4d} " if s.groups > 1 else f"{s.filters:5d}      "
            if s.stride_x != s.stride_y:
                size = f"{s.size:2d}x{s.size:2d}/{s.stride_x:2d}x{s.stride_y:2d} "
            elif s.dilation > 1:
                size = f"{s.size:2d} x{s.size:2d}/{s.stride_x:2d}({s.dilation:1d})"
            else:
                size = f"{s.size:2d} x{s.size:2d}/{s.stride_x:2d}   "
            return f"conv  {filters}{size}{io} {row.bflops:5.3f} BF"
        case MaxpoolSection():
            if s.stride_x != s.stride_y:
                size = f"{s.size:2d}x{s.size:2d}/{s.stride_x:2d}x{s.stride_y:2d} "
                return f"max              {size}{io} {row.bflops:5.3f} BF"
            return (
                f"max               {s.size:2d}x{s.size:2d}/{s.stride_x:2d}   {io} "
                f"{row.bflops:5.3f} BF"
            )
        case UpsampleSection():
            return f"upsample                {s.stride:2d}x  {io}"
        case RouteSection():
            label = "route  " + " ".join(str(i) for i in s.layers)
            if s.groups > 1:
                label += f"  group {s.group_id}/{s.groups}"
            # Darknet prints only the output of a route; "->" stays in its column.
            return f"{label:45s} -> {_dims(row.output)}"
        case ShortcutSection():
            return (
                f"Shortcut Layer: {s.from_layer},  wt = 0, wn = 0, "
                f"outputs:{_dims(row.output)} {row.bflops:5.3f} BF"
            )
        case ReorgSection():
            return f"{f'reorg              /{s.stride:2d}':29s}{io}"
        case DropoutSection():
            return f"{f'dropout       p = {s.probability:.2f}':29s}{io}"
        case AvgpoolSection():
            return f"{'avg':29s}{io}"
        case YoloSection():
            return "yolo"
        case RegionSection():
            return "detection"
    raise AssertionError(f"no table format for [{s.type}]")


def format_layer_table(rows: Sequence[LayerRow]) -> str:
    """Darknet's (AlexeyAB's) layer table as printed when a network loads: a header, a row
    per layer (``   0 conv     16       3 x 3/ 1    416 x 416 x   3 ->  416 x 416 x  16 0.150
    BF``) and ``Total BFLOPS 5.571``. Route rows keep "->" in its column (darknet uses tabs).
    """
    lines = ["   layer   filters  size/strd(dil)      input                output"]
    lines += [f"{row.index:4d} {_row_text(row)}" for row in rows]
    lines.append(f"Total BFLOPS {sum(row.bflops for row in rows):5.3f}")
    return "\n".join(lines)


def _set_value(line: str, value: str) -> str:
    """``line`` (``key = old``) with its value replaced, spacing and line ending kept."""
    head, _, tail = line.partition("=")
    start = len(tail) - len(tail.lstrip())
    end = len(tail.rstrip())
    return f"{head}={tail[:start]}{value}{tail[end:]}"


def retarget_classes(cfg_text: str, num_classes: int) -> str:
    """Set ``classes=`` of every [yolo]/[region] and ``filters=`` of the [convolutional] just
    before each, as darknet users do by hand; every other byte is kept.

    ``filters`` becomes ``(classes + 5) * len(mask)`` for [yolo] and
    ``(classes + coords + 1) * num`` for [region]. A missing key is added under the header.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes}: expected at least 1")
    source = "<retarget_classes>"
    raw_sections = lex_cfg(cfg_text, source)
    lines = cfg_text.split("\n")
    edits: dict[int, str] = {}  # 1-based line -> new value of its key
    inserts: list[tuple[int, str]] = []  # (header line, "key=value") to add below the header

    def set_key(raw: RawSection, key: str, value: int) -> None:
        if key in raw.option_lines:
            edits[raw.option_lines[key]] = str(value)
        else:
            inserts.append((raw.line, f"{key}={value}"))

    for position, raw in enumerate(raw_sections):
        kind = SECTION_TYPES.get(raw.name)
        if kind not in ("yolo", "region"):
            continue
        previous = raw_sections[position - 1] if position > 1 else None
        if previous is None or SECTION_TYPES.get(previous.name) != "convolutional":
            raise CfgError(
                f"{source}:{raw.line}: [{kind}] does not follow a [convolutional]; "
                "set the filters= of its input layer by hand"
            )
        reader = _Reader(raw, kind, source)
        num = reader.integer("num", 1, minimum=1)
        if kind == "yolo":
            filters = (num_classes + 5) * len(reader.integers("mask") or range(num))
        else:
            filters = (num_classes + reader.integer("coords", 4) + 1) * num
        set_key(raw, "classes", num_classes)
        set_key(previous, "filters", filters)
    for number, value in edits.items():
        lines[number - 1] = _set_value(lines[number - 1], value)
    for header, text in sorted(inserts, reverse=True):
        ending = "\r" if lines[header - 1].endswith("\r") else ""
        lines.insert(header, text + ending)
    return "\n".join(lines)


def resolve_random(heads_random: float, multiscale: bool | None) -> float:
    """darknet's multi-scale ``random`` for a run: the heads' own value, or with the
    ``multiscale`` override on, that value (1 when the heads have none), off, 0."""
    if multiscale is None:
        return heads_random
    return (heads_random or 1.0) if multiscale else 0.0


def multiscale_coef(random: float) -> float:
    """darknet's ``rand_coef``, the largest multi-scale factor, for ``random`` >= 1."""
    return MULTISCALE_DEFAULT_COEF if random == 1 else random


def darknet_side(factor: float, side: int) -> int:
    """A multi-scale side: darknet's ``roundl(factor * side / 32 + 1) * 32``."""
    # roundl rounds halves away from zero; Python's round() would round them to even.
    return math.floor(factor * side / SIZE_STEP + 1 + 0.5) * SIZE_STEP


def largest_multiscale_size(base: tuple[int, int], random: float) -> tuple[int, int]:
    """The largest ``(width, height)`` darknet's multi-scale reaches from ``base``: with
    ``random`` 1 the factor 1.4, above 1 ``random`` itself; below 1 (off), ``base``."""
    if random < 1:
        return base
    coef = multiscale_coef(random)
    return darknet_side(coef, base[0]), darknet_side(coef, base[1])
