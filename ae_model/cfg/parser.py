"""Parsing a cfg: darknet's defaults and checks per section, into a :class:`DarknetConfig`."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ae_model.cfg.lexer import CfgError, RawSection, lex_cfg, shown
from ae_model.cfg.limits import key_limit
from ae_model.cfg.sections import (
    ACTIVATIONS,
    IOU_LOSSES,
    LR_POLICIES,
    SECTION_TYPES,
    AvgpoolSection,
    ConvolutionalSection,
    DropoutSection,
    MaxpoolSection,
    NetOptions,
    RegionSection,
    ReorgSection,
    RouteSection,
    Section,
    ShortcutSection,
    UpsampleSection,
    YoloSection,
)
from ae_model.cfg.table import LayerRow, layer_table

# Keys every layer section may carry: read by the Assisted Excitation code, not by the parser.
_ANY_LAYER_KEYS = frozenset({"assisted_excitation"})

# Keys darknet knows that do not change the network built here (switches of darknet's own
# trainer, memory and speed knobs); accepted without a warning, their raw values kept.
_IGNORED_KEYS = {
    "net": frozenset(
        [
            # Classifier crops, display, memory and speed knobs of darknet's own trainer.
            "min_crop",
            "max_crop",
            "max_chart_loss",
            "optimized_memory",
            "workspace_size_limit_MB",
            "use_cuda_graph",
            "loss_scale",
            "try_fix_nan",
            "seed",
            "inputs",
            "max_batches_burn_in",
            "num_sigmas",
            "show_receptive_field",
            # Read by darknet only with track=1, which is refused.
            "augment_speed",
            "sequential_subdivisions",
            "init_sequential_subdivisions",
        ]
    ),
    "yolo": frozenset(
        [
            # Detections kept per image and darknet's inference-time NMS and class map:
            # evaluation here runs its own NMS (docs/training.md, "Recipe vocabulary").
            "max",
            "beta_nms",
            "map",
            # AlexeyAB's random rescale range in its data loader: not implemented, and
            # accepted because the bundled yolov4-tiny cfgs carry it (docs/training.md).
            "resize",
        ]
    ),
    "region": frozenset(["absolute", "max", "log", "sqrt", "map", "nms_kind", "beta_nms"]),
}

# [net] keys of darknet features aetrain does not run, with the value that turns each off;
# any other value is refused when the cfg is read.
_NET_OFF = {
    "blur": "0",
    "gaussian_noise": "0",
    "mixup": "0",
    "cutmix": "0",
    "mosaic_bound": "0",
    "track": "0",
    "time_steps": "1",
    "dynamic_minibatch": "0",
    "resize_step": "32",
    "contrastive": "0",
    "unsupervised": "0",
    "adversarial_lr": "0",
    "weights_reject_freq": "0",
    "badlabels_rejection_percentage": "0",
}
# The same for [yolo] loss variants.
_YOLO_OFF = {
    "new_coords": "0",
    "focal_loss": "0",
    "objectness_smooth": "0",
    "delta_normalizer": "1",
    "iou_thresh_kind": "iou",
}
# darknet's NMS kinds aetrain's evaluation matches (greedy per class).
_GREEDY_NMS = frozenset({"default", "greedynms"})

# How a value is named in errors, alone and in a list.
_NOUNS = {int: ("an integer", "integers"), float: ("a number", "numbers")}


class SectionReader:
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

    def _value_error(self, key: str, value: str, message: str) -> CfgError:
        return self.error(f"{key}={shown(value)}: {message}", key)

    def _parse_item(self, key: str, value: str, item: str, kind: type[float], listed: bool) -> Any:
        """``item`` of ``key=value`` as ``kind`` (int or float), finite and within the key's
        bounds (``ae_model.cfg.limits``); ``listed`` when ``value`` is a comma-separated list."""
        one, many = _NOUNS[kind]
        try:
            number = kind(item)
        except ValueError:
            expected = f"{many}, separated by commas" if listed else one
            raise self._value_error(key, value, f"expected {expected}") from None
        limit = key_limit(self.kind, key)
        bounds = limit.describe(many if listed else one)
        subject = f"{shown(item)} is " if listed else ""
        # An int is always finite, and math.isfinite cannot take one past a float's range.
        if isinstance(number, float) and not math.isfinite(number):
            raise self._value_error(key, value, f"{subject}not a finite number; expected {bounds}")
        if not limit.low <= number <= limit.high:
            out_of_range = f"{subject}out of range; " if listed else ""
            raise self._value_error(key, value, f"{out_of_range}expected {bounds}")
        return number

    def integer(self, key: str, default: int) -> int:
        value = self.get(key)
        return default if value is None else int(self._parse_item(key, value, value, int, False))

    def number(self, key: str, default: float) -> float:
        value = self.get(key)
        return default if value is None else self._parse_item(key, value, value, float, False)

    def flag(self, key: str, default: bool = False) -> bool:
        return self.integer(key, int(default)) != 0

    def _items(self, key: str, kind: type[float]) -> tuple[Any, ...]:
        value = self.get(key)
        if value is None:
            return ()
        # darknet counts commas, so a trailing comma is harmless there too.
        listed = value.removesuffix(",")
        most = key_limit(self.kind, key).items
        # Counted before splitting: a list of a million items is refused without being built.
        if listed.count(",") >= most:
            raise self._value_error(key, value, f"expected at most {most} comma-separated items")
        items = listed.split(",")
        if any(not item for item in items):
            raise self._value_error(key, value, "empty item in a comma-separated list")
        return tuple(self._parse_item(key, value, item, kind, True) for item in items)

    def integers(self, key: str) -> tuple[int, ...]:
        return tuple(int(item) for item in self._items(key, int))

    def numbers(self, key: str) -> tuple[float, ...]:
        return self._items(key, float)

    def activation(self, default: str) -> str:
        name = self.text("activation", default)
        if name not in ACTIVATIONS:
            raise self.error(
                f"activation={name}: expected one of {', '.join(sorted(ACTIVATIONS))}",
                "activation",
            )
        return name

    def reject(self, key: str, default: str) -> None:
        """Refuse a darknet feature not built or trained here (any value but ``default``,
        its "off"), rather than silently building another net or training another way."""
        value = self.get(key)
        if value is not None and not _same_value(value, default):
            raise self.error(
                f"{key}={shown(value)} is not supported by aetrain (only {default}); "
                "remove the key",
                key,
            )

    def unknown_keys(self) -> list[str]:
        """A warning per key that no read asked for and darknet's own keys do not explain."""
        known = self.read | _ANY_LAYER_KEYS | _IGNORED_KEYS.get(self.kind, frozenset())
        unknown = sorted(self.raw.options.keys() - known, key=self.raw.option_lines.__getitem__)
        return [
            f"{self.where(key)}: unknown key '{shown(key)}' in [{self.kind}] ignored"
            for key in unknown
        ]

    def check_unread_numbers(self) -> None:
        """Refuse a number that is not finite in a key no read asked for (darknet's own keys,
        unknown ones, ``assisted_excitation``): whatever reads it later meets finite numbers."""
        unread = self.raw.options.keys() - self.read
        for key in sorted(unread, key=self.raw.option_lines.__getitem__):
            value = self.raw.options[key]
            for item in value.split(","):
                try:
                    number = float(item)
                except ValueError:
                    continue
                if not math.isfinite(number):
                    raise self._value_error(
                        key, value, f"{shown(item)} is not a finite number; use a finite one"
                    )

    def layer_index(self, key: str, value: int, index: int) -> int:
        """Resolve darknet's relative (negative) layer index; it must name an earlier layer."""
        target = index + value if value < 0 else value
        if not 0 <= target < index:
            raise self.error(
                f"{key}={shown(self.raw.options[key])}: {value} refers to layer {target}, but "
                f"this is layer {index}, so only layers 0..{index - 1} can be used",
                key,
            )
        return target


def _same_value(value: str, default: str) -> bool:
    """``value`` means ``default``: the same text, or the same number (``0.0`` and ``0``)."""
    try:
        return float(value) == float(default)
    except ValueError:
        return value.strip() == default


def _anchors(r: SectionReader, num: int) -> tuple[tuple[float, float], ...]:
    values = r.numbers("anchors")
    if len(values) != 2 * num:
        raise r.error(
            f"anchors= has {len(values)} numbers but num={num} needs {2 * num} "
            "(a width,height pair per anchor)",
            "anchors" if values else None,
        )
    return tuple(zip(values[::2], values[1::2], strict=True))


def _parse_convolutional(r: SectionReader) -> dict[str, Any]:
    size = r.integer("size", 1)
    stride = r.integer("stride", 1)
    pad = r.integer("pad", 0)
    padding = r.integer("padding", 0)
    groups = r.integer("groups", 1)
    filters = r.integer("filters", 1)
    if filters % groups:
        raise r.error(f"filters={filters} is not divisible by groups={groups}", "filters")
    for key in ("antialiasing", "binary", "xnor"):
        r.reject(key, "0")
    return {
        "filters": filters,
        "size": size,
        "stride_x": r.integer("stride_x", stride),
        "stride_y": r.integer("stride_y", stride),
        "padding": size // 2 if pad else padding,
        # darknet ignores dilation for 1x1 kernels.
        "dilation": 1 if size == 1 else r.integer("dilation", 1),
        "groups": groups,
        "batch_normalize": r.flag("batch_normalize"),
        "activation": r.activation("logistic"),
    }


def _parse_maxpool(r: SectionReader) -> dict[str, Any]:
    stride = r.integer("stride", 1)
    size = r.integer("size", stride)
    for key in ("maxpool_depth", "antialiasing"):
        r.reject(key, "0")
    return {
        "size": size,
        "stride_x": r.integer("stride_x", stride),
        "stride_y": r.integer("stride_y", stride),
        "padding": r.integer("padding", size - 1),
    }


def _parse_upsample(r: SectionReader) -> dict[str, Any]:
    return {"stride": r.integer("stride", 2), "scale": r.number("scale", 1.0)}


def _parse_route(r: SectionReader, index: int) -> dict[str, Any]:
    layers = r.integers("layers")
    if not layers:
        raise r.error("needs layers= (the layers to concatenate)")
    groups = r.integer("groups", 1)
    group_id = r.integer("group_id", 0)
    if group_id >= groups:
        raise r.error(
            f"group_id={group_id}: expected 0..{groups - 1} for groups={groups}", "group_id"
        )
    return {
        "layers": tuple(r.layer_index("layers", value, index) for value in layers),
        "groups": groups,
        "group_id": group_id,
    }


def _parse_shortcut(r: SectionReader, index: int) -> dict[str, Any]:
    sources = r.integers("from")
    if len(sources) != 1:
        raise r.error("needs from= with exactly one layer", "from" if sources else None)
    for key in ("weights_type", "weights_normalization"):
        r.reject(key, "none")
    return {
        "from_layer": r.layer_index("from", sources[0], index),
        "activation": r.activation("linear"),
    }


def _parse_reorg(r: SectionReader) -> dict[str, Any]:
    for key in ("reverse", "flatten", "extra"):
        r.reject(key, "0")
    return {"stride": r.integer("stride", 1)}


def _parse_dropout(r: SectionReader) -> dict[str, Any]:
    probability = r.number("probability", 0.5)
    if not 0.0 <= probability < 1.0:
        raise r.error(f"probability={probability}: expected 0 <= p < 1", "probability")
    r.reject("dropblock", "0")
    return {"probability": probability}


def _parse_yolo(r: SectionReader) -> dict[str, Any]:
    classes = r.integer("classes", 20)
    num = r.integer("num", 1)
    mask = r.integers("mask") or tuple(range(num))
    if any(not 0 <= m < num for m in mask):
        raise r.error(
            f"mask={shown(r.raw.options['mask'])}: expected anchor indices 0..{num - 1}", "mask"
        )
    iou_loss = r.text("iou_loss", "mse")
    if iou_loss not in IOU_LOSSES:
        raise r.error(
            f"iou_loss={iou_loss}: expected one of {', '.join(sorted(IOU_LOSSES))}", "iou_loss"
        )
    for key, off in _YOLO_OFF.items():
        r.reject(key, off)
    if r.get("counters_per_class") is not None:
        raise r.error(
            "counters_per_class= (darknet's class-balancing weights) is not supported by "
            "aetrain; remove the key",
            "counters_per_class",
        )
    nms_kind = r.text("nms_kind", "default")
    if nms_kind not in _GREEDY_NMS:
        raise r.error(
            f"nms_kind={shown(nms_kind)}: aetrain evaluates with greedy NMS only; use "
            "nms_kind=greedynms or remove the key",
            "nms_kind",
        )
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


def _parse_region(r: SectionReader) -> dict[str, Any]:
    num = r.integer("num", 1)
    coords = r.integer("coords", 4)
    if coords != 4:
        raise r.error(f"coords={coords} is not supported (only 4)", "coords")
    for key in ("tree", "background"):
        r.reject(key, "0")
    return {
        "classes": r.integer("classes", 20),
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


def _parse_net(r: SectionReader) -> NetOptions:
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
        batch=r.integer("batch", 1),
        subdivisions=r.integer("subdivisions", 1),
        width=r.integer("width", 0),
        height=r.integer("height", 0),
        channels=r.integer("channels", 0),
        momentum=r.number("momentum", 0.9),
        decay=r.number("decay", 0.0001),
        learning_rate=r.number("learning_rate", 0.001),
        burn_in=r.integer("burn_in", 0),
        power=r.number("power", 4.0),
        max_batches=r.integer("max_batches", 0),
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
        adam=r.flag("adam"),
        b1=r.number("B1", 0.9),
        b2=r.number("B2", 0.999),
        eps=r.number("eps", 0.000001),
        ema_alpha=r.number("ema_alpha", 0.0),
        learning_rate_min=r.number("learning_rate_min", 0.00001),
        sgdr_cycle=r.integer("sgdr_cycle", 0),
        sgdr_mult=r.integer("sgdr_mult", 2),
    )
    if min(net.width, net.height, net.channels) < 1:
        raise r.error("needs width=, height= and channels= (the network input size)")
    for key, off in _NET_OFF.items():
        r.reject(key, off)
    if r.number("label_smooth_eps", 0.0):
        # AlexeyAB's darknet reads [net] label_smooth_eps for classifier data and the
        # contrastive layer only; the [yolo] loss reads the head's own key.
        raise r.error(
            "label_smooth_eps in [net] smooths classifier labels in darknet, not a detector's; "
            "set label_smooth_eps in each [yolo] section instead",
            "label_smooth_eps",
        )
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
    """A parsed cfg: ``net`` options and one ``Section`` per darknet layer, in order.

    ``warnings`` are the lines accepted without effect (unknown and repeated keys), each
    naming the file and line; they belong to this parse alone.
    """

    source: str
    text: str
    net: NetOptions
    sections: tuple[Section, ...]
    warnings: tuple[str, ...]

    def layer_table(self, width: int | None = None, height: int | None = None) -> list[LayerRow]:
        """Darknet's layer table at an input of ``width x height`` (default: the cfg's size)."""
        return layer_table(self, width, height)


def parse_cfg(text: str, source: str = "<cfg>") -> DarknetConfig:
    """Parse cfg text; ``source`` names the file in errors and warnings.

    Raises ``CfgError`` on unknown sections, bad values, references to missing layers and
    shapes that do not fit (checked at the cfg's own width and height).
    """
    raw_sections, warnings = lex_cfg(text, source)
    if not raw_sections or SECTION_TYPES.get(raw_sections[0].name) != "net":
        line = raw_sections[0].line if raw_sections else 1
        raise CfgError(f"{source}:{line}: the first section must be [net] (or [network])")
    net_reader = SectionReader(raw_sections[0], "net", source)
    net = _parse_net(net_reader)
    net_reader.check_unread_numbers()
    warnings += net_reader.unknown_keys()
    sections: list[Section] = []
    for index, raw in enumerate(raw_sections[1:]):
        kind = SECTION_TYPES.get(raw.name)
        if kind is None or kind == "net":
            supported = ", ".join(f"[{name}]" for name in sorted(set(SECTION_TYPES.values())))
            what = "a second [net]" if kind else f"unknown section [{shown(raw.name)}]"
            raise CfgError(f"{source}:{raw.line}: {what}; expected one of {supported}")
        reader = SectionReader(raw, kind, source)
        reader.reject("stopbackward", "0")  # darknet freezes the layers before it
        if kind in _INDEXED_PARSERS:
            cls, parse_indexed = _INDEXED_PARSERS[kind]
            values = parse_indexed(reader, index)
        else:
            cls, parse = _LAYER_PARSERS[kind]
            values = parse(reader)
        reader.check_unread_numbers()
        warnings += reader.unknown_keys()
        common = {"type": kind, "options": dict(raw.options), "line": raw.line, "source": source}
        sections.append(cls(**common, index=index, **values))
    if not sections:
        raise CfgError(f"{source}: the cfg has a [net] section but no layers")
    config = DarknetConfig(
        source=source, text=text, net=net, sections=tuple(sections), warnings=tuple(warnings)
    )
    config.layer_table()  # shape errors surface here, naming their line
    return config


def load_cfg(path: str | os.PathLike[str]) -> DarknetConfig:
    """Read and parse a cfg file (UTF-8, a byte order mark is skipped)."""
    path = Path(path)
    return parse_cfg(path.read_text(encoding="utf-8-sig"), str(path))
