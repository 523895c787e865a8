"""The Darknet module: shapes per head at several input sizes, darknet's layer semantics, decode.

Forward passes of the big nets run at 64-96 px to stay fast on a CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ae_model.cfg import MaxpoolSection, ReorgSection, bundled_cfg_path, parse_cfg
from ae_model.darknet import Darknet
from ae_model.layers import (
    ACTIVATION_MODULES,
    ConvolutionalLayer,
    MaxpoolLayer,
    RegionLayer,
    ReorgLayer,
    YoloLayer,
)

NET = "[net]\nwidth=64\nheight=64\nchannels=3\n"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def head_shapes(model: Darknet, width: int, height: int, batch: int = 1) -> list[tuple[int, ...]]:
    model.train()
    with torch.no_grad():
        outputs = model(torch.rand(batch, 3, height, width))
    assert isinstance(outputs, list)
    return [tuple(o.shape) for o in outputs]


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [
        (64, 64, [(2, 255, 2, 2), (2, 255, 4, 4)]),
        (320, 192, [(2, 255, 6, 10), (2, 255, 12, 20)]),
    ],
)
def test_yolov3_tiny_heads_train_and_eval(
    width: int, height: int, expected: list[tuple[int, ...]]
) -> None:
    model = Darknet("yolov3-tiny")
    assert head_shapes(model, width, height, batch=2) == expected
    model.eval()
    with torch.no_grad():
        boxes = model(torch.rand(2, 3, height, width))
    assert isinstance(boxes, torch.Tensor)
    cells = sum(h * w for _, _, h, w in expected)
    assert boxes.shape == (2, 3 * cells, 85)


def test_yolov3_three_heads_at_strides_32_16_8() -> None:
    model = Darknet("yolov3")
    assert head_shapes(model, 96, 64) == [(1, 255, 2, 3), (1, 255, 4, 6), (1, 255, 8, 12)]
    heads = [row for row in model.layer_table(416, 416) if row.type == "yolo"]
    assert [(row.index, row.out_stride) for row in heads] == [(82, 32.0), (94, 16.0), (106, 8.0)]


def test_yolov3_spp_builds_from_yolov3_plus_darknets_spp_block() -> None:
    spp = (
        "### SPP ###\n[maxpool]\nstride=1\nsize=5\n\n[route]\nlayers=-2\n\n"
        "[maxpool]\nstride=1\nsize=9\n\n[route]\nlayers=-4\n\n[maxpool]\nstride=1\nsize=13\n\n"
        "[route]\nlayers=-1,-3,-5,-6\n### End SPP ###\n\n"
        "[convolutional]\nbatch_normalize=1\nfilters=512\nsize=1\nstride=1\npad=1\nactivation=leaky\n\n"
    )
    text = bundled_cfg_path("yolov3").read_text()
    # yolov3-spp: after the third conv of the first head (layer 77) come the SPP block (layers
    # 78-83) and one more 1x1 conv; the later routes to layers 61 and 36 are absolute and stay.
    marker = text.index("######################\n")
    for _ in range(4):
        marker = text.index("[convolutional]", marker + 1)
    text = text[:marker] + spp + text[marker:]
    config = parse_cfg(text, "yolov3-spp.cfg")
    rows = config.layer_table(608, 608)
    assert [row.output for row in rows[78:85]] == [
        (19, 19, 512),  # size 5, stride 1, padding 4: (19 + 4 - 5) / 1 + 1 = 19
        (19, 19, 512),
        (19, 19, 512),
        (19, 19, 512),
        (19, 19, 512),
        (19, 19, 2048),  # route 82 80 78 77
        (19, 19, 512),
    ]
    assert len(rows) == 114
    # AlexeyAB's README: yolov3-spp at 608x608, 141.5 BFLOPs.
    assert round(sum(row.bflops for row in rows), 1) == 141.5
    model = Darknet(config)
    assert head_shapes(model, 64, 64) == [(1, 255, 2, 2), (1, 255, 4, 4), (1, 255, 8, 8)]


def test_yolov2_reorg_and_region() -> None:
    model = Darknet("yolov2")
    assert head_shapes(model, 64, 96) == [(1, 425, 3, 2)]
    model.eval()
    with torch.no_grad():
        boxes = model(torch.rand(1, 3, 96, 64))
    assert isinstance(boxes, torch.Tensor)
    assert boxes.shape == (1, 5 * 6, 85)
    # softmax=1: class probabilities of each box sum to one.
    torch.testing.assert_close(boxes[..., 5:].sum(-1), torch.ones(1, 30))


@pytest.mark.parametrize(
    "name", ["yolov2-tiny", "yolov4-tiny", "yolov3-small", "yolov3-tiny-small"]
)
def test_other_bundled_cfgs_build_and_run(name: str) -> None:
    model = Darknet(name)
    shapes = head_shapes(model, 96, 64)
    strides = sorted(96 // w for *_, w in shapes)
    assert strides in ([32], [16, 32], [8, 16, 32])


def test_yolov4_style_mish_csp_route_groups_and_spp() -> None:
    text = NET + (
        "[convolutional]\nbatch_normalize=1\nfilters=16\nsize=3\nstride=2\npad=1\nactivation=mish\n"
        "[route]\nlayers=-1\ngroups=2\ngroup_id=1\n"  # 1: channels 8..15 of layer 0
        "[convolutional]\nbatch_normalize=1\nfilters=8\nsize=3\npad=1\nactivation=swish\n"
        "[route]\nlayers=-1,-3\n"  # 3: 8 + 16
        "[maxpool]\nsize=5\nstride=1\n[route]\nlayers=-2\n[maxpool]\nsize=9\nstride=1\n"
        "[route]\nlayers=-1,-3,-4\n"  # 7: 24 * 3
        "[convolutional]\nfilters=18\nsize=1\nstride=2\nactivation=linear\n"
        "[yolo]\nmask=0,1,2\nanchors=4,4, 8,8, 16,16\nnum=3\nclasses=1\nscale_x_y=1.05\n"
        "iou_loss=ciou\nnms_kind=greedynms\nbeta_nms=0.6\n"
    )
    model = Darknet(parse_cfg(text))
    rows = model.layer_table(64, 64)
    assert [row.output for row in rows] == [
        (32, 32, 16),
        (32, 32, 8),
        (32, 32, 8),
        (32, 32, 24),
        (32, 32, 24),
        (32, 32, 24),
        (32, 32, 24),
        (32, 32, 72),
        (16, 16, 18),
        (16, 16, 18),
    ]
    assert head_shapes(model, 64, 64) == [(1, 18, 16, 16)]
    # The grouped route really takes the second half of layer 0's channels.
    captured: dict[str, torch.Tensor] = {}
    model.layers[1].register_forward_hook(lambda m, i, o: captured.setdefault("route", o))
    model.layers[0].register_forward_hook(lambda m, i, o: captured.setdefault("conv", o))
    model(torch.rand(1, 3, 64, 64))
    torch.testing.assert_close(captured["route"], captured["conv"][:, 8:])


def darknet_reorg_cpu(
    x: np.ndarray, w: int, h: int, c: int, batch: int, stride: int, forward: int
) -> np.ndarray:
    """A straight port of darknet's reorg_cpu (blas.c)."""
    out = np.zeros_like(x)
    out_c = c // (stride * stride)
    for b in range(batch):
        for k in range(c):
            for j in range(h):
                for i in range(w):
                    in_index = i + w * (j + h * (k + c * b))
                    c2 = k % out_c
                    offset = k // out_c
                    w2 = i * stride + offset % stride
                    h2 = j * stride + offset // stride
                    out_index = w2 + w * stride * (h2 + h * stride * (c2 + out_c * b))
                    if forward:
                        out[out_index] = x[in_index]
                    else:
                        out[in_index] = x[out_index]
    return out


def test_reorg_matches_darknets_reorg_cpu_loop() -> None:
    batch, c, h, w, s = 2, 8, 4, 6, 2
    x = torch.arange(batch * c * h * w, dtype=torch.float32).view(batch, c, h, w)
    # darknet's forward_reorg_layer (reverse=0): reorg_cpu(input, l.w, l.h, l.c, ..., 0, output)
    # with the layer's *input* sizes.
    expected = darknet_reorg_cpu(x.flatten().numpy(), w, h, c, batch, s, 0)
    section = parse_cfg(NET + "[convolutional]\nfilters=8\n[reorg]\nstride=2\n").sections[1]
    assert isinstance(section, ReorgSection)
    out = ReorgLayer(section)(x)
    assert out.shape == (batch, c * s * s, h // s, w // s)
    np.testing.assert_array_equal(out.flatten().numpy(), expected)


def darknet_maxpool(x: np.ndarray, size: int, stride: int, padding: int) -> np.ndarray:
    """A straight port of darknet's forward_maxpool_layer for one (C, H, W) map."""
    c, h, w = x.shape
    out_h, out_w = (h + padding - size) // stride + 1, (w + padding - size) // stride + 1
    offset = -(padding // 2)
    out = np.full((c, out_h, out_w), -np.inf, dtype=x.dtype)
    for k in range(c):
        for i in range(out_h):
            for j in range(out_w):
                for n in range(size):
                    for m in range(size):
                        y, xx = offset + i * stride + n, offset + j * stride + m
                        if 0 <= y < h and 0 <= xx < w:
                            out[k, i, j] = max(out[k, i, j], x[k, y, xx])
    return out


@pytest.mark.parametrize(
    ("size", "stride", "hw"), [(2, 1, (5, 7)), (2, 2, (7, 6)), (3, 2, (7, 7)), (5, 1, (6, 5))]
)
def test_maxpool_matches_darknets_loop(size: int, stride: int, hw: tuple[int, int]) -> None:
    x = torch.randn(1, 2, *hw)
    section = parse_cfg(NET + f"[maxpool]\nsize={size}\nstride={stride}\n").sections[0]
    assert isinstance(section, MaxpoolSection)
    out = MaxpoolLayer(section)(x)
    expected = darknet_maxpool(x[0].numpy(), size, stride, section.padding)
    np.testing.assert_array_equal(out[0].numpy(), expected)


def test_shortcut_adds_over_the_smaller_channel_count() -> None:
    text = NET + (
        "[convolutional]\nfilters=4\n[convolutional]\nfilters=6\n[shortcut]\nfrom=-2\n"
        "[convolutional]\nfilters=2\n[shortcut]\nfrom=-2\nactivation=relu\n"
        "[convolutional]\nfilters=6\nactivation=linear\n"
        "[yolo]\nmask=0\nanchors=1,1\nnum=1\nclasses=1\n"
    )
    model = Darknet(parse_cfg(text))
    outs: dict[int, torch.Tensor] = {}
    for i in range(5):
        model.layers[i].register_forward_hook(lambda m, a, o, i=i: outs.setdefault(i, o))
    model(torch.rand(1, 3, 64, 64))
    # Layer 2: previous has 6 channels, `from` 4: the first 4 get added, output keeps 6.
    expected2 = outs[1].clone()
    expected2[:, :4] += outs[0]
    torch.testing.assert_close(outs[2], expected2)
    # Layer 4: previous has 2, `from` (layer 2) 6: add its first 2, then relu.
    torch.testing.assert_close(outs[4], torch.relu(outs[3] + outs[2][:, :2]))


def test_yolo_decode_follows_darknets_formula() -> None:
    text = NET + (
        "[convolutional]\nfilters=14\nsize=1\nactivation=linear\n"
        "[yolo]\nmask=1,2\nanchors=5,6, 10,12, 20,24\nnum=3\nclasses=2\nscale_x_y=1.2\n"
    )
    model = Darknet(parse_cfg(text)).eval()
    head = model.heads[0]
    assert isinstance(head, YoloLayer)
    raw = torch.randn(1, 14, 4, 2)  # h=4, w=2 on a 64x128 (w x h) input: 32 px cells
    boxes = head.decode(raw, 64, 128)
    assert boxes.shape == (1, 2 * 4 * 2, 7)
    a, cy, cx = 1, 3, 1  # second anchor of the mask (anchor 2: 20x24), row 3, column 1
    t = raw[0, a * 7 : (a + 1) * 7, cy, cx]
    box = boxes[0, (a * 4 + cy) * 2 + cx]
    s = 1.2
    expected = torch.stack(
        [
            (torch.sigmoid(t[0]) * s - (s - 1) / 2 + cx) * 32,
            (torch.sigmoid(t[1]) * s - (s - 1) / 2 + cy) * 32,
            torch.exp(t[2]) * 20,
            torch.exp(t[3]) * 24,
            torch.sigmoid(t[4]),
            torch.sigmoid(t[5]),
            torch.sigmoid(t[6]),
        ]
    )
    torch.testing.assert_close(box, expected)


def test_region_decode_anchors_in_grid_cells() -> None:
    text = NET + (
        "[convolutional]\nfilters=14\nsize=1\nactivation=linear\n"
        "[region]\nanchors=1,2, 3,4\nnum=2\nclasses=2\nsoftmax=1\n"
    )
    head = Darknet(parse_cfg(text)).heads[0]
    assert isinstance(head, RegionLayer)
    raw = torch.randn(1, 14, 2, 4)  # h=2, w=4 on a 128x64 input
    boxes = head.decode(raw, 128, 64)
    a, cy, cx = 1, 1, 2
    t = raw[0, 7:14, cy, cx]
    expected = torch.cat(
        [
            torch.stack(
                [
                    (torch.sigmoid(t[0]) + cx) / 4 * 128,
                    (torch.sigmoid(t[1]) + cy) / 2 * 64,
                    torch.exp(t[2]) * 3 / 4 * 128,
                    torch.exp(t[3]) * 4 / 2 * 64,
                    torch.sigmoid(t[4]),
                ]
            ),
            torch.softmax(t[5:], 0),
        ]
    )
    torch.testing.assert_close(boxes[0, (a * 2 + cy) * 4 + cx], expected)


def test_heads_decode_a_bfloat16_map_in_float32() -> None:
    """Under autocast the map arrives in bfloat16; boxes must not be rounded to its 8 bits."""
    yolo = NET + (
        "[convolutional]\nfilters=14\nsize=1\nactivation=linear\n"
        "[yolo]\nmask=1,2\nanchors=5,6, 10,12, 20,24\nnum=3\nclasses=2\n"
    )
    region = NET + (
        "[convolutional]\nfilters=14\nsize=1\nactivation=linear\n"
        "[region]\nanchors=1,2, 3,4\nnum=2\nclasses=2\nsoftmax=1\n"
    )
    raw = torch.randn(1, 14, 16, 16).bfloat16()
    for text in (yolo, region):
        head = Darknet(parse_cfg(text)).heads[0]
        boxes = head.decode(raw, 512, 512)
        assert boxes.dtype == torch.float32
        torch.testing.assert_close(boxes, head.decode(raw.float(), 512, 512), rtol=0, atol=0)
        # Centres in the last column lie near 500 px, where bfloat16's steps are 2-4 px.
        centres = boxes[..., 0]
        assert not torch.equal(centres, centres.bfloat16().float())


def test_eval_forward_is_deterministic_and_dropout_is_identity() -> None:
    text = NET + (
        "[convolutional]\nbatch_normalize=1\nfilters=8\nsize=3\npad=1\nactivation=leaky\n"
        "[dropout]\nprobability=0.5\n"
        "[convolutional]\nfilters=6\nsize=1\nactivation=linear\n"
        "[yolo]\nmask=0\nanchors=8,8\nnum=1\nclasses=1\n"
    )
    model = Darknet(parse_cfg(text)).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        first, second = model(x), model(x)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x)[0], model(x)[0])  # dropout is active in training


def test_model_attributes_follow_the_contract() -> None:
    text = (
        bundled_cfg_path("yolov3-tiny")
        .read_text()
        .replace("[upsample]\nstride=2\n", "[upsample]\nstride=2\nassisted_excitation=4000\n")
    )
    model = Darknet(parse_cfg(text))
    assert model.net.width == 416 and model.net["max_batches"] == "500200"
    assert len(model.sections) == len(model.layers) == 24
    assert model.sections[19].type == "upsample"
    assert model.sections[19].options["assisted_excitation"] == "4000"
    assert model.sections[19].line == text.split("\n").index("[upsample]") + 1
    assert [type(h) for h in model.heads] == [YoloLayer, YoloLayer]
    head = model.heads[1]
    assert isinstance(head, YoloLayer)
    assert head.mask == [1, 2, 3] and head.anchors.shape == (6, 2)
    assert head.anchors.dtype == torch.float32 and head.classes == 80
    assert (head.ignore_thresh, head.truth_thresh, head.random, head.jitter) == (0.7, 1, 1, 0.3)
    assert len(model.excitations) == 0
    conv = model.layers[0]
    assert isinstance(conv, ConvolutionalLayer) and conv.bn is not None
    assert conv.conv.bias is None  # batch norm's beta plays darknet's bias
    assert (conv.bn.eps, conv.bn.momentum) == (1e-5, 0.01)
    # darknet's initialisation: uniform within +-sqrt(2 / (3*3*3)).
    assert conv.conv.weight.abs().max() <= (2 / 27) ** 0.5


def test_excitations_apply_before_later_layers_and_add_no_state() -> None:
    model = Darknet("yolov3-tiny-small").eval()
    keys = set(model.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        plain = model(x)

    class Zero(nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return t * 0

    # Zeroing layer 13's output changes both heads: 14-15 and, through route 17, 18-22.
    model.excitations["13"] = Zero()
    with torch.no_grad():
        excited = model(x)
    assert set(model.state_dict()) == keys
    assert isinstance(plain, torch.Tensor) and isinstance(excited, torch.Tensor)
    big_head = 3 * 2 * 2  # 2x2 grid at stride 32, 3 anchors
    assert not torch.allclose(plain[:, :big_head], excited[:, :big_head])
    assert not torch.allclose(plain[:, big_head:], excited[:, big_head:])


def test_every_parser_activation_has_a_module() -> None:
    from ae_model.cfg import ACTIVATIONS

    assert ACTIVATION_MODULES.keys() == ACTIVATIONS
    leaky = ACTIVATION_MODULES["leaky"]()
    assert isinstance(leaky, nn.LeakyReLU) and leaky.negative_slope == 0.1
