"""Assisted Excitation of activations (Derakhshani et al., CVPR 2019, arXiv 1906.05388).

During training, the output ``a`` (B, C, H, W) of a chosen layer is excited inside the
ground-truth boxes:

    a' = a + alpha(t) * g * mean_c(a)

where ``g`` (B, H, W) is the 0/1 box mask at the layer's resolution and ``alpha(t)`` decays to 0
over training. In ``eval()`` the module is the identity. The exact definition (mask, modes,
gradient, schedules, placement) is in docs/assisted_excitation.md.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ae_model.options import AEMode, AESchedule
from ae_model.placement import LayerSpec, cfg_excitation, resolve_layers

if TYPE_CHECKING:
    from ae_model.darknet import Darknet

__all__ = [
    "MODES",
    "SCHEDULES",
    "AssistedExcitation",
    "ExcitationContext",
    "alpha_at",
    "attach_excitation",
    "excite",
    "gt_mask",
]

MODES: tuple[str, ...] = tuple(mode.value for mode in AEMode)
SCHEDULES: tuple[str, ...] = tuple(schedule.value for schedule in AESchedule)

"""Where AE goes: a darknet layer index, several, or ``{"stride": S}``."""


def gt_mask(
    boxes: Tensor,
    batch_index: Tensor,
    batch_size: int,
    height: int,
    width: int,
    *,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Ground-truth mask ``g``: 1 on every grid cell that a box of the image overlaps.

    Cell ``(i, j)`` of a ``height x width`` grid covers ``[j/W, (j+1)/W) x [i/H, (i+1)/H)`` of
    the network input. A box marks columns ``floor(x1*W) .. ceil(x2*W)-1`` and rows
    ``floor(y1*H) .. ceil(y2*H)-1``, clipped to the grid. A box thinner than that (zero width or
    height, or ``x2 < x1``) marks the cell containing ``(x1, y1)``, so small objects are never
    lost; a box entirely outside ``[0, 1)`` marks nothing, and so does a box with a NaN
    coordinate or a ``batch_index`` outside ``[0, batch_size)``.

    Args:
        boxes: ``(N, 4)`` normalised ``x1, y1, x2, y2`` in network-input coordinates.
        batch_index: ``(N,)`` integer image index of each box.
        batch_size: number of images ``B`` (images without boxes get an all-zero mask).
        height: grid height ``H``.
        width: grid width ``W``.
        dtype: dtype of the returned mask (use the activation's dtype).

    Returns:
        ``(B, H, W)`` tensor of 0 and 1 in ``dtype`` on ``boxes.device``.
    """
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {tuple(boxes.shape)}")
    if batch_index.shape != (boxes.shape[0],):
        raise ValueError(
            f"batch_index must have shape ({boxes.shape[0]},) to match boxes, "
            f"got {tuple(batch_index.shape)}"
        )
    if batch_size < 0 or height < 1 or width < 1:
        raise ValueError(
            f"need batch_size >= 0 and a grid of at least 1x1, got batch_size={batch_size}, "
            f"height={height}, width={width}"
        )
    coords = boxes if boxes.is_floating_point() else boxes.float()
    x1, y1, x2, y2 = coords.unbind(1)
    rows = _covered_cells(y1, y2, height)  # (N, H)
    cols = _covered_cells(x1, x2, width)  # (N, W)
    images = torch.arange(batch_size, device=boxes.device)
    in_image = images[:, None] == batch_index[None, :]  # (B, N)
    # counts[b, i, j] = number of boxes of image b covering cell (i, j): a (B, H, N) @ (N, W)
    # product, so no (N, H, W) tensor is ever built.
    rows_per_image = (in_image[:, None, :] & rows.T[None, :, :]).float()
    counts = rows_per_image @ cols.float()
    return (counts > 0).to(dtype)


def _covered_cells(lo: Tensor, hi: Tensor, cells: int) -> Tensor:
    """``(N, cells)`` bool: which of ``cells`` equal intervals of [0, 1) each ``[lo, hi]`` hits."""
    first = torch.floor(lo * cells)
    end = torch.maximum(torch.ceil(hi * cells), first + 1)
    index = torch.arange(cells, device=lo.device, dtype=lo.dtype)
    # Comparing against the whole grid clips out-of-range boxes and leaves NaN boxes empty.
    return (index[None, :] >= first[:, None]) & (index[None, :] < end[:, None])


def excite(
    a: Tensor, mask: Tensor, alpha: float | Tensor, mode: str = "excite", detach: bool = True
) -> Tensor:
    """Apply Assisted Excitation to an activation: ``a' = a + e``, ``e`` the excitation term.

    - ``excite``: ``e = alpha * g * mean_c(a)`` (the paper).
    - ``suppress_background``: ``e = -alpha * (1 - g) * a``, i.e. ``a' = a * (1 - alpha*(1-g))``.
    - ``multiplicative``: ``e = alpha * g * a * mean_c(a)``.

    Args:
        a: ``(B, C, H, W)`` activation.
        mask: ``(B, H, W)`` ground-truth mask ``g`` from :func:`gt_mask`.
        alpha: excitation strength (a number, or a 0-d tensor on ``a``'s device).
        mode: one of :data:`MODES`.
        detach: if true, ``e`` is a constant for autograd (darknet's behaviour), so the gradient
            of ``a'`` with respect to ``a`` is the identity in every mode; if false the gradient
            also flows through ``e``.

    Returns:
        ``(B, C, H, W)`` excited activation (a new tensor; ``a`` is not modified).
    """
    if mode not in MODES:
        raise ValueError(f"unknown AE mode {mode!r}; choose one of {', '.join(MODES)}")
    if a.ndim != 4 or mask.shape != (a.shape[0], a.shape[2], a.shape[3]):
        raise ValueError(
            f"need a of shape (B, C, H, W) and mask of shape (B, H, W), got "
            f"a {tuple(a.shape)} and mask {tuple(mask.shape)}"
        )
    g = mask.to(a.dtype).unsqueeze(1)  # (B, 1, H, W), broadcast over channels
    # Under no_grad e is built as a constant without keeping anything for backward.
    with torch.no_grad() if detach else contextlib.nullcontext():
        if mode == "excite":
            e = alpha * g * a.mean(dim=1, keepdim=True)
        elif mode == "suppress_background":
            e = -alpha * (1 - g) * a
        else:
            e = alpha * g * a * a.mean(dim=1, keepdim=True)
    return a + e


def alpha_at(
    schedule: str,
    t: float,
    T: float,
    *,
    alpha_max: float = 1.0,
    burn_in: int = 0,
    max_batches: int | None = None,
) -> float:
    """Excitation strength ``alpha`` at optimizer iteration ``t`` (0-based).

    - ``cosine``: ``alpha_max * (1 + cos(pi*t/T)) / 2`` for ``t <= T``, else 0.
    - ``quarter_cosine``: ``alpha_max * cos(pi/2 * t/T)`` for ``t <= T``, else 0.
    - ``linear``: ``alpha_max * (1 - t/T)`` for ``t <= T``, else 0.
    - ``constant``: ``alpha_max``.
    - ``darknet``: darknet's ``assisted_excitation=N`` with ``N = T``, times ``alpha_max``:
      for ``N == 1``, ``(1 + cos(pi*t/max_batches)) / 2`` while ``t <= max_batches/2``, else 0;
      for ``N > 1``, 0 while ``t < burn_in`` or ``t > N``, else
      ``(1 + cos(pi*t/(burn_in + N))) / 2``.

    Raises:
        ValueError: unknown schedule or invalid ``t``, ``T``, ``alpha_max``, ``burn_in`` or
            ``max_batches``; the message says what to change.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown AE schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if not T > 0:
        raise ValueError(
            f"AE schedule length T must be > 0, got {T}; set it to the number of iterations "
            "over which alpha decays (default: the job's total iterations)"
        )
    if not t >= 0:
        raise ValueError(f"iteration t must be >= 0, got {t}")
    if not (math.isfinite(alpha_max) and alpha_max >= 0):
        raise ValueError(f"alpha_max must be a finite number >= 0, got {alpha_max}")
    if schedule == "constant":
        return alpha_max
    if schedule == "darknet":
        return alpha_max * _darknet_alpha(t, T, burn_in, max_batches)
    if t > T:
        return 0.0
    progress = t / T
    if schedule == "cosine":
        return alpha_max * (1 + math.cos(math.pi * progress)) / 2
    if schedule == "quarter_cosine":
        # sin(pi/2 * (1 - p)) == cos(pi/2 * p), but is exactly 0 at p = 1, so AE switches off.
        return alpha_max * math.sin(math.pi / 2 * (1 - progress))
    return alpha_max * (1 - progress)


def _darknet_alpha(t: float, n: float, burn_in: int, max_batches: int | None) -> float:
    """Darknet's alpha for ``assisted_excitation=n`` (its GPU code), without ``alpha_max``."""
    if n != int(n):
        raise ValueError(f"darknet schedule needs an integer N (assisted_excitation=N), got {n}")
    if burn_in < 0:
        raise ValueError(f"burn_in must be >= 0, got {burn_in}")
    if n == 1:
        if max_batches is None or max_batches <= 0:
            raise ValueError(
                "assisted_excitation=1 decays over max_batches: give max_batches > 0 "
                f"(got {max_batches}), e.g. from the cfg's [net] max_batches"
            )
        if t > max_batches / 2:
            return 0.0
        return (1 + math.cos(math.pi * t / max_batches)) / 2
    if t < burn_in or t > n:
        return 0.0
    return (1 + math.cos(math.pi * t / (burn_in + n))) / 2


@dataclass(eq=False)
class ExcitationContext:
    """The current batch's boxes and iteration, shared by every :class:`AssistedExcitation`.

    The training loop calls :meth:`set` before each forward pass; until then (or after
    :meth:`clear`) AE modules pass activations through unchanged.

    Attributes:
        boxes: ``(N, 4)`` normalised ``x1, y1, x2, y2`` in network-input coordinates, or None.
        batch_index: ``(N,)`` long image index of each box, or None.
        batch_size: number of images ``B`` in the batch.
        iteration: optimizer iteration ``t`` (0-based) that the schedules read.
    """

    boxes: Tensor | None = None
    batch_index: Tensor | None = None
    batch_size: int = 0
    iteration: int = 0

    def set(self, targets: Tensor, batch_size: int, iteration: int) -> None:
        """Take the boxes of a batch.

        Args:
            targets: ``(N, 6)`` rows ``batch_index, class_id, x1, y1, x2, y2`` (the batch format
                of ``ae_model.data``).
            batch_size: number of images ``B`` in the batch (trailing images may have no box).
            iteration: optimizer iteration ``t`` (0-based).
        """
        if targets.ndim != 2 or targets.shape[1] != 6:
            raise ValueError(
                "targets must have shape (N, 6) with rows batch_index, class_id, x1, y1, x2, y2; "
                f"got {tuple(targets.shape)}"
            )
        self.boxes = targets[:, 2:6]
        self.batch_index = targets[:, 0].long()
        self.batch_size = batch_size
        self.iteration = iteration

    def clear(self) -> None:
        """Forget the boxes, so AE modules pass activations through unchanged."""
        self.boxes = None
        self.batch_index = None


class AssistedExcitation(nn.Module):
    """Assisted Excitation of one layer's output, driven by a shared :class:`ExcitationContext`.

    The module has no parameters or buffers, so a network's ``state_dict`` (and its darknet
    ``.weights``) is the same with and without it. ``forward`` returns its input object
    unchanged in ``eval()``, when alpha is 0 or when the context holds no batch.

    Args:
        context: shared context the training loop updates each step.
        schedule: one of :data:`SCHEDULES`.
        T: schedule length in iterations (for ``darknet``: the cfg's ``assisted_excitation=N``).
        alpha_max: peak alpha.
        mode: one of :data:`MODES`.
        detach: treat the excitation term as a constant for autograd (see :func:`excite`).
        burn_in: darknet's ``burn_in`` (``darknet`` schedule only).
        max_batches: darknet's ``max_batches`` (``darknet`` schedule with ``N == 1`` only).
        layer_index: darknet index of the excited layer, for messages and ``repr``.
    """

    def __init__(
        self,
        context: ExcitationContext,
        schedule: str,
        T: float,
        *,
        alpha_max: float = 1.0,
        mode: str = "excite",
        detach: bool = True,
        burn_in: int = 0,
        max_batches: int | None = None,
        layer_index: int | None = None,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown AE mode {mode!r}; choose one of {', '.join(MODES)}")
        # Evaluate once so a bad schedule fails when the network is built, not mid-training.
        alpha_at(schedule, 0, T, alpha_max=alpha_max, burn_in=burn_in, max_batches=max_batches)
        self.context = context
        self.schedule = schedule
        self.T = T
        self.alpha_max = alpha_max
        self.mode = mode
        self.detach = detach
        self.burn_in = burn_in
        self.max_batches = max_batches
        self.layer_index = layer_index
        self.last_alpha = 0.0
        self.prepared = False
        self.step_input: tuple[Tensor, Tensor] | None = None

    def alpha(self, iteration: int) -> float:
        """This module's alpha at optimizer iteration ``iteration``."""
        return alpha_at(
            self.schedule,
            iteration,
            self.T,
            alpha_max=self.alpha_max,
            burn_in=self.burn_in,
            max_batches=self.max_batches,
        )

    def prepare(self, height: int, width: int, device: torch.device) -> None:
        """Work out this step's alpha and mask now, for a forward pass that is compiled.

        The schedule at this iteration and the mask of this batch's boxes (on the layer's
        ``height x width`` grid) are computed here, outside the network; until
        :meth:`unprepare`, ``forward`` only adds their excitation term. A compiled network then
        neither breaks its graph at AE nor recompiles as alpha and the boxes change; it
        recompiles once, when alpha reaches 0. Call after ``context.set`` for every batch.
        """
        ctx = self.context
        self.prepared = True
        self.step_input = None
        self.last_alpha = 0.0
        if ctx.boxes is None or ctx.batch_index is None:
            return
        alpha = self.alpha(ctx.iteration)
        self.last_alpha = alpha
        if alpha == 0:
            return
        mask = gt_mask(
            ctx.boxes.to(device, non_blocking=True),
            ctx.batch_index.to(device, non_blocking=True),
            ctx.batch_size,
            height,
            width,
        )
        # A device tensor, not a float: a changing Python number would recompile the graph.
        self.step_input = (mask, torch.full((), alpha, device=device))

    def unprepare(self) -> None:
        """Back to computing alpha and the mask in ``forward`` from the context."""
        self.prepared = False
        self.step_input = None

    def forward(self, a: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``: excite ``a`` inside the context's boxes."""
        if not self.training:
            return a
        if self.prepared:
            if self.step_input is None:
                return a
            mask, alpha = self.step_input
            return excite(a, mask, alpha, self.mode, self.detach)
        return self._excite_from_context(a)

    # Kept out of a compiled graph: its Python numbers change every step and would recompile
    # it; a compiled network that did not call prepare() breaks its graph here instead.
    @torch.compiler.disable
    def _excite_from_context(self, a: Tensor) -> Tensor:
        ctx = self.context
        if ctx.boxes is None or ctx.batch_index is None:
            self.last_alpha = 0.0
            return a
        alpha = self.alpha(ctx.iteration)
        self.last_alpha = alpha
        if alpha == 0:
            return a
        if ctx.batch_size != a.shape[0]:
            raise ValueError(
                f"AE on layer {self.layer_index}: the context holds boxes for "
                f"{ctx.batch_size} images but the layer's output has {a.shape[0]}; call "
                "context.set(targets, batch_size, iteration) with every batch"
            )
        mask = gt_mask(
            ctx.boxes.to(a.device, non_blocking=True),
            ctx.batch_index.to(a.device, non_blocking=True),
            a.shape[0],
            a.shape[2],
            a.shape[3],
            dtype=a.dtype,
        )
        return excite(a, mask, alpha, self.mode, self.detach)

    def extra_repr(self) -> str:
        return (
            f"layer={self.layer_index}, schedule={self.schedule}, T={self.T}, "
            f"alpha_max={self.alpha_max}, mode={self.mode}, detach={self.detach}"
        )


def attach_excitation(
    model: Darknet,
    spec: LayerSpec | None,
    context: ExcitationContext,
    *,
    schedule: str = "cosine",
    T: float | None = None,
    alpha_max: float = 1.0,
    mode: str = "excite",
    detach: bool = True,
    burn_in: int | None = None,
    max_batches: int | None = None,
    width: int | None = None,
    height: int | None = None,
    from_cfg: bool = True,
) -> list[int]:
    """Put Assisted Excitation on a darknet network; return the excited layer indices.

    Layers come from ``spec`` (see :func:`ae_model.placement.resolve_layers`) with the given
    schedule and mode, and, if ``from_cfg``, from ``assisted_excitation=N`` keys in the cfg
    (``N > 0``), which get the ``darknet`` schedule with ``T = N``, ``burn_in`` and
    ``max_batches``. Where both name a layer, ``spec`` wins. Each module goes into
    ``model.excitations[str(index)]``, replacing any that was there.

    Args:
        model: the network.
        spec: layer index, indices, ``{"stride": S}``, or None for the cfg keys only.
        context: the context the training loop updates each step.
        schedule: schedule for the ``spec`` layers, one of :data:`SCHEDULES`.
        T: schedule length in iterations; default ``max_batches``.
        alpha_max: peak alpha.
        mode: one of :data:`MODES` (the cfg keys use it too; darknet's code uses ``excite``).
        detach: treat the excitation term as a constant for autograd.
        burn_in: darknet's ``burn_in`` for the ``darknet`` schedule; default ``[net] burn_in``.
        max_batches: the job's total iterations; default ``[net] max_batches``.
        width: input width for placement by stride; default ``[net] width``.
        height: input height for placement by stride; default ``[net] height``.
        from_cfg: honour ``assisted_excitation=N`` keys in the cfg.

    Returns:
        Sorted indices of the layers this call put AE on (the resolved placement to store
        with the job).
    """
    if burn_in is None:
        burn_in = model.net.burn_in
    if max_batches is None and model.net.max_batches > 0:
        max_batches = model.net.max_batches
    # Settings both placements share; each adds its schedule, length and layer.
    excitation = functools.partial(
        AssistedExcitation, context, alpha_max=alpha_max, mode=mode, detach=detach,
        burn_in=burn_in, max_batches=max_batches,
    )  # fmt: skip
    modules: dict[int, AssistedExcitation] = {}
    if from_cfg:
        for index, section in enumerate(model.sections):
            n = cfg_excitation(section)
            if n > 0:
                modules[index] = excitation("darknet", n, layer_index=index)
    if spec is not None:
        if T is None:
            if max_batches is None:
                raise ValueError("AE needs T (its length in iterations): give T or max_batches")
            T = max_batches
        width = model.net.width if width is None else width
        height = model.net.height if height is None else height
        for index in resolve_layers(model.config, spec, width, height):
            modules[index] = excitation(schedule, T, layer_index=index)
    for index, module in modules.items():
        model.excitations[str(index)] = module
    return sorted(modules)
