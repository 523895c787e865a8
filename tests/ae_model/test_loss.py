"""Darknet's [yolo] loss: hand-worked values, assignment, ignore, gradients, a tiny fit."""

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import pytest
import torch
from torchvision.ops import box_iou, generalized_box_iou_loss

from ae_model.loss import LossOutput, YoloLoss

LN2 = math.log(2.0)
LN3 = math.log(3.0)
IMG = (32, 32)


@dataclass
class Head:
    """The attributes of a [yolo] head the loss reads, with darknet's defaults."""

    anchors: torch.Tensor
    mask: list[int]
    classes: int = 2
    ignore_thresh: float = 0.5
    truth_thresh: float = 1.0
    iou_thresh: float = 1.0
    scale_x_y: float = 1.0
    iou_loss: str = "mse"
    iou_normalizer: float = 0.75
    cls_normalizer: float = 1.0
    obj_normalizer: float = 1.0
    max_delta: float = math.inf
    label_smooth_eps: float = 0.0


def head(anchors: Sequence[tuple[float, float]], mask: list[int], **kw: Any) -> Head:
    return Head(torch.tensor(anchors, dtype=torch.float32), mask, **kw)


def raw(batch: int, h: Head, grid: int) -> torch.Tensor:
    """All-zero raw output ``(B, A*(5+C), g, g)`` of a head."""
    return torch.zeros(batch, len(h.mask) * (5 + h.classes), grid, grid)


def ch(h: Head, anchor: int, k: int) -> int:
    """Channel of entry ``k`` (0..3 box, 4 objectness, 5+ classes) of mask slot ``anchor``."""
    return anchor * (5 + h.classes) + k


def target(image: int, cls: int, cx: float, cy: float, w: float, h: float) -> list[float]:
    return [image, cls, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def run(
    heads: list[Head], outs: list[torch.Tensor], targets: list[list[float]]
) -> tuple[LossOutput, list[torch.Tensor]]:
    """Loss and the gradient of ``loss`` with respect to each output."""
    leaves = [o.clone().requires_grad_() for o in outs]
    t = torch.tensor(targets, dtype=torch.float32).reshape(-1, 6)
    result = YoloLoss(heads)(leaves, t, IMG)
    return result, list(torch.autograd.grad(result.loss, leaves))


# --- values worked out by hand -------------------------------------------------------------------


def single_cell() -> tuple[Head, torch.Tensor, list[list[float]]]:
    """One 1x1-grid head, one 16x16 anchor on a 32x32 input, one truth of class 1.

    Truth: centre (0.5, 0.5), w 0.25, h 0.5. Raw: tx = ln 3 (sigmoid 0.75), ty = tw = th = 0,
    objectness 0, class logits (0, ln 3).
    """
    h = head([(16, 16)], [0])
    out = raw(1, h, 1)
    out[0, ch(h, 0, 0)] = LN3
    out[0, ch(h, 0, 6)] = LN3
    return h, out, [target(0, 1, 0.5, 0.5, 0.25, 0.5)]


def test_single_cell_values_by_hand() -> None:
    h, out, targets = single_cell()
    result, _ = run([h], [out], targets)
    # Box (mse): scale = 2 - w*h = 2 - 0.125 = 1.875; iou_normalizer 0.75.
    #   x: sigmoid(ln 3) = 0.75 against 0.5*1 - 0 = 0.5 -> error 0.25
    #   y: 0.5 against 0.5 -> 0
    #   w: tw = 0 against log(0.25*32/16) = -ln 2 -> error ln 2
    #   h: th = 0 against log(0.5*32/16) = 0 -> 0
    #   box = 0.5 * 0.75 * 1.875 * (0.25^2 + ln2^2)
    box = 0.5 * 0.75 * 1.875 * (0.0625 + LN2**2)
    # Objectness: the cell is positive, BCE(logit 0, target 1) = ln 2.
    obj = LN2
    # Classes: BCE(0, 0) = ln 2; BCE(ln 3, 1) = -ln 0.75 = ln(4/3).
    cls = LN2 + math.log(4 / 3)
    assert result.box.item() == pytest.approx(box, rel=1e-6)
    assert result.obj.item() == pytest.approx(obj, rel=1e-6)
    assert result.cls.item() == pytest.approx(cls, rel=1e-6)
    assert result.loss.item() == pytest.approx(box + obj + cls, rel=1e-6)
    assert result.num_targets.item() == 1
    assert result.num_positives.item() == 1
    # Prediction: centre (0.75, 0.5), 0.5 x 0.5 -> x [0.5, 1], y [0.25, 0.75]. Truth: x [0.375,
    # 0.625], y [0.25, 0.75]. Intersection 0.125 * 0.5 = 0.0625; union 0.25 + 0.125 - 0.0625.
    assert result.avg_iou.item() == pytest.approx(0.0625 / 0.3125, rel=1e-6)
    assert result.recall50.item() == 0
    assert result.avg_obj.item() == pytest.approx(0.5)
    assert result.avg_any_obj.item() == pytest.approx(0.5)
    assert result.avg_cls.item() == pytest.approx(0.75)


def test_loss_is_divided_by_batch_size() -> None:
    h, out, targets = single_cell()
    one, _ = run([h], [out], targets)
    two, _ = run([h], [out.repeat(2, 1, 1, 1)], [*targets, [1, *targets[0][1:]]])
    assert two.loss.item() == pytest.approx(one.loss.item(), rel=1e-6)
    assert two.num_positives.item() == 2


def test_label_smoothing_is_darknets() -> None:
    h, out, targets = single_cell()
    result, _ = run([replace(h, label_smooth_eps=0.2)], [out], targets)
    # Darknet: y * (1 - eps) + 0.5 * eps -> 0.9 for the class, 0.1 for the others.
    # BCE(z, y) = softplus(z) - y*z: BCE(0, 0.1) = ln 2; BCE(ln 3, 0.9) = ln 4 - 0.9 ln 3.
    assert result.cls.item() == pytest.approx(LN2 + math.log(4) - 0.9 * LN3, rel=1e-6)


def test_normalizers_scale_their_terms() -> None:
    h, out, targets = single_cell()
    base, _ = run([h], [out], targets)
    scaled, _ = run(
        [replace(h, iou_normalizer=0.5, obj_normalizer=3.0, cls_normalizer=2.0)], [out], targets
    )
    assert scaled.box.item() == pytest.approx(base.box.item() / 0.75 * 0.5, rel=1e-6)
    assert scaled.obj.item() == pytest.approx(base.obj.item() * 3.0, rel=1e-6)
    assert scaled.cls.item() == pytest.approx(base.cls.item() * 2.0, rel=1e-6)


# --- assignment ---------------------------------------------------------------------------------

ANCHORS = [(4, 4), (8, 16), (24, 24)]


@pytest.mark.parametrize(
    ("wh", "head_index", "slot"),
    [
        # 8x16 px: shape IoU 0.125 with 4x4, 1 with 8x16, 0.22 with 24x24 -> anchor 1 (head 0).
        ((0.25, 0.5), 0, 1),
        # 20x24 px: 0.03, 0.27, 0.83 -> anchor 2 (head 1), though 8x16 is in head 0's mask.
        ((0.625, 0.75), 1, 0),
    ],
)
def test_best_anchor_by_shape_only_in_its_head(
    wh: tuple[float, float], head_index: int, slot: int
) -> None:
    heads = [head(ANCHORS, [0, 1]), head(ANCHORS, [2])]
    outs = [raw(1, heads[0], 4), raw(1, heads[1], 2)]
    result, grads = run(heads, outs, [target(0, 0, 0.6, 0.3, *wh)])
    assert result.num_positives.item() == 1
    for k, (h, g) in enumerate(zip(heads, grads, strict=True)):
        row, col = int(0.3 * g.shape[-1]), int(0.6 * g.shape[-1])
        for a in range(len(h.mask)):
            box_grad = g[0, ch(h, a, 0) : ch(h, a, 4)]
            cls_grad = g[0, ch(h, a, 5) : ch(h, a, 5 + h.classes)]
            responsible = (k, a) == (head_index, slot)
            assert bool(box_grad[:, row, col].abs().sum() > 0) == responsible
            assert bool(cls_grad[:, row, col].abs().sum() > 0) == responsible
            # Objectness: target 1 (negative gradient) only where responsible.
            assert bool(g[0, ch(h, a, 4), row, col] < 0) == responsible
            box_grad[:, row, col] = 0
            assert box_grad.abs().sum() == 0  # no other cell has a box loss


def two_anchor_cell(**kw: Any) -> tuple[Head, torch.Tensor, list[list[float]]]:
    """1x1 grid, anchors 8x16 (responsible for the 8x16 truth) and 16x16 whose raw output
    decodes exactly onto the truth: tw = ln 0.5 -> w = 0.5 * 16/32 = 0.25, th = 0 -> h = 0.5."""
    h = head([(8, 16), (16, 16)], [0, 1], **kw)
    out = raw(1, h, 1)
    out[0, ch(h, 1, 2)] = math.log(0.5)
    return h, out, [target(0, 0, 0.5, 0.5, 0.25, 0.5)]


def test_ignore_thresh_removes_objectness_of_good_prediction() -> None:
    h, out, targets = two_anchor_cell()
    _, (g,) = run([h], [out], targets)
    assert g[0, ch(h, 1, 4)].item() == 0  # IoU 1 > 0.5: ignored
    _, (g,) = run([replace(h, ignore_thresh=1.0)], [out], targets)
    assert g[0, ch(h, 1, 4)].item() == pytest.approx(0.5)  # d BCE(z, 0)/dz = sigmoid(0)


def test_ignore_needs_a_class_probability_above_quarter() -> None:
    # Darknet's compare_yolo_class: no class above 0.25 -> the prediction is not ignored.
    h, out, targets = two_anchor_cell()
    out[0, ch(h, 1, 5) : ch(h, 1, 7)] = -2.0  # sigmoid(-2) = 0.12
    _, (g,) = run([h], [out], targets)
    assert g[0, ch(h, 1, 4)].item() == pytest.approx(0.5)


def test_iou_thresh_adds_extra_positives() -> None:
    # Anchors 8x16 and 10x16 against an 8x16 truth: shape IoU 1 and 128/160 = 0.8.
    h = head([(8, 16), (10, 16)], [0, 1])
    out, targets = raw(1, h, 1), [target(0, 0, 0.5, 0.5, 0.25, 0.5)]
    for thresh, positives in [(1.0, 1), (0.85, 1), (0.7, 2)]:
        result, (g,) = run([replace(h, iou_thresh=thresh)], [out], targets)
        assert result.num_positives.item() == positives
        assert bool(g[0, ch(h, 1, 4)] < 0) == (positives == 2)
        assert bool(g[0, ch(h, 1, 0) : ch(h, 1, 4)].abs().sum() > 0) == (positives == 2)


def test_truth_thresh_makes_a_good_prediction_positive() -> None:
    h, out, targets = two_anchor_cell(truth_thresh=0.9)
    result, (g,) = run([h], [out], targets)
    assert g[0, ch(h, 1, 4)].item() == pytest.approx(-0.5)  # target 1: sigmoid(0) - 1
    assert g[0, ch(h, 1, 5)].item() == pytest.approx(-0.5)  # class 0 is the truth's
    assert result.num_positives.item() == 1  # darknet counts only the truth loop's
    out[0, ch(h, 1, 0)] = 0.3  # x 0.5 -> 0.574: IoU 0.54, ignored but no longer positive
    _, (g,) = run([h], [out], targets)
    assert g[0, ch(h, 1, 4)].item() == 0


def test_truths_on_one_cell_union_classes_and_sum_boxes() -> None:
    h = head([(8, 16)], [0], classes=3)
    out = raw(1, h, 1)
    t0, t1 = target(0, 0, 0.5, 0.5, 0.25, 0.5), target(0, 1, 0.4, 0.6, 0.2, 0.4)
    both, (g,) = run([h], [out], [t0, t1])
    first, _ = run([h], [out], [t0])
    second, _ = run([h], [out], [t1])
    assert both.box.item() == pytest.approx(first.box.item() + second.box.item(), rel=1e-6)
    # Class targets (1, 1, 0): gradient sigmoid(0) - target.
    assert g[0, 5:8, 0, 0].tolist() == pytest.approx([-0.5, -0.5, 0.5])
    assert both.num_positives.item() == 2


# --- gradients ----------------------------------------------------------------------------------


def test_gradient_is_darknets_delta_over_batch() -> None:
    gen = torch.Generator().manual_seed(0)
    h = head([(6, 8), (12, 10)], [0, 1], classes=3, scale_x_y=1.1, obj_normalizer=2.0)
    out = torch.randn(2, 16, 3, 3, generator=gen) * 0.5
    cx, cy, w, hh = 0.55, 0.2, 0.2, 0.3  # 6.4x9.6 px: anchor 0; cell row 0, col 1
    _, (g,) = run([h], [out], [target(1, 2, cx, cy, w, hh)])
    s, scale = 1.1, 2 - w * hh
    tx, ty, tw, th = out[1, 0:4, 0, 1]
    # delta_yolo_box: scale * (target - output) * iou_normalizer, output x in sigmoid space.
    delta = [
        scale * ((cx * 3 - 1) - (s * torch.sigmoid(tx) - 0.5 * (s - 1))) * 0.75,
        scale * ((cy * 3 - 0) - (s * torch.sigmoid(ty) - 0.5 * (s - 1))) * 0.75,
        scale * (math.log(w * 32 / 6) - tw) * 0.75,
        scale * (math.log(hh * 32 / 8) - th) * 0.75,
    ]
    batch = 2
    assert g[1, 0:4, 0, 1].tolist() == pytest.approx([-d.item() / batch for d in delta], rel=1e-5)
    obj = out[1, 4, 0, 1]
    assert g[1, 4, 0, 1].item() == pytest.approx(-2.0 * (1 - torch.sigmoid(obj).item()) / batch)
    classes = out[1, 5:8, 0, 1]
    expected = (torch.sigmoid(classes) - torch.tensor([0.0, 0.0, 1.0])) / batch
    assert g[1, 5:8, 0, 1].tolist() == pytest.approx(expected.tolist(), rel=1e-5)
    # Image 0 has no truth: every prediction is a negative, delta = obj_normalizer * (0 - p).
    negatives = out[0, [4, 12]]
    assert torch.allclose(g[0, [4, 12]], 2.0 * torch.sigmoid(negatives) / batch)
    assert g[0, [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15]].abs().sum() == 0


@pytest.mark.parametrize("kind", ["giou", "diou", "ciou"])
def test_xiou_losses_zero_when_perfect_and_finite(kind: str) -> None:
    h, out, targets = single_cell()
    h = replace(h, iou_loss=kind)
    out[0, 0:4] = torch.tensor([0.0, 0.0, math.log(0.5), 0.0]).view(4, 1, 1)  # onto the truth
    result, (g,) = run([h], [out], targets)
    assert result.box.item() == pytest.approx(0.0, abs=1e-6)
    assert result.avg_iou.item() == pytest.approx(1.0)
    out[0, 0:4] = torch.tensor([3.0, -2.0, 1.5, -1.0]).view(4, 1, 1)
    result, (g,) = run([h], [out], targets)
    assert 0 < result.box.item() < 3 * 0.75
    assert torch.isfinite(g).all()


def test_giou_gradient_follows_darknets_chain() -> None:
    # Darknet applies dL/dx (x normalised) straight to tx, and dL/dw * exp(tw) to tw.
    h, out, targets = single_cell()
    h = replace(h, iou_loss="giou", iou_normalizer=0.07)
    raw_box = torch.tensor([0.3, -0.4, 0.2, -0.1])
    out[0, 0:4] = raw_box.view(4, 1, 1)
    _, (g,) = run([h], [out], targets)
    xy = torch.sigmoid(raw_box[:2])
    wh = torch.exp(raw_box[2:]) * 16 / 32
    box = torch.cat((xy, wh)).requires_grad_()
    pred = torch.cat((box[:2] - box[2:] / 2, box[:2] + box[2:] / 2))
    truth = torch.tensor([0.375, 0.25, 0.625, 0.75])
    (d,) = torch.autograd.grad(0.07 * generalized_box_iou_loss(pred, truth), box)
    expected = torch.cat((d[:2], d[2:] * torch.exp(raw_box[2:])))
    assert g[0, 0:4, 0, 0].tolist() == pytest.approx(expected.tolist(), rel=1e-5)


def test_max_delta_clips_each_delta_before_scaling() -> None:
    h, out, targets = single_cell()
    h = replace(h, iou_loss="giou", iou_normalizer=1.0)
    out[0, 0:4] = torch.tensor([1.0, -1.0, -0.5, 0.3]).view(4, 1, 1)
    _, (free,) = run([h], [out], targets)
    bound = 0.01
    assert free[0, 0:4].abs().min() > bound
    leaf = out.clone().requires_grad_()
    loss = YoloLoss([replace(h, max_delta=bound)])([leaf], torch.tensor(targets), IMG).loss
    (1000 * loss).backward()  # as a GradScaler would: the clip is on the unscaled delta
    assert leaf.grad is not None
    clipped = leaf.grad[0, 0:4, 0, 0] / 1000
    assert clipped.tolist() == pytest.approx((bound * free[0, 0:4, 0, 0].sign()).tolist())


# --- batches ------------------------------------------------------------------------------------


def test_empty_targets_give_only_no_object_loss() -> None:
    h = head([(8, 16), (16, 16)], [0, 1])
    out = torch.randn(2, 14, 2, 2, generator=torch.Generator().manual_seed(1))
    obj = out[:, [4, 11]]
    expected = torch.nn.functional.softplus(obj).sum().item() / 2  # BCE(z, 0) = softplus(z)
    # An empty batch, and one whose only truth has a class id the cfg does not have.
    for targets in ([], [target(0, 7, 0.5, 0.5, 0.2, 0.2)]):
        result, (g,) = run([h], [out], targets)
        assert result.loss.item() == pytest.approx(expected, rel=1e-6)
        assert result.box.item() == 0 and result.cls.item() == 0
        assert result.num_targets.item() == 0 and result.num_positives.item() == 0
        assert result.avg_iou.item() == 0
        assert torch.isfinite(g).all()


def test_truths_do_not_leak_across_images() -> None:
    h, out, targets = two_anchor_cell()
    batch = out.repeat(2, 1, 1, 1)  # both images predict the same; only image 0 has the truth
    _, (g,) = run([h], [batch], targets)
    assert g[0, ch(h, 1, 4)].item() == 0  # image 0: slot 1 matches its truth, ignored
    assert g[1, ch(h, 1, 4)].item() == pytest.approx(0.5 / 2)  # image 1: a plain negative
    assert g[1, ch(h, 0, 4)].item() == pytest.approx(0.5 / 2)  # not responsible for anything
    assert g[1, ch(h, 0, 0) : ch(h, 0, 4)].abs().sum() == 0
    assert g[0, ch(h, 0, 4)].item() == pytest.approx(-0.5 / 2)  # image 0: responsible


def test_rejects_mismatched_inputs() -> None:
    h = head([(8, 16)], [0])
    with pytest.raises(ValueError, match="iou_loss"):
        YoloLoss([replace(h, iou_loss="l1")])
    with pytest.raises(ValueError, match="mask"):
        YoloLoss([replace(h, mask=[3])])
    with pytest.raises(ValueError, match="channels"):
        YoloLoss([h])([torch.zeros(1, 8, 2, 2)], torch.zeros(0, 6), IMG)
    with pytest.raises(ValueError, match=r"\(N, 6\)"):
        YoloLoss([h])([raw(1, h, 2)], torch.zeros(3, 5), IMG)


# --- a tiny fit ----------------------------------------------------------------------------------


def decode(out: torch.Tensor, h: Head, b: int, a: int, row: int, col: int) -> torch.Tensor:
    """Normalised x1, y1, x2, y2 of one prediction, decoded independently of the loss."""
    grid = out.shape[-1]
    tx, ty, tw, th = out[b, ch(h, a, 0) : ch(h, a, 4), row, col]
    cx, cy = (torch.sigmoid(tx) + col) / grid, (torch.sigmoid(ty) + row) / grid
    aw, ah = h.anchors[h.mask[a]]
    w, hh = torch.exp(tw) * aw / IMG[0], torch.exp(th) * ah / IMG[1]
    return torch.stack((cx - w / 2, cy - hh / 2, cx + w / 2, cy + hh / 2))


@pytest.mark.usefixtures("one_torch_thread")
def test_optimising_raw_outputs_fits_the_truths() -> None:
    anchors = [(6, 6), (12, 10), (20, 24), (28, 28)]
    heads = [head(anchors, [0, 1], classes=3), head(anchors, [2, 3], classes=3)]
    gen = torch.Generator().manual_seed(2)
    leaves = [(torch.randn(2, 16, g, g, generator=gen) * 0.1).requires_grad_() for g in (4, 2)]
    # (image, class, cx, cy, w, h) -> best anchors 0, 1, 2 and 3.
    truths = [(0, 0, 0.3, 0.4, 0.2, 0.15), (0, 1, 0.7, 0.8, 0.35, 0.3), (1, 2, 0.5, 0.5, 0.6, 0.7)]
    truths.append((1, 1, 0.2, 0.8, 0.9, 0.85))
    targets = torch.tensor([target(*t) for t in truths])
    loss_fn = YoloLoss(heads)
    optimizer = torch.optim.Adam(leaves, lr=0.05)
    for _ in range(200):
        optimizer.zero_grad()
        result = loss_fn(leaves, targets, IMG)
        result.loss.backward()
        optimizer.step()
    assert result.recall75.item() == 1 and result.avg_iou.item() > 0.9
    for (b, _, cx, cy, w, hh), (k, a) in zip(truths, [(0, 0), (0, 1), (1, 0), (1, 1)], strict=True):
        out, grid = leaves[k].detach(), leaves[k].shape[-1]
        pred = decode(out, heads[k], b, a, int(cy * grid), int(cx * grid))
        truth = torch.tensor(target(b, 0, cx, cy, w, hh)[2:])
        assert box_iou(pred[None], truth[None]).item() > 0.9
    assert result.avg_obj.item() > 0.9 and result.avg_any_obj.item() < 0.2


# --- against a literal transcription of darknet's loops ----------------------------------------


Truth = tuple[int, float, float, float, float]
"""class, cx, cy, w, h"""


def darknet_delta(
    out: torch.Tensor, h: Head, truths: list[list[Truth]]
) -> tuple[torch.Tensor, dict[str, int]]:
    """Darknet's forward_yolo_layer delta (mse), cell by cell and truth by truth as yolo_layer.c
    does it; ``truths[b]`` lists image b's (class, cx, cy, w, h). Returns the delta, shaped like
    ``out``, and how often the ignore and truth_thresh branches fired."""
    net_w, net_h = IMG
    batch, _, gh, gw = out.shape
    s, c = h.scale_x_y, h.classes
    x = out.double().clone()
    for a in range(len(h.mask)):  # activate like darknet: logistic on x, y, objectness, classes
        xy, rest = slice(ch(h, a, 0), ch(h, a, 2)), slice(ch(h, a, 4), ch(h, a, 5 + c))
        x[:, xy] = s * x[:, xy].sigmoid() - (s - 1) / 2
        x[:, rest] = x[:, rest].sigmoid()
    delta = torch.zeros_like(x)
    fired = {"ignored": 0, "truth_thresh": 0}
    anchors = h.anchors.double().tolist()

    def iou(p: tuple[float, ...], t: tuple[float, ...]) -> float:
        iw = min(p[0] + p[2] / 2, t[0] + t[2] / 2) - max(p[0] - p[2] / 2, t[0] - t[2] / 2)
        ih = min(p[1] + p[3] / 2, t[1] + t[3] / 2) - max(p[1] - p[3] / 2, t[1] - t[3] / 2)
        inter = max(iw, 0) * max(ih, 0)
        return inter / (p[2] * p[3] + t[2] * t[3] - inter)

    def get_box(b: int, a: int, n: int, j: int, i: int) -> tuple[float, ...]:
        v = [x[b, ch(h, a, k), j, i].item() for k in range(4)]
        return (
            (i + v[0]) / gw,
            (j + v[1]) / gh,
            math.exp(v[2]) * anchors[n][0] / net_w,
            math.exp(v[3]) * anchors[n][1] / net_h,
        )

    def delta_box(b: int, a: int, n: int, j: int, i: int, t: tuple[float, ...]) -> None:
        scale = 2 - t[2] * t[3]
        targets = [
            t[0] * gw - i,
            t[1] * gh - j,
            math.log(t[2] * net_w / anchors[n][0]),
            math.log(t[3] * net_h / anchors[n][1]),
        ]
        for k in range(4):
            delta[b, ch(h, a, k), j, i] += scale * (targets[k] - x[b, ch(h, a, k), j, i]) * 0.75

    def delta_class(b: int, a: int, j: int, i: int, cls: int) -> None:
        if delta[b, ch(h, a, 5 + cls), j, i] != 0:
            delta[b, ch(h, a, 5 + cls), j, i] = 1 - x[b, ch(h, a, 5 + cls), j, i]
            return
        for k in range(c):
            delta[b, ch(h, a, 5 + k), j, i] = float(k == cls) - x[b, ch(h, a, 5 + k), j, i]

    for b in range(batch):
        valid = [t for t in truths[b] if 0 <= t[0] < c]
        for j in range(gh):
            for i in range(gw):
                for a, n in enumerate(h.mask):
                    pred = get_box(b, a, n, j, i)
                    best_match, best, best_t = 0.0, 0.0, 0
                    for k, (_, *t) in enumerate(valid):
                        class_match = (x[b, ch(h, a, 5) : ch(h, a, 5 + c), j, i] > 0.25).any()
                        v = iou(pred, tuple(t))
                        if v > best_match and class_match:
                            best_match = v
                        if v > best:
                            best, best_t = v, k
                    obj = x[b, ch(h, a, 4), j, i]
                    delta[b, ch(h, a, 4), j, i] = h.obj_normalizer * (0 - obj)
                    if best_match > h.ignore_thresh:
                        delta[b, ch(h, a, 4), j, i] = 0
                        fired["ignored"] += 1
                    if best > h.truth_thresh:
                        fired["truth_thresh"] += 1
                        delta[b, ch(h, a, 4), j, i] = h.obj_normalizer * (1 - obj)
                        delta_class(b, a, j, i, valid[best_t][0])
                        delta_box(b, a, n, j, i, tuple(valid[best_t][1:]))
        for cls, *t in valid:
            i, j = int(t[0] * gw), int(t[1] * gh)
            shape = [iou((0, 0, t[2], t[3]), (0, 0, aw / net_w, ah / net_h)) for aw, ah in anchors]
            best_n = max(range(len(anchors)), key=lambda n: (shape[n], -n))
            for n in range(len(anchors)):
                extra = n != best_n and h.iou_thresh < 1 and shape[n] > h.iou_thresh
                if n in h.mask and (n == best_n or extra):
                    a = h.mask.index(n)
                    delta_box(b, a, n, j, i, tuple(t))
                    delta[b, ch(h, a, 4), j, i] = h.obj_normalizer * (1 - x[b, ch(h, a, 4), j, i])
                    delta_class(b, a, j, i, cls)
        if h.iou_thresh < 1:  # averages_yolo_deltas
            for a in range(len(h.mask)):
                cells = delta[b, ch(h, a, 4)] != 0
                count = (delta[b, ch(h, a, 5) : ch(h, a, 5 + c)] > 0).sum(0).clamp_min(1)
                delta[b, ch(h, a, 0) : ch(h, a, 4)] /= torch.where(cells, count, 1)
    return delta, fired


# Per image. Two truths on one cell and anchor (classes 0 and 2); one whose best anchor (0) is
# not in the mask below; one with a class id the cfg does not have.
BUSY_TRUTHS: list[list[Truth]] = [
    [(0, 0.3, 0.3, 0.4, 0.35), (2, 0.35, 0.4, 0.4, 0.3), (1, 0.8, 0.6, 0.2, 0.25)],
    [(1, 0.6, 0.2, 0.5, 0.4), (5, 0.5, 0.5, 0.3, 0.3), (2, 0.15, 0.85, 0.3, 0.4)],
]


def busy_case(**kw: Any) -> tuple[Head, torch.Tensor, list[list[float]]]:
    """A 4x4-grid head (anchors 1 and 2 of three, 3 classes, scale_x_y 1.05) over 2 images with
    BUSY_TRUTHS, random outputs, and exact predictions of two truths planted on the anchor not
    responsible for each, so that the ignore and truth_thresh branches fire."""
    anchors = [(6, 8), (10, 12), (16, 14)]
    h = head(anchors, [1, 2], classes=3, scale_x_y=1.05, obj_normalizer=1.5, **kw)
    out = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(3)) * 0.7
    for b, t, a in [(0, BUSY_TRUTHS[0][0], 1), (1, BUSY_TRUTHS[1][0], 0)]:
        _, cx, cy, w, hh = t
        col, row = int(cx * 4), int(cy * 4)
        sig = (torch.tensor([cx * 4 - col, cy * 4 - row]) + 0.025) / 1.05
        aw, ah = anchors[h.mask[a]]
        wh = torch.tensor([math.log(w * 32 / aw), math.log(hh * 32 / ah)])
        out[b, ch(h, a, 0) : ch(h, a, 4), row, col] = torch.cat((torch.logit(sig), wh))
        out[b, ch(h, a, 5) : ch(h, a, 8), row, col] = 0.0
    targets = [target(b, *t) for b, image in enumerate(BUSY_TRUTHS) for t in image]
    return h, out, targets


@pytest.mark.parametrize(
    ("iou_thresh", "truth_thresh"), [(1.0, 1.0), (0.5, 1.0), (0.3, 0.7)], ids=str
)
def test_gradient_matches_darknets_loops(iou_thresh: float, truth_thresh: float) -> None:
    h, out, targets = busy_case(iou_thresh=iou_thresh, truth_thresh=truth_thresh)
    _, (g,) = run([h], [out], targets)
    delta, fired = darknet_delta(out, h, BUSY_TRUTHS)
    assert fired["ignored"] > 0
    assert fired["truth_thresh"] > 0 or truth_thresh == 1
    assert torch.allclose(g.double(), -delta / 2, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["mse", "ciou"])
def test_cuda_matches_cpu_without_host_sync(kind: str) -> None:
    h, out, targets = busy_case(iou_thresh=0.3, truth_thresh=0.7, iou_loss=kind, max_delta=0.5)
    cpu, (cpu_grad,) = run([h], [out], targets)
    loss_fn = YoloLoss([replace(h, anchors=h.anchors.cuda())])
    leaf, t = out.cuda().requires_grad_(), torch.tensor(targets).cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        result = loss_fn([leaf], t, IMG)
        result.loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert leaf.grad is not None
    assert result.loss.item() == pytest.approx(cpu.loss.item(), rel=1e-5)
    assert result.num_positives.item() == cpu.num_positives.item()
    assert torch.allclose(leaf.grad.cpu(), cpu_grad, rtol=1e-4, atol=1e-6)
