"""Darknet's layer table: every layer's input and output shapes and BFLOPs, and its text format."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ae_model.cfg.lexer import CfgError
from ae_model.cfg.limits import MAX_CHANNELS, MAX_LAYER_VALUES, MAX_SIDE
from ae_model.cfg.sections import (
    AvgpoolSection,
    ConvolutionalSection,
    DropoutSection,
    MaxpoolSection,
    RegionSection,
    ReorgSection,
    RouteSection,
    Section,
    Shape,
    ShortcutSection,
    UpsampleSection,
    YoloSection,
)

if TYPE_CHECKING:
    from ae_model.cfg.parser import DarknetConfig


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


def _too_large(shape: Shape) -> str | None:
    """What is over the bounds in a ``(w, h, c)`` shape (``ae_model.cfg.limits``); None if
    nothing is."""
    w, h, c = shape
    if max(w, h) > MAX_SIDE or c > MAX_CHANNELS or w * h * c > MAX_LAYER_VALUES:
        return (
            f"{w}x{h}x{c} is too large: at most {MAX_SIDE} wide and high, {MAX_CHANNELS} "
            f"channels and {MAX_LAYER_VALUES} values per image"
        )
    return None


def layer_table(
    config: DarknetConfig, width: int | None = None, height: int | None = None
) -> list[LayerRow]:
    """Shapes and BFLOPs of every layer for a ``width x height`` input (default: the cfg's).

    Raises ``CfgError`` naming the line where shapes stop fitting together, or the first layer
    whose output is over the bounds of ``ae_model.cfg.limits``; checked layer by layer, so
    shapes that grow without end stop there, as small numbers.
    """
    width = config.net.width if width is None else width
    height = config.net.height if height is None else height
    if width < 1 or height < 1:
        raise CfgError(f"input size {width}x{height}: expected positive width and height")
    prev: Shape = (width, height, config.net.channels)
    too_large = _too_large(prev)
    if too_large:
        raise CfgError(f"{config.source}: the input {too_large}; use a smaller size")
    outputs: list[Shape] = []
    rows: list[LayerRow] = []
    for section in config.sections:
        inp = section.input_shape(prev, outputs)
        out = section.output_shape(prev, outputs)
        too_large = _too_large(out)
        if too_large:
            raise section.error(
                f"output {too_large}; use fewer or smaller [upsample], [route] or filters"
            )
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
