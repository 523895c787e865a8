"""Darknet's [region] (YOLOv2) loss: hand-worked values, gradients, assignment, priors."""

import math
from dataclasses import dataclass, replace
from typing import Any

import pytest
import torch

from ae_model.darknet import Darknet
from ae_model.region_loss import PRIOR_IMAGES, RegionLoss
from ae_model.train import build_loss

LN3 = math.log(3.0)
IMG = (64, 64)  # unused by the [region] loss beyond the call; the grid is the output's


@dataclass
class Head:
    """The attributes of a [region] head the loss reads."""

    anchors: torch.Tensor
    num: int = 2
    classes: int = 3
    softmax: bool = True
    rescore: bool = False
    bias_match: bool = True
    object_scale: float = 5.0
    noobject_scale: float = 1.0
    class_scale: float = 1.0
    coord_scale: float = 1.0
    thresh: float = 1.0


def head(**kw: Any) -> Head:
    # Grid-cell anchors: on a 2x2 grid, (1, 1) is half the image, (1, 0.5) half by a quarter.
    return Head(torch.tensor([[1.0, 1.0], [1.0, 0.5]]), **kw)


def ch(h: Head, anchor: int, k: int) -> int:
    """Channel of entry ``k`` (0..3 box, 4 objectness, 5+ classes) of ``anchor``."""
    return anchor * (5 + h.classes) + k


def target(image: int, cls: int, cx: float, cy: float, w: float, h: float) -> list[float]:
    return [image, cls, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def run(
    h: Head, out: torch.Tensor, targets: list[list[float]], seen: int = PRIOR_IMAGES
) -> tuple[Any, torch.Tensor]:
    """Loss and its gradient with respect to the raw output."""
    leaf = out.clone().requires_grad_()
    t = torch.tensor(targets, dtype=torch.float32).reshape(-1, 6)
    result = RegionLoss([h])([leaf], t, IMG, seen)
    result.loss.backward()
    assert leaf.grad is not None
    return result, leaf.grad


# A truth centred at (0.3, 0.7), half the width and a quarter of the height, class 2: on the 2x2
# grid it lands in column 0, row 1, and its shape matches anchor 1 exactly.
TRUTH = target(0, 2, 0.3, 0.7, 0.5, 0.25)


def test_hand_worked_loss_of_one_truth() -> None:
    h = head()
    out = torch.zeros(1, 2 * (5 + 3), 2, 2)  # sigmoid 0.5 everywhere, uniform softmax
    result, grad = run(h, out, [TRUTH])
    # Box: targets tx = 0.3*2 - 0 = 0.6, ty = 0.7*2 - 1 = 0.4, tw = log(0.5*2/1) = 0,
    # th = log(0.25*2/0.5) = 0; half squared error of sigmoid x, y and raw w, h.
    box = 0.5 * (0.1**2 + 0.1**2)
    # Objectness: the positive towards 1 (object_scale 5), the 7 others towards 0 (thresh 1
    # ignores none); half squared error on the probability.
    obj = 0.5 * 5 * 0.5**2 + 7 * 0.5 * 0.5**2
    cls = LN3  # softmax cross-entropy of a uniform prediction over 3 classes
    assert result.box.item() == pytest.approx(box)
    assert result.obj.item() == pytest.approx(obj)
    assert result.cls.item() == pytest.approx(cls)
    assert result.loss.item() == pytest.approx(box + obj + cls)
    assert result.num_targets.item() == 1 and result.num_positives.item() == 1
    # Darknet's deltas, as gradients (-delta): x, y through the sigmoid's slope 0.25.
    row, col = 1, 0
    assert grad[0, ch(h, 1, 0), row, col].item() == pytest.approx((0.5 - 0.6) * 0.25)
    assert grad[0, ch(h, 1, 1), row, col].item() == pytest.approx((0.5 - 0.4) * 0.25)
    assert grad[0, ch(h, 1, 4), row, col].item() == pytest.approx(5 * (0.5 - 1) * 0.25)
    assert grad[0, ch(h, 0, 4), row, col].item() == pytest.approx(0.5 * 0.25)
    # Softmax classes: p - onehot at the positive, nothing anywhere else.
    cls_grad = grad[0, ch(h, 1, 5) : ch(h, 1, 8), row, col]
    assert cls_grad.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3 - 1])
    assert grad[0, ch(h, 0, 5) : ch(h, 0, 8)].abs().sum().item() == 0


def test_predictions_overlapping_a_truth_above_thresh_are_not_negatives() -> None:
    out = torch.zeros(1, 2 * (5 + 3), 2, 2)
    # Anchor 0's box in the truth's cell (centre (0.25, 0.75), 0.5 x 0.5) overlaps the truth with
    # IoU 0.1125 / 0.2625 = 0.43; the other cells' boxes overlap it by at most 0.16.
    loose, _ = run(head(thresh=0.5), out, [TRUTH])
    tight, grad = run(head(thresh=0.4), out, [TRUTH])
    assert loose.obj.item() - tight.obj.item() == pytest.approx(0.5 * 0.5**2)
    assert grad[0, ch(head(), 0, 4), 1, 0].item() == 0


def test_rescore_trains_objectness_towards_the_iou() -> None:
    out = torch.zeros(1, 2 * (5 + 3), 2, 2)
    plain, _ = run(head(), out, [TRUTH])
    rescored, _ = run(head(rescore=True), out, [TRUTH])
    # The positive's box: centre (0.25, 0.75), 0.5 x 0.25, against the truth's (0.3, 0.7).
    iou = (0.45 * 0.2) / (0.125 + 0.125 - 0.45 * 0.2)
    assert rescored.avg_iou.item() == pytest.approx(iou)
    expected = plain.obj.item() - 0.5 * 5 * 0.5**2 + 0.5 * 5 * (0.5 - iou) ** 2
    assert rescored.obj.item() == pytest.approx(expected)


def test_logistic_classes_use_binary_cross_entropy() -> None:
    out = torch.zeros(1, 2 * (5 + 3), 2, 2)
    result, grad = run(head(softmax=False), out, [TRUTH])
    assert result.cls.item() == pytest.approx(3 * math.log(2.0))
    cls_grad = grad[0, ch(head(), 1, 5) : ch(head(), 1, 8), 1, 0]
    assert cls_grad.tolist() == pytest.approx([0.5, 0.5, -0.5])


def test_anchor_choice_by_prediction_without_bias_match() -> None:
    h = head(bias_match=False)
    out = torch.zeros(1, 2 * (5 + 3), 2, 2)
    # Make anchor 0 predict the truth's shape in its cell: exp(tw) = 1, exp(th) = 0.5.
    out[0, ch(h, 0, 3), 1, 0] = math.log(0.5)
    _, grad = run(h, out, [TRUTH])
    assert grad[0, ch(h, 0, 4), 1, 0].item() < 0  # anchor 0 is now the positive
    assert grad[0, ch(h, 1, 4), 1, 0].item() > 0
    _, grad = run(replace(h, bias_match=True), out, [TRUTH])
    assert grad[0, ch(h, 1, 4), 1, 0].item() < 0  # by anchor shapes, anchor 1 still


def test_prior_term_pulls_towards_anchors_early_in_training() -> None:
    h = head()
    out = torch.zeros(1, 2 * (5 + 3), 2, 2)
    out[:, [ch(h, a, k) for a in range(2) for k in (2, 3)]] = 0.1  # tw = th = 0.1 everywhere
    early, grad = run(h, out, [TRUTH], seen=PRIOR_IMAGES - 1)
    late, late_grad = run(h, out, [TRUTH], seen=PRIOR_IMAGES)
    # 7 predictions that are not positive, each 0.5 * 0.01 * (0.1^2 + 0.1^2); x, y sit at 0.5.
    assert early.box.item() - late.box.item() == pytest.approx(7 * 0.5 * 0.01 * 0.02)
    assert grad[0, ch(h, 0, 2), 0, 0].item() == pytest.approx(0.01 * 0.1)
    assert late_grad[0, ch(h, 0, 2), 0, 0].item() == 0


def test_last_truth_on_a_shared_cell_and_anchor_wins() -> None:
    h = head()
    out = torch.randn(1, 2 * (5 + 3), 2, 2, generator=torch.Generator().manual_seed(0))
    other = target(0, 0, 0.35, 0.65, 0.5, 0.25)  # same cell, same anchor, class 0
    both, both_grad = run(h, out, [TRUTH, other])
    alone, alone_grad = run(h, out, [other])
    assert both.num_targets.item() == 2 and both.num_positives.item() == 1
    # Box, objectness and class deltas are those of the last truth alone (thresh 1: no ignores).
    assert (both.box + both.obj + both.cls).item() == pytest.approx(
        (alone.box + alone.obj + alone.cls).item()
    )
    torch.testing.assert_close(both_grad, alone_grad)


def test_invalid_rows_and_other_images_are_skipped() -> None:
    h = head()
    out = torch.zeros(2, 2 * (5 + 3), 2, 2)
    base, _ = run(h, out, [TRUTH])
    bad = [target(0, 7, 0.5, 0.5, 0.2, 0.2), target(5, 0, 0.5, 0.5, 0.2, 0.2)]
    skipped, _ = run(h, out, [TRUTH, *bad, target(0, 1, 0.5, 0.5, 0.0, 0.2)])
    assert skipped.loss.item() == pytest.approx(base.loss.item())
    assert skipped.num_targets.item() == 1
    # The second image's truths touch only the second image.
    second, grad = run(h, out, [TRUTH, target(1, 0, 0.8, 0.2, 0.5, 0.5)])
    assert second.num_positives.item() == 2
    _, first_only = run(h, out, [TRUTH])
    torch.testing.assert_close(grad[0], first_only[0])


def test_no_truths_trains_objectness_down_only() -> None:
    out = torch.zeros(1, 2 * (5 + 3), 2, 2)
    result, grad = run(head(), out, [])
    assert result.box.item() == 0 and result.cls.item() == 0
    assert result.obj.item() == pytest.approx(8 * 0.5 * 0.25)
    assert torch.isfinite(grad).all()


def test_wrong_channel_count_is_refused() -> None:
    with pytest.raises(ValueError, match="need 16"):
        run(head(), torch.zeros(1, 15, 2, 2), [TRUTH])


def test_build_loss_picks_the_loss_of_the_heads() -> None:
    assert isinstance(build_loss(Darknet("yolov2-tiny-small").heads), RegionLoss)
    mixed = Darknet("yolov2-tiny-small").heads + Darknet("yolov3-tiny-small").heads
    with pytest.raises(ValueError, match="1 \\[region\\]"):
        build_loss(mixed)
