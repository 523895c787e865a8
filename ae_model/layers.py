"""PyTorch modules for darknet's layer types, built from the sections of ``ae_model.cfg``.

Tensors are ``(B, C, H, W)``. Each module reproduces darknet's forward pass; where darknet
does something unusual (maxpool padding, the old [reorg]) the code says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ae_model.cfg import (
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

# Keys match ae_model.cfg.ACTIVATIONS (the names the parser accepts).
ACTIVATION_MODULES: dict[str, Callable[[], nn.Module]] = {
    "linear": nn.Identity,
    "leaky": lambda: nn.LeakyReLU(0.1),
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "logistic": nn.Sigmoid,
    "tanh": nn.Tanh,
    "mish": nn.Mish,
    "swish": nn.SiLU,
    "hardswish": nn.Hardswish,
    "hard-swish": nn.Hardswish,
    "elu": nn.ELU,
    "selu": nn.SELU,
}


def make_activation(name: str) -> nn.Module:
    """The module for a darknet activation name (``leaky`` has darknet's slope 0.1)."""
    return ACTIVATION_MODULES[name]()


class ConvolutionalLayer(nn.Module):
    """darknet [convolutional]: convolution, optional batch norm, activation.

    ``(B, C, H, W) -> (B, filters, H', W')``. With ``batch_normalize`` the convolution has no
    bias (darknet's "biases" are then the batch norm's beta).
    """

    def __init__(self, section: ConvolutionalSection, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            section.filters,
            section.size,
            stride=(section.stride_y, section.stride_x),
            # darknet's im2col pads pad * dilation, keeping "same" size for pad=1.
            padding=section.padding * section.dilation,
            dilation=section.dilation,
            groups=section.groups,
            bias=not section.batch_normalize,
        )
        # darknet: eps 1e-5, rolling statistics updated as 0.99 * old + 0.01 * new.
        self.bn = (
            nn.BatchNorm2d(section.filters, eps=1e-5, momentum=0.01)
            if section.batch_normalize
            else None
        )
        self.activation = make_activation(section.activation)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """darknet's initialisation: weights uniform in +-sqrt(2 / fan_in), biases 0."""
        fan_in = self.conv.weight[0].numel()
        bound = math.sqrt(2.0 / fan_in)
        nn.init.uniform_(self.conv.weight, -bound, bound)
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        y: Tensor = self.activation(x)
        return y


class MaxpoolLayer(nn.Module):
    """darknet [maxpool]: ``padding`` (default size-1) split as ``padding // 2`` before and the
    rest after, padded cells never win; out = (in + padding - size) // stride + 1.

    So size=2 stride=1 keeps 13x13 (yolov3-tiny) and size=5 stride=1 is SPP's "same" pool.
    """

    def __init__(self, section: MaxpoolSection) -> None:
        super().__init__()
        self.size = section.size
        self.stride = (section.stride_y, section.stride_x)
        self.padding = section.padding

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        before = self.padding // 2
        pads = []
        for extent, stride in ((w, self.stride[1]), (h, self.stride[0])):
            out = (extent + self.padding - self.size) // stride + 1
            pads += [before, max(0, (out - 1) * stride + self.size - extent - before)]
        if any(pads):
            x = F.pad(x, pads, value=float("-inf"))
        return F.max_pool2d(x, self.size, self.stride)


class AvgpoolLayer(nn.Module):
    """darknet [avgpool]: global average, ``(B, C, H, W) -> (B, C, 1, 1)``."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


class UpsampleLayer(nn.Module):
    """darknet [upsample]: nearest neighbour by ``stride``, times ``scale``.
    ``(B, C, H, W) -> (B, C, H*stride, W*stride)``."""

    def __init__(self, section: UpsampleSection) -> None:
        super().__init__()
        self.stride = section.stride
        self.scale = section.scale

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=self.stride, mode="nearest")
        return x if self.scale == 1.0 else x * self.scale


class RouteLayer(nn.Module):
    """darknet [route]: concatenate earlier outputs along channels; with ``groups`` take chunk
    ``group_id`` of each input first (yolov4-tiny's CSP split)."""

    def __init__(self, section: RouteSection) -> None:
        super().__init__()
        self.sources = section.layers
        self.groups = section.groups
        self.group_id = section.group_id

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        """``inputs``: the outputs of ``sources``, each ``(B, C_i, H, W)``."""
        if self.groups > 1:
            inputs = [t.chunk(self.groups, dim=1)[self.group_id] for t in inputs]
        return inputs[0] if len(inputs) == 1 else torch.cat(list(inputs), dim=1)


class ShortcutLayer(nn.Module):
    """darknet [shortcut]: ``activation(x + from)``. With different channel counts darknet adds
    over the first min(C, C_from) channels and keeps x's channel count."""

    def __init__(self, section: ShortcutSection) -> None:
        super().__init__()
        self.from_layer = section.from_layer
        self.activation = make_activation(section.activation)

    def forward(self, x: Tensor, source: Tensor) -> Tensor:
        """``x``: previous output ``(B, C, H, W)``; ``source``: the ``from`` layer's output."""
        c, c_source = x.shape[1], source.shape[1]
        if c_source == c:
            out = x + source
        elif c_source > c:
            out = x + source[:, :c]
        else:
            out = torch.cat([x[:, :c_source] + source, x[:, c_source:]], dim=1)
        y: Tensor = self.activation(out)
        return y


class ReorgLayer(nn.Module):
    """darknet's (old) [reorg], as trained into the yolov2 weights.

    ``(B, C, H, W) -> (B, C*s*s, H/s, W/s)``. darknet calls ``reorg_cpu(x, W, H, C, s,
    forward=0)`` with the *input* sizes: it reads the input buffer as if it were
    ``(C/s², H*s, W*s)``, gathers ``out[k, j, i] = x'[k % (C/s²), j*s + k'//s, i*s + k'%s]``
    with ``k' = k // (C/s²)`` into a ``(C, H, W)`` buffer, and that buffer is the output
    ``(C*s², H/s, W/s)``. Not a plain space-to-depth; done here with one reshape/permute.
    """

    def __init__(self, section: ReorgSection) -> None:
        super().__init__()
        self.stride = section.stride

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        s = self.stride
        # x' as (B, C/s², H, dy, W, dx): row j*s+dy, column i*s+dx of the (H*s, W*s) view.
        y = x.reshape(b, c // (s * s), h, s, w, s)
        # out channel k = (dy*s + dx) * C/s² + c2, at (j, i).
        y = y.permute(0, 3, 5, 1, 2, 4)
        return y.reshape(b, c * s * s, h // s, w // s)


class YoloLayer(nn.Module):
    """darknet [yolo] (YOLOv3/v4 head). Training: the raw map ``(B, A*(5+C), h, w)`` (A =
    len(mask)) for the loss. Eval: boxes ``(B, A*h*w, 5+C)``, anchor-major then row-major, as
    ``cx, cy, w, h`` in input pixels, objectness and per-class sigmoid probabilities."""

    anchors: Tensor
    mask_anchors: Tensor

    def __init__(self, section: YoloSection) -> None:
        super().__init__()
        self.register_buffer("anchors", torch.tensor(section.anchors), persistent=False)
        self.mask = list(section.mask)
        self.register_buffer("mask_anchors", self.anchors[self.mask].clone(), persistent=False)
        self.classes = section.classes
        self.ignore_thresh = section.ignore_thresh
        self.truth_thresh = section.truth_thresh
        self.iou_thresh = section.iou_thresh
        self.scale_x_y = section.scale_x_y
        self.iou_loss = section.iou_loss
        self.iou_normalizer = section.iou_normalizer
        self.cls_normalizer = section.cls_normalizer
        self.obj_normalizer = section.obj_normalizer
        self.max_delta = section.max_delta
        self.label_smooth_eps = section.label_smooth_eps
        self.random = section.random
        self.jitter = section.jitter

    def forward(self, x: Tensor, input_width: int, input_height: int) -> Tensor:
        return x if self.training else self.decode(x, input_width, input_height)

    def decode(self, raw: Tensor, input_width: int, input_height: int) -> Tensor:
        """``(B, A*(5+C), h, w)`` raw map -> ``(B, A*h*w, 5+C)`` boxes in input pixels.

        x = (sigmoid(tx) * scale_x_y - (scale_x_y - 1) / 2 + cx) * input_width / w,
        w = exp(tw) * anchor_w; objectness and classes through a sigmoid.
        """
        # In float32 whatever autocast computed the map in: bfloat16's 8-bit mantissa would
        # round a box centre near 300 px to 2 px steps.
        p = _per_anchor(raw.float(), len(self.mask))
        gx, gy = _grid(p)
        xy = torch.sigmoid(p[..., :2]) * self.scale_x_y - (self.scale_x_y - 1) / 2
        h, w = p.shape[2:4]
        x = (xy[..., 0] + gx) * (input_width / w)
        y = (xy[..., 1] + gy) * (input_height / h)
        wh = torch.exp(p[..., 2:4]) * self.mask_anchors.to(p.dtype).view(1, -1, 1, 1, 2)
        boxes = torch.cat([x.unsqueeze(-1), y.unsqueeze(-1), wh, torch.sigmoid(p[..., 4:])], -1)
        return boxes.flatten(1, 3)


class RegionLayer(nn.Module):
    """darknet [region] (YOLOv2 head). Training: the raw map ``(B, num*(5+C), h, w)``. Eval:
    ``(B, num*h*w, 5+C)`` with ``cx, cy, w, h`` in input pixels, objectness (logistic) and
    class probabilities (softmax when ``softmax=1``, else logistic)."""

    anchors: Tensor

    def __init__(self, section: RegionSection) -> None:
        super().__init__()
        self.register_buffer("anchors", torch.tensor(section.anchors), persistent=False)
        self.classes = section.classes
        self.coords = section.coords
        self.num = section.num
        self.softmax = section.softmax
        self.rescore = section.rescore
        self.bias_match = section.bias_match
        self.object_scale = section.object_scale
        self.noobject_scale = section.noobject_scale
        self.class_scale = section.class_scale
        self.coord_scale = section.coord_scale
        self.thresh = section.thresh
        self.random = section.random
        self.jitter = section.jitter

    def forward(self, x: Tensor, input_width: int, input_height: int) -> Tensor:
        return x if self.training else self.decode(x, input_width, input_height)

    def decode(self, raw: Tensor, input_width: int, input_height: int) -> Tensor:
        """``(B, num*(5+C), h, w)`` raw map -> ``(B, num*h*w, 5+C)`` boxes in input pixels.

        x = (sigmoid(tx) + cx) / w * input_width, w = exp(tw) * anchor_w / w * input_width.
        """
        p = _per_anchor(raw.float(), self.num)  # float32, as YoloLayer.decode
        gx, gy = _grid(p)
        h, w = p.shape[2:4]
        xy = torch.sigmoid(p[..., :2])
        x = (xy[..., 0] + gx) * (input_width / w)
        y = (xy[..., 1] + gy) * (input_height / h)
        scale = p.new_tensor([input_width / w, input_height / h])
        wh = torch.exp(p[..., 2:4]) * (self.anchors.to(p.dtype) * scale).view(1, -1, 1, 1, 2)
        logits = p[..., 5:]
        classes = torch.softmax(logits, -1) if self.softmax else torch.sigmoid(logits)
        objectness = torch.sigmoid(p[..., 4:5])
        boxes = torch.cat([x.unsqueeze(-1), y.unsqueeze(-1), wh, objectness, classes], -1)
        return boxes.flatten(1, 3)


def _per_anchor(raw: Tensor, anchors: int) -> Tensor:
    """``(B, A*K, h, w)`` -> ``(B, A, h, w, K)``: darknet stores each anchor's K maps together."""
    b, channels, h, w = raw.shape
    return raw.view(b, anchors, channels // anchors, h, w).permute(0, 1, 3, 4, 2)


def _grid(p: Tensor) -> tuple[Tensor, Tensor]:
    """Cell column and row indices ``(h, w)`` for a ``(B, A, h, w, K)`` tensor."""
    h, w = p.shape[2:4]
    gy, gx = torch.meshgrid(
        torch.arange(h, device=p.device, dtype=p.dtype),
        torch.arange(w, device=p.device, dtype=p.dtype),
        indexing="ij",
    )
    return gx, gy


def build_layer(section: Section, input_shape: Shape) -> nn.Module:
    """The module for one parsed section; ``input_shape`` is its ``(w, h, c)`` input."""
    match section:
        case ConvolutionalSection():
            return ConvolutionalLayer(section, input_shape[2])
        case MaxpoolSection():
            return MaxpoolLayer(section)
        case AvgpoolSection():
            return AvgpoolLayer()
        case UpsampleSection():
            return UpsampleLayer(section)
        case RouteSection():
            return RouteLayer(section)
        case ShortcutSection():
            return ShortcutLayer(section)
        case ReorgSection():
            return ReorgLayer(section)
        case DropoutSection():
            return nn.Dropout(section.probability)
        case YoloSection():
            return YoloLayer(section)
        case RegionSection():
            return RegionLayer(section)
    raise TypeError(f"no module for [{section.type}]")
