"""The loss of darknet's ``[region]`` head (YOLOv2), as AlexeyAB's ``region_layer.c`` computes it.

Like :class:`ae_model.loss.YoloLoss`, :class:`RegionLoss` is a loss whose gradient with respect to
each raw head output is darknet's ``-delta / B``, built from tensor operations over all truths
and cells at once. The terms, and where we differ from darknet, are in docs/loss.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ae_model.loss import (
    LossOutput,
    _cell_offsets,
    _iou_cxcywh,
    _prepare_truths,
    _truth_ious,
    _xy,
)

__all__ = ["PRIOR_IMAGES", "PRIOR_SCALE", "RegionHead", "RegionLoss"]

PRIOR_IMAGES = 12800
"""Darknet pulls every prediction towards its anchor, centred in its cell, while fewer images
than this have been seen (``net.seen < 12800`` in region_layer.c)."""

PRIOR_SCALE = 0.01
"""The scale of that pull: darknet's ``delta_region_box(..., .01)``."""


class RegionHead(Protocol):
    """What the loss reads from a ``[region]`` head (``ae_model.layers.RegionLayer``)."""

    @property
    def anchors(self) -> Tensor:
        """``(num, 2)`` anchor width and height in grid cells."""

    @property
    def num(self) -> int: ...
    @property
    def classes(self) -> int: ...
    @property
    def softmax(self) -> bool: ...
    @property
    def rescore(self) -> bool: ...
    @property
    def bias_match(self) -> bool: ...
    @property
    def object_scale(self) -> float: ...
    @property
    def noobject_scale(self) -> float: ...
    @property
    def class_scale(self) -> float: ...
    @property
    def coord_scale(self) -> float: ...
    @property
    def thresh(self) -> float: ...


class RegionLoss(nn.Module):
    """Darknet's training loss of a network's one ``[region]`` head.

    The head is read, not owned (not a submodule), so the loss has no state of its own.

    Args:
        heads: the network's heads (``Darknet.heads``): exactly one ``[region]`` head.
    """

    def __init__(self, heads: Sequence[RegionHead]) -> None:
        super().__init__()
        if len(heads) != 1:
            raise ValueError(
                f"RegionLoss trains a network with exactly one [region] head; got {len(heads)}"
            )
        head = heads[0]
        if head.anchors.shape != (head.num, 2):
            raise ValueError(
                f"[region] anchors have shape {tuple(head.anchors.shape)}; num={head.num} "
                f"needs ({head.num}, 2)"
            )
        self.head: RegionHead = head
        self.classes: int = head.classes

    def forward(
        self,
        outputs: Sequence[Tensor],
        targets: Tensor,
        img_size: tuple[int, int],
        seen: int = 0,
    ) -> LossOutput:
        """Loss of one batch.

        Args:
            outputs: one raw head output ``(B, num*(5+C), h, w)`` in darknet's channel layout
                (per anchor: tx, ty, tw, th, objectness, C class logits).
            targets: ``(N, 6)``: image index, class id, x1, y1, x2, y2 normalised to [0, 1];
                rows with a class id outside ``[0, C)``, an image index outside ``[0, B)`` or
                no area are skipped.
            img_size: ``(W, H)`` of the network input. The [region] head works in grid
                cells, so only the output's own size matters; taken for the common call.
            seen: images trained on before this batch; below :data:`PRIOR_IMAGES` every
                prediction that is not a positive is also pulled towards its anchor prior.

        Returns:
            :class:`ae_model.loss.LossOutput`; ``loss`` is the scalar to backpropagate.
        """
        if len(outputs) != 1:
            raise ValueError(f"got {len(outputs)} outputs for one [region] head")
        head = self.head
        out = outputs[0].float()  # float32 whatever autocast produced: the sums span the map
        batch, channels, gh, gw = out.shape
        num, classes = head.num, head.classes
        if channels != num * (5 + classes):
            raise ValueError(
                f"[region] head output has {channels} channels; num={num} and "
                f"classes={classes} need {num * (5 + classes)}"
            )
        truths = _prepare_truths(targets.to(out.device, torch.float32), batch, classes)
        pred = out.view(batch, num, 5 + classes, gh, gw).permute(0, 1, 3, 4, 2)  # (B, A, h, w, K)
        xy, twh = pred[..., :2].sigmoid(), pred[..., 2:4]
        obj = pred[..., 4].sigmoid()  # (B, A, h, w)
        anchors = head.anchors.to(out)  # (A, 2) grid cells
        grid = _xy(out, gw, gh)

        with torch.no_grad():
            offset = _cell_offsets(out, gh, gw)
            # get_region_box: x = (col + sigmoid(tx)) / w, width = exp(tw) * anchor_w / w.
            boxes = torch.cat(((xy + offset) / grid, twh.exp() * anchors[:, None, None] / grid), -1)
            _, best = _truth_ious(boxes.reshape(batch, -1, 4), truths)
            best = best.view(obj.shape)
            # int() truncates; a centre exactly on the far edge stays in the last cell.
            col = (truths.box[:, 0] * gw).long().clamp(0, gw - 1)
            row = (truths.box[:, 1] * gh).long().clamp(0, gh - 1)
            # Each truth's anchor: best shape IoU with the anchor (bias_match) or with the
            # predicted box of each anchor in its cell.
            if head.bias_match:
                shapes = (anchors / grid).expand(len(col), num, 2)
            else:
                shapes = boxes[truths.image, :, row, col, 2:]  # (N, A, 2)
            wh = truths.box[:, None, 2:]
            inter = torch.minimum(wh, shapes).prod(-1)
            shape_iou = inter / (wh.prod(-1) + shapes.prod(-1) - inter)
            anchor = shape_iou.argmax(dim=1)  # first maximum, as darknet's strict '>' scan
            positive, wins = _positives(truths.image, anchor, row, col, truths.valid, obj.shape)

        # Negatives: objectness towards 0 unless some truth overlaps more than `thresh`.
        negative = ~positive & (best <= head.thresh)
        obj_sum = 0.5 * head.noobject_scale * torch.where(negative, obj.square(), 0).sum()
        box_sum = out.new_zeros(())
        if seen < PRIOR_IMAGES:
            prior = (xy - 0.5).square().sum(-1) + twh.square().sum(-1)
            box_sum = 0.5 * PRIOR_SCALE * torch.where(positive, 0, prior).sum()

        # Positives: the truth's cell and anchor; the last truth on a shared one wins.
        at = pred[truths.image, anchor, row, col]  # (N, K)
        at_xy, at_obj = at[:, :2].sigmoid(), at[:, 4].sigmoid()
        cell_xy = torch.stack((col, row), dim=1).to(out.dtype)
        target_wh = torch.log(truths.box[:, 2:] * grid / anchors[anchor])
        squared = (at_xy - (truths.box[:, :2] * grid - cell_xy)).square().sum(1)
        squared = squared + (at[:, 2:4] - target_wh).square().sum(1)
        weight = wins.to(out.dtype)
        box_sum = box_sum + 0.5 * head.coord_scale * (weight * squared).sum()
        with torch.no_grad():
            at_wh = at[:, 2:4].exp() * anchors[anchor]
            iou = _iou_cxcywh(torch.cat(((at_xy + cell_xy) / grid, at_wh / grid), 1), truths.box)
        obj_target = iou if head.rescore else torch.ones_like(iou)
        obj_squared = (at_obj - obj_target).square()
        obj_sum = obj_sum + 0.5 * head.object_scale * (weight * obj_squared).sum()
        logits = at[:, 5:]
        if head.softmax:
            cls_terms = F.cross_entropy(logits, truths.cls, reduction="none")
            true_prob = logits.softmax(1).gather(1, truths.cls[:, None]).squeeze(1)
        else:
            onehot = F.one_hot(truths.cls, classes).to(out.dtype)
            cls_terms = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none").sum(1)
            true_prob = logits.gather(1, truths.cls[:, None]).squeeze(1).sigmoid()
        cls_sum = head.class_scale * (weight * cls_terms).sum()

        valid = truths.valid.to(out.dtype)
        count = valid.sum().clamp_min(1)
        return LossOutput(
            loss=(box_sum + obj_sum + cls_sum) / batch,
            box=box_sum.detach() / batch,
            obj=obj_sum.detach() / batch,
            cls=cls_sum.detach() / batch,
            num_targets=truths.valid.sum(),
            num_positives=wins.sum(),
            avg_iou=(valid * iou).sum() / count,
            recall50=(valid * (iou > 0.5)).sum() / count,
            recall75=(valid * (iou > 0.75)).sum() / count,
            avg_obj=(valid * at_obj.detach()).sum() / count,
            avg_any_obj=obj.detach().mean(),
            avg_cls=(valid * true_prob.detach()).sum() / count,
        )


def _positives(
    image: Tensor, anchor: Tensor, row: Tensor, col: Tensor, valid: Tensor, shape: torch.Size
) -> tuple[Tensor, Tensor]:
    """Darknet's truth loop: the prediction each valid truth trains, the last truth per cell.

    Args:
        image, anchor, row, col: ``(N,)`` long, where each truth lands.
        valid: ``(N,)`` bool.
        shape: ``(B, A, h, w)`` of the head's predictions.

    Returns:
        ``positive`` ``(B, A, h, w)`` bool, and ``wins`` ``(N,)`` bool: the truth whose deltas
        the prediction keeps. Darknet assigns (not adds) each truth's deltas in label order, so
        of several truths on one cell and anchor the last one in the batch's targets wins.
    """
    batch, num, gh, gw = shape
    num_cells = batch * num * gh * gw
    cell = ((image * num + anchor) * gh + row) * gw + col
    cell = torch.where(valid, cell, num_cells)  # invalid truths go to a spare last cell
    order = torch.arange(len(cell), device=cell.device)
    last = torch.full((num_cells + 1,), -1, dtype=torch.long, device=cell.device)
    last = last.scatter_reduce(0, cell, order, "amax")
    wins = valid & (last[cell] == order)
    positive = last[:num_cells].view(shape) >= 0
    return positive, wins
