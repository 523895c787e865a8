"""The loss of darknet's ``[yolo]`` heads, computed the way AlexeyAB's ``yolo_layer.c`` computes it.

Darknet never writes its loss down: each head fills a ``delta`` buffer (target minus output) and
backpropagates it unchanged. :class:`YoloLoss` is a loss whose gradient with respect to each raw
head output is ``-delta / B``, darknet's delta divided by the number of images, built from tensor
operations over all truths and grid cells at once. The exact terms, their normalisation and
every deliberate difference from darknet are in docs/loss.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import complete_box_iou_loss, distance_box_iou_loss, generalized_box_iou_loss

__all__ = ["IOU_LOSSES", "LossOutput", "YoloHead", "YoloLoss"]

IOU_LOSSES: tuple[str, ...] = ("mse", "giou", "diou", "ciou")

# torchvision's ``1 - xIoU`` losses on (x1, y1, x2, y2) boxes, darknet's iou_loss kinds.
_XIOU_LOSSES: dict[str, Callable[..., Tensor]] = {
    "giou": generalized_box_iou_loss,
    "diou": distance_box_iou_loss,
    "ciou": complete_box_iou_loss,
}

# Darknet ignores a prediction only if one of its class probabilities exceeds 0.25
# (compare_yolo_class); sigmoid(z) > 0.25 is z > -ln 3, so no sigmoid is needed.
_CLASS_MATCH_LOGIT = -math.log(3.0)


class YoloHead(Protocol):
    """What the loss reads from a ``[yolo]`` head (``ae_model.layers.YoloLayer``)."""

    @property
    def anchors(self) -> Tensor:
        """``(num, 2)`` width and height in input pixels of all anchors of the layer."""

    @property
    def mask(self) -> Sequence[int]:
        """Indices into ``anchors`` of the ``A`` anchors this head predicts with."""

    @property
    def classes(self) -> int: ...
    @property
    def ignore_thresh(self) -> float: ...
    @property
    def truth_thresh(self) -> float: ...
    @property
    def iou_thresh(self) -> float: ...
    @property
    def scale_x_y(self) -> float: ...
    @property
    def iou_loss(self) -> str: ...
    @property
    def iou_normalizer(self) -> float: ...
    @property
    def cls_normalizer(self) -> float: ...
    @property
    def obj_normalizer(self) -> float: ...
    @property
    def max_delta(self) -> float: ...
    @property
    def label_smooth_eps(self) -> float: ...


@dataclass(frozen=True)
class LossOutput:
    """The loss of one batch: summed over heads, predictions and truths, divided by ``B``.

    Only ``loss`` carries a graph; every other field is a detached 0-dim tensor on the outputs'
    device, so building it needs no host sync (call ``.item()`` when logging). The diagnostics
    are the averages darknet prints, taken over the (truth, anchor) assignments of all heads.
    """

    loss: Tensor
    box: Tensor
    obj: Tensor
    cls: Tensor
    num_targets: Tensor
    """Truths used: class id in range, positive width and height, image index in the batch."""
    num_positives: Tensor
    """(truth, anchor) assignments: best anchors plus ``iou_thresh`` extras, over all heads."""
    avg_iou: Tensor
    """Mean IoU between assigned predictions and their truths."""
    recall50: Tensor
    """Fraction of assignments whose prediction has IoU > 0.5 with its truth."""
    recall75: Tensor
    """Fraction of assignments whose prediction has IoU > 0.75 with its truth."""
    avg_obj: Tensor
    """Mean objectness probability of assigned predictions."""
    avg_any_obj: Tensor
    """Mean objectness probability of every prediction of every head."""
    avg_cls: Tensor
    """Mean probability of the true class at assigned predictions."""


@dataclass(frozen=True)
class _Truths:
    """The ground truth of a batch, every row safe to index with.

    Invalid rows stay (dropping them would make a shape depend on data, a host sync): ``valid``
    is false and their indices and box hold harmless stand-ins.
    """

    image: Tensor  # (N,) long, in [0, B)
    cls: Tensor  # (N,) long, in [0, C)
    box: Tensor  # (N, 4) normalised cx, cy, w, h
    valid: Tensor  # (N,) bool


@dataclass(frozen=True)
class _Pairs:
    """Candidate (truth, prediction) pairs; ``weight`` is 1 for a positive pair, else 0."""

    image: Tensor  # (M,) long
    anchor: Tensor  # (M,) long, position in the head's mask
    row: Tensor  # (M,) long
    col: Tensor  # (M,) long
    truth: Tensor  # (M,) long, row of _Truths
    weight: Tensor  # (M,) float

    @staticmethod
    def cat(first: _Pairs, second: _Pairs) -> _Pairs:
        return _Pairs(
            *(torch.cat((getattr(first, f.name), getattr(second, f.name))) for f in fields(_Pairs))
        )


@dataclass(frozen=True)
class _Sums:
    """Unnormalised loss terms and diagnostic sums of one or more heads (0-dim tensors)."""

    box: Tensor
    obj: Tensor
    cls: Tensor
    positives: Tensor
    iou: Tensor
    recall50: Tensor
    recall75: Tensor
    obj_at_positives: Tensor
    cls_at_positives: Tensor
    any_obj: Tensor

    def __add__(self, other: _Sums) -> _Sums:
        return _Sums(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(_Sums)))


class YoloLoss(nn.Module):
    """Darknet's training loss over all ``[yolo]`` heads of a network.

    The heads are read, not owned: they are not registered as submodules, so the loss has no
    state of its own and computes on whatever device the outputs are on.

    Args:
        heads: the ``[yolo]`` heads in cfg order (``Darknet.heads``), one per network output.
    """

    def __init__(self, heads: Sequence[YoloHead]) -> None:
        super().__init__()
        if not heads:
            raise ValueError("YoloLoss needs at least one [yolo] head; the cfg has none")
        classes = {h.classes for h in heads}
        if len(classes) != 1:
            raise ValueError(f"all [yolo] heads must have the same classes=, got {sorted(classes)}")
        for k, head in enumerate(heads):
            if head.iou_loss not in IOU_LOSSES:
                raise ValueError(
                    f"[yolo] head {k}: iou_loss={head.iou_loss!r} is not one of {IOU_LOSSES}"
                )
            num = head.anchors.shape[0]
            if not head.mask or not all(0 <= m < num for m in head.mask):
                raise ValueError(
                    f"[yolo] head {k}: mask={list(head.mask)} must name anchors 0..{num - 1}"
                )
        self.heads: tuple[YoloHead, ...] = tuple(heads)
        self.classes: int = classes.pop()

    def forward(
        self,
        outputs: Sequence[Tensor],
        targets: Tensor,
        img_size: tuple[int, int],
        seen: int = 0,
    ) -> LossOutput:
        """Loss of one batch.

        Args:
            outputs: raw head outputs in cfg order, each ``(B, A*(5+C), h, w)`` in darknet's
                channel layout (per anchor: tx, ty, tw, th, objectness, C class logits).
            targets: ``(N, 6)``: image index, class id, x1, y1, x2, y2, coordinates normalised
                to [0, 1] in the network input. Rows with a class id outside ``[0, C)``, an
                image index outside ``[0, B)`` or no area are skipped, as darknet skips them.
            img_size: ``(W, H)`` of the network input as fed (multi-scale changes it).
            seen: images trained on before this batch. [yolo] has no warm-up term, so it is
                unused; :class:`ae_model.region_loss.RegionLoss` takes the same call.

        Returns:
            :class:`LossOutput`; ``loss`` is the scalar to backpropagate.
        """
        if len(outputs) != len(self.heads):
            raise ValueError(f"got {len(outputs)} outputs for {len(self.heads)} [yolo] heads")
        batch = outputs[0].shape[0]
        truths = _prepare_truths(targets.to(outputs[0].device, torch.float32), batch, self.classes)
        # Computed in float32 whatever autocast produced: the sums span every prediction.
        per_head = [
            _head_loss(out.float(), head, truths, img_size)
            for out, head in zip(outputs, self.heads, strict=True)
        ]
        sums = per_head[0]
        for more in per_head[1:]:
            sums = sums + more
        num_predictions = sum(out.numel() // (5 + self.classes) for out in outputs)
        count = sums.positives.clamp_min(1)
        return LossOutput(
            loss=(sums.box + sums.obj + sums.cls) / batch,
            box=sums.box.detach() / batch,
            obj=sums.obj.detach() / batch,
            cls=sums.cls.detach() / batch,
            num_targets=truths.valid.sum(),
            num_positives=sums.positives.long(),
            avg_iou=sums.iou / count,
            recall50=sums.recall50 / count,
            recall75=sums.recall75 / count,
            avg_obj=sums.obj_at_positives / count,
            avg_any_obj=sums.any_obj / num_predictions,
            avg_cls=sums.cls_at_positives / count,
        )


def _prepare_truths(targets: Tensor, batch: int, classes: int) -> _Truths:
    """Targets ``(N, 6)`` as :class:`_Truths` with cx, cy, w, h boxes."""
    if targets.ndim != 2 or targets.shape[1] != 6:
        raise ValueError(
            "targets must be (N, 6): image index, class id, x1, y1, x2, y2; "
            f"got shape {tuple(targets.shape)}"
        )
    image = targets[:, 0].long()
    cls = targets[:, 1].long()
    x1, y1, x2, y2 = targets[:, 2:].unbind(1)
    box = torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=1)
    valid = (cls >= 0) & (cls < classes) & (image >= 0) & (image < batch)
    valid &= (box[:, 2] > 0) & (box[:, 3] > 0)
    # A stand-in box keeps log(w) and the IoUs of masked-out rows finite.
    box = torch.where(valid[:, None], box, 0.5)
    return _Truths(
        image=image.clamp(0, batch - 1), cls=cls.clamp(0, classes - 1), box=box, valid=valid
    )


def _xy(ref: Tensor, x: float, y: float) -> Tensor:
    """``(2,)`` tensor ``[x, y]`` on ``ref``'s device, filled there (no host-to-device copy)."""
    return torch.stack((ref.new_full((), x), ref.new_full((), y)))


def _cell_offsets(ref: Tensor, gh: int, gw: int) -> Tensor:
    """``(h, w, 2)``: each grid cell's column and row, on ``ref``'s device and dtype."""
    rows = torch.arange(gh, device=ref.device, dtype=ref.dtype)
    cols = torch.arange(gw, device=ref.device, dtype=ref.dtype)
    return torch.stack(torch.meshgrid(cols, rows, indexing="xy"), dim=-1)


def _head_loss(out: Tensor, head: YoloHead, truths: _Truths, img_size: tuple[int, int]) -> _Sums:
    """Unnormalised loss terms and diagnostics of one head; ``out`` is ``(B, A*(5+C), h, w)``."""
    batch, channels, gh, gw = out.shape
    num_anchors, classes = len(head.mask), head.classes
    if channels != num_anchors * (5 + classes):
        raise ValueError(
            f"[yolo] head output has {channels} channels; mask={list(head.mask)} and "
            f"classes={classes} need {num_anchors * (5 + classes)}"
        )
    net, grid = _xy(out, *img_size), _xy(out, gw, gh)
    all_anchors = head.anchors.to(out)  # (num, 2) pixels
    # One row per mask entry, sliced on the anchors' device: no index tensor to upload.
    anchors = torch.stack([all_anchors[m] for m in head.mask])  # (A, 2)
    pred = out.view(batch, num_anchors, 5 + classes, gh, gw).permute(0, 1, 3, 4, 2)
    obj_logit, cls_logit = pred[..., 4], pred[..., 5:]  # (B, A, h, w), (B, A, h, w, C)

    with torch.no_grad():
        offset = _cell_offsets(out, gh, gw)
        boxes = _decode(pred[..., :4], offset, anchors[:, None, None], grid, net, head.scale_x_y)
        class_match = (cls_logit > _CLASS_MATCH_LOGIT).any(dim=-1)
        ignore, thresh_pairs = _match_predictions(boxes, class_match, head, truths)
        assigned = _assign(head, truths, all_anchors / net, gh, gw)
    pairs = assigned if thresh_pairs is None else _Pairs.cat(assigned, thresh_pairs)

    positive, cls_hit = _mark_positives(pairs, truths.cls, obj_logit.shape, classes)

    obj_target = positive.to(out.dtype)
    obj_bce = F.binary_cross_entropy_with_logits(obj_logit, obj_target, reduction="none")
    obj = head.obj_normalizer * torch.where(positive | ~ignore, obj_bce, 0).sum()

    eps = head.label_smooth_eps
    cls_target = cls_hit.to(out.dtype) * (1 - eps) + 0.5 * eps  # darknet's label smoothing
    cls_bce = F.binary_cross_entropy_with_logits(cls_logit, cls_target, reduction="none")
    cls = head.cls_normalizer * torch.where(positive[..., None], cls_bce, 0).sum()

    weight = pairs.weight
    if head.iou_thresh < 1:
        # averages_yolo_deltas: with iou_thresh on, darknet divides a cell's summed box delta
        # by the number of classes assigned to the cell.
        per_cell = cls_hit.sum(dim=-1)
        weight = weight / per_cell[pairs.image, pairs.anchor, pairs.row, pairs.col].clamp_min(1)
    pair_offset = torch.stack((pairs.col, pairs.row), dim=-1).to(out.dtype)
    raw = pred[pairs.image, pairs.anchor, pairs.row, pairs.col, :4]  # (M, 4)
    truth_box, pair_anchors = truths.box[pairs.truth], anchors[pairs.anchor]

    def pair_loss(r: Tensor) -> Tensor:
        return _box_loss(r, truth_box, pair_anchors, pair_offset, grid, net, head)

    if head.iou_loss == "mse":
        box = (weight * pair_loss(raw)).sum()
    else:
        box = _IouDelta.apply(raw, weight, pair_loss, head.max_delta)

    with torch.no_grad():
        a = assigned
        w = a.weight
        at = pred[a.image, a.anchor, a.row, a.col]  # (N*A, 5+C)
        at_offset = torch.stack((a.col, a.row), dim=-1).to(out.dtype)
        at_box = _decode(at[:, :4], at_offset, anchors[a.anchor], grid, net, head.scale_x_y)
        iou = _iou_cxcywh(at_box, truths.box[a.truth])
        true_cls = at[:, 5:].gather(1, truths.cls[a.truth, None]).squeeze(1)
        diagnostics = {
            "positives": w.sum(),
            "iou": (w * iou).sum(),
            "recall50": (w * (iou > 0.5)).sum(),
            "recall75": (w * (iou > 0.75)).sum(),
            "obj_at_positives": (w * at[:, 4].sigmoid()).sum(),
            "cls_at_positives": (w * true_cls.sigmoid()).sum(),
            "any_obj": obj_logit.sigmoid().sum(),
        }
    return _Sums(box=box, obj=obj, cls=cls, **diagnostics)


def _mark_positives(
    pairs: _Pairs, truth_cls: Tensor, shape: torch.Size, classes: int
) -> tuple[Tensor, Tensor]:
    """Positive predictions and their classes.

    Args:
        pairs: the head's candidate pairs.
        truth_cls: ``(N,)`` class of each truth.
        shape: ``(B, A, h, w)`` of the head's predictions.
        classes: number of classes ``C``.

    Returns:
        ``positive`` ``(B, A, h, w)`` bool and ``cls_hit`` ``(B, A, h, w, C)`` bool: the classes
        of the truths paired with each positive, the union when several share it, as darknet's
        delta_yolo_class makes it.
    """
    # index_put with accumulate=False: pairs that are not positive write to a spare last cell,
    # so every write stores True and the order of duplicate writes cannot matter.
    batch, num_anchors, gh, gw = shape
    num_cells = batch * num_anchors * gh * gw
    cell = ((pairs.image * num_anchors + pairs.anchor) * gh + pairs.row) * gw + pairs.col
    cell = torch.where(pairs.weight > 0, cell, num_cells)
    written = torch.ones_like(cell, dtype=torch.bool)
    positive = torch.zeros(num_cells + 1, dtype=torch.bool, device=cell.device)
    positive.index_put_((cell,), written)
    cls_hit = torch.zeros(num_cells + 1, classes, dtype=torch.bool, device=cell.device)
    cls_hit.index_put_((cell, truth_cls[pairs.truth]), written)
    return positive[:num_cells].view(shape), cls_hit[:num_cells].view(*shape, classes)


def _match_predictions(
    boxes: Tensor, class_match: Tensor, head: YoloHead, truths: _Truths
) -> tuple[Tensor, _Pairs | None]:
    """Darknet's loop over predictions: which to ignore, which ``truth_thresh`` makes positive.

    Args:
        boxes: ``(B, A, h, w, 4)`` decoded predictions, normalised cx, cy, w, h.
        class_match: ``(B, A, h, w)`` bool, some class probability above 0.25.
        head: the head (``ignore_thresh``, ``truth_thresh``).
        truths: the batch's truths.

    Returns:
        ``ignore`` ``(B, A, h, w)`` bool (no objectness loss unless positive), and the pairs of
        predictions whose best IoU exceeds ``truth_thresh`` with that best truth (first one on a
        tie, like darknet), or None when ``truth_thresh >= 1`` makes that impossible.
    """
    batch, _, gh, gw = boxes.shape[:4]
    flat = boxes.reshape(batch, -1, 4)  # (B, P): P = A*h*w
    iou, best = _truth_ious(flat, truths)
    ignore = class_match & (best > head.ignore_thresh).view(class_match.shape)
    if head.truth_thresh >= 1:
        return ignore, None

    num_truths, num_preds = iou.shape
    truth_id = torch.arange(num_truths, device=iou.device)[:, None].expand_as(iou)
    best_of_truth = best[truths.image]  # (N, P): best IoU of each truth's prediction
    candidate = torch.where(iou == best_of_truth, truth_id, num_truths)
    first_best = torch.full_like(flat[..., 0], num_truths, dtype=torch.long)
    by_image = truths.image[:, None].expand_as(iou)
    first_best = first_best.scatter_reduce(0, by_image, candidate, "amin")
    is_pair = (first_best[truths.image] == truth_id) & (best_of_truth > head.truth_thresh)
    pred_id = torch.arange(num_preds, device=iou.device).repeat(num_truths)
    truth = truth_id.flatten()
    return ignore, _Pairs(
        image=truths.image[truth],
        anchor=pred_id // (gh * gw),
        row=pred_id // gw % gh,
        col=pred_id % gw,
        truth=truth,
        weight=is_pair.flatten().to(iou.dtype),
    )


def _truth_ious(flat: Tensor, truths: _Truths) -> tuple[Tensor, Tensor]:
    """IoUs of the truths with the predictions ``flat`` ``(B, P, 4)`` (normalised cx, cy, w, h).

    Returns ``iou`` ``(N, P)``: each truth against every prediction of its own image (0 for
    invalid truths; no padding to a per-image maximum count), and ``best`` ``(B, P)``: each
    prediction's best IoU with any truth of its image, 0 when it has none.
    """
    iou = _iou_cxcywh(flat[truths.image], truths.box[:, None, :])
    iou = torch.where(truths.valid[:, None], iou, 0)
    by_image = truths.image[:, None].expand_as(iou)
    # Darknet's running best starts at 0, so a zero-initialised max matches it.
    best = flat.new_zeros(flat.shape[:2]).scatter_reduce(0, by_image, iou, "amax")
    return iou, best


def _assign(head: YoloHead, truths: _Truths, anchors: Tensor, gh: int, gw: int) -> _Pairs:
    """Darknet's loop over truths: the cell and anchors of this head responsible for each truth.

    A truth belongs to the cell holding its centre and to the anchor, among all anchors of the
    layer, whose shape (a box centred on the truth's) overlaps it most; that anchor counts only
    if this head's mask has it. With ``iou_thresh < 1``, every anchor of the mask whose shape
    IoU exceeds ``iou_thresh`` is responsible too.

    Args:
        head: the head (``mask``, ``iou_thresh``).
        truths: the batch's ``N`` truths.
        anchors: ``(num, 2)`` all anchors of the layer, normalised by the input size.
        gh: grid height.
        gw: grid width.

    Returns:
        ``N*A`` pairs, truth-major: truth ``n`` with each anchor of the mask.
    """
    wh = truths.box[:, 2:]
    inter = torch.minimum(wh[:, None], anchors[None]).prod(dim=-1)
    shape_iou = inter / (wh.prod(dim=-1)[:, None] + anchors.prod(dim=-1)[None] - inter)  # (N, num)
    best = shape_iou.argmax(dim=1)  # first maximum, as darknet's strict '>' scan
    chosen = torch.stack([best == m for m in head.mask], dim=1)  # (N, A)
    if head.iou_thresh < 1:
        chosen |= torch.stack([shape_iou[:, m] > head.iou_thresh for m in head.mask], dim=1)
    chosen &= truths.valid[:, None]
    # int() in darknet truncates; a centre exactly on the far edge stays in the last cell.
    col = (truths.box[:, 0] * gw).long().clamp(0, gw - 1)
    row = (truths.box[:, 1] * gh).long().clamp(0, gh - 1)
    num_truths, num_anchors = chosen.shape
    truth = torch.arange(num_truths, device=chosen.device)[:, None].expand_as(chosen).flatten()
    return _Pairs(
        image=truths.image[truth],
        anchor=torch.arange(num_anchors, device=chosen.device).repeat(num_truths),
        row=row[truth],
        col=col[truth],
        truth=truth,
        weight=chosen.flatten().to(truths.box.dtype),
    )


def _decode(
    raw: Tensor, offset: Tensor, anchors: Tensor, grid: Tensor, net: Tensor, scale_x_y: float
) -> Tensor:
    """Darknet's get_yolo_box: raw ``(..., 4)`` tx, ty, tw, th to normalised cx, cy, w, h.

    ``offset`` (cell column, row), ``anchors`` (pixels), ``grid`` and ``net`` (both ``(2,)``
    width, height) broadcast against ``(..., 2)``.
    """
    xy = (scale_x_y * raw[..., :2].sigmoid() - 0.5 * (scale_x_y - 1) + offset) / grid
    wh = raw[..., 2:].exp() * anchors / net
    return torch.cat((xy, wh), dim=-1)


def _darknet_chain(value: Tensor, raw: Tensor, slope: Tensor | float) -> Tensor:
    """``value`` in the forward pass; in the backward pass ``d value / d raw`` is ``slope``.

    Darknet backpropagates its box deltas to the raw outputs without the sigmoid's derivative
    (and, for w and h, with ``exp(t)`` but not the anchor's scale); this reproduces that.
    """
    return value.detach() + slope * (raw - raw.detach())


def _box_loss(
    raw: Tensor,
    truth: Tensor,
    anchors: Tensor,
    offset: Tensor,
    grid: Tensor,
    net: Tensor,
    head: YoloHead,
) -> Tensor:
    """Box loss of each pair, darknet's delta_yolo_box.

    Args:
        raw: ``(M, 4)`` raw tx, ty, tw, th of the paired predictions.
        truth: ``(M, 4)`` their truths, normalised cx, cy, w, h.
        anchors: ``(M, 2)`` their anchors, pixels.
        offset: ``(M, 2)`` their cell column and row.
        grid: ``(2,)`` grid width and height.
        net: ``(2,)`` input width and height.
        head: the head (``iou_loss``, ``iou_normalizer``, ``scale_x_y``).

    Returns:
        ``(M,)`` loss per pair. ``mse``: ``0.5 * iou_normalizer * (2 - w*h)`` times the squared
        error of (sigmoid-space x, y; raw w, h) against darknet's targets; otherwise
        ``iou_normalizer * (1 - xIoU)``. Gradients follow darknet's chain (:func:`_darknet_chain`).
    """
    s = head.scale_x_y
    xy_act = s * raw[:, :2].sigmoid() - 0.5 * (s - 1)
    if head.iou_loss == "mse":
        xy = _darknet_chain(xy_act, raw[:, :2], 1.0)
        target_xy = truth[:, :2] * grid - offset
        target_wh = torch.log(truth[:, 2:] * net / anchors)
        scale = 2 - truth[:, 2] * truth[:, 3]
        squared = (xy - target_xy).square() + (raw[:, 2:] - target_wh).square()
        return 0.5 * head.iou_normalizer * scale * squared.sum(dim=1)
    xy = _darknet_chain((xy_act + offset) / grid, raw[:, :2], 1.0)
    exp_wh = raw[:, 2:].exp()
    wh = _darknet_chain(exp_wh * anchors / net, raw[:, 2:], exp_wh.detach())
    pred_xyxy = torch.cat((xy - wh / 2, xy + wh / 2), dim=1)
    truth_xyxy = torch.cat((truth[:, :2] - truth[:, 2:] / 2, truth[:, :2] + truth[:, 2:] / 2), 1)
    return head.iou_normalizer * _XIOU_LOSSES[head.iou_loss](pred_xyxy, truth_xyxy)


class _IouDelta(torch.autograd.Function):
    """Weighted sum of xIoU box losses whose per-pair gradient is darknet's: NaN and inf set to 0
    (fix_nan_inf) and each component clipped to ``[-max_delta, max_delta]``.

    The clip applies to the gradient of the unnormalised per-pair loss, before the weights, the
    division by ``B`` and any loss scaling (AMP) upstream, as darknet clips each delta.
    """

    @staticmethod
    def forward(
        ctx: Any,
        raw: Tensor,
        weight: Tensor,
        pair_loss: Callable[[Tensor], Tensor],
        max_delta: float,
    ) -> Tensor:
        ctx.save_for_backward(raw, weight)
        ctx.pair_loss, ctx.max_delta = pair_loss, max_delta
        return (weight * pair_loss(raw)).sum()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        raw, weight = ctx.saved_tensors
        with torch.enable_grad():
            leaf = raw.detach().requires_grad_()
            (delta,) = torch.autograd.grad(ctx.pair_loss(leaf).sum(), leaf)
        delta = torch.nan_to_num(delta, nan=0.0, posinf=0.0, neginf=0.0)
        delta = delta.clamp(-ctx.max_delta, ctx.max_delta)
        return grad * weight[:, None] * delta, None, None, None


def _iou_cxcywh(a: Tensor, b: Tensor) -> Tensor:
    """IoU of boxes ``(..., 4)`` cx, cy, w, h, broadcast elementwise (not all pairs)."""
    a_min, a_max = a[..., :2] - a[..., 2:] / 2, a[..., :2] + a[..., 2:] / 2
    b_min, b_max = b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2
    inter = (torch.minimum(a_max, b_max) - torch.maximum(a_min, b_min)).clamp_min(0).prod(dim=-1)
    union = a[..., 2:].prod(dim=-1) + b[..., 2:].prod(dim=-1) - inter
    return inter / union
