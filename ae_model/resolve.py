"""A job resolved against its cfg: every setting the Trainer runs with, typed (no torch).

One function, :func:`resolve_training`, turns a cfg, the job's options and its dataset's size
into a :class:`ResolvedTraining`: job overrides first, then the cfg's ``[net]`` and heads, then
darknet's defaults. The API calls it to validate a job and to size its budgets before any worker
sees it; the Trainer calls it to train. Whatever the Trainer cannot run is refused here, with
a :class:`JobSettingsError` that names the setting to change.
"""

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from ae_model.anchors import fit_anchors, mean_best_iou
from ae_model.cfg import (
    CfgError,
    DarknetConfig,
    LayerRow,
    RegionSection,
    YoloSection,
    parse_cfg,
    resolve_random,
    retarget_classes,
    set_anchors,
)
from ae_model.data.augment import AugmentParams
from ae_model.options import AEConfig, AnchorSource, LRPolicy, TrainOptions
from ae_model.placement import cfg_excitation_layers, resolve_layers

# Darknet's parse_net_options default when a cfg has no max_batches=.
DEFAULT_MAX_BATCHES = 1000
# Checked by resolve_training; YOLO downsamples by 32.
SIZE_MULTIPLE = 32


class JobSettingsError(ValueError):
    """A job's settings cannot train with its cfg; ``loc`` names the setting (as in a job spec:
    ``("train", "batch")``, ``("ae", "layers")``, ``("model",)``)."""

    def __init__(self, loc: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


@dataclass(frozen=True)
class ScheduleScaling:
    """The cfg's schedule before it was scaled to a shorter run (``max_batches`` is the cfg's)."""

    max_batches: int
    burn_in: int | None
    steps: tuple[int, ...] | None


@dataclass(frozen=True)
class ResolvedTraining:
    """What a run trains with. ``cfg`` is the network trained: the job's cfg with its heads
    retargeted to the dataset's classes when they differ."""

    cfg: DarknetConfig
    layers: tuple[LayerRow, ...]
    """``cfg``'s layer table at ``width x height``, computed once per resolution (the API's
    budgets read it too)."""
    batch: int
    subdivisions: int
    max_batches: int
    learning_rate: float
    momentum: float
    decay: float
    burn_in: int
    power: float
    policy: LRPolicy
    steps: tuple[int, ...]
    scales: tuple[float, ...]
    step: int
    scale: float
    gamma: float
    learning_rate_min: float
    """Where policy=sgdr and policy=cosine decay to."""
    sgdr_cycle: int
    """policy=sgdr's first cycle, in iterations: the cfg's sgdr_cycle, else max_batches."""
    sgdr_mult: int
    optimizer: str
    """``sgd``, or ``adam`` (the cfg's ``adam=1``) with ``adam_b1``, ``adam_b2``, ``adam_eps``."""
    adam_b1: float
    adam_b2: float
    adam_eps: float
    ema_alpha: float
    """darknet's ``ema_alpha``: the rate of the weights' moving average (0: none)."""
    ema_start: int
    """The iteration from which the average runs: darknet's ``max_batches / 2``."""
    width: int
    height: int
    random: float
    """Darknet's multi-scale ``random`` for the run (0: off)."""
    saturation: float
    exposure: float
    hue: float
    jitter: float
    augment: AugmentParams
    ae_layers: tuple[int, ...]
    """Layers with AE: the job's placement and the cfg's ``assisted_excitation=N`` keys."""
    retargeted_from_classes: tuple[int, ...] | None
    """The cfg's class counts when its heads were resized to the dataset's."""
    anchors_fitted: tuple[tuple[int, int], ...] | None
    """With ``anchors=fit``, the anchors fitted to the dataset (network pixels, by area) and
    written into ``cfg``; None otherwise, and before the Trainer has read the dataset."""
    schedule_scaled_from: ScheduleScaling | None
    """Set when the run is shorter than the cfg's max_batches and its burn_in/steps were scaled."""
    notes: tuple[str, ...]
    """What resolution changed on its own, in words (the job's event log shows them)."""
    warnings: tuple[str, ...]
    """Settings that will train badly, in words: a burn-in or first LR step the run never
    reaches."""

    @property
    def micro_batch(self) -> int:
        """Images per forward pass: ``batch / subdivisions``."""
        return self.batch // self.subdivisions

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, the form stored with a job and in checkpoints (``resolved``)."""
        data = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("cfg", "layers")
        }
        data["policy"] = str(self.policy)
        data["augment"] = dataclasses.asdict(self.augment)
        for key in ("steps", "scales", "ae_layers", "notes", "warnings"):
            data[key] = list(data[key])
        if self.retargeted_from_classes is not None:
            data["retargeted_from_classes"] = list(self.retargeted_from_classes)
        if self.anchors_fitted is not None:
            data["anchors_fitted"] = [list(anchor) for anchor in self.anchors_fitted]
        if self.schedule_scaled_from is not None:
            data["schedule_scaled_from"] = dataclasses.asdict(self.schedule_scaled_from)
            if self.schedule_scaled_from.steps is not None:
                data["schedule_scaled_from"]["steps"] = list(self.schedule_scaled_from.steps)
        data["cfg_text"] = self.cfg.text
        return data


def resolve_training(
    cfg: DarknetConfig,
    options: TrainOptions,
    *,
    train_images: int,
    num_classes: int | None = None,
    ae: AEConfig | None = None,
    box_sizes: np.ndarray | None = None,
) -> ResolvedTraining:
    """Resolve a run of ``cfg`` with ``options`` on a dataset of ``train_images`` training
    images and ``num_classes`` classes (None: the cfg's), with AE placed per ``ae``.

    ``box_sizes``: the training boxes' widths and heights as fractions of their images
    (``(N, 2)``), for ``anchors=fit``; without them (the API, which validates a job before any
    worker reads its dataset) the cfg's anchors stand and a note says they will be fitted.

    Raises:
        JobSettingsError: a setting the Trainer cannot run, naming it.
    """
    net = cfg.net
    cfg, retargeted_from = _retargeted(cfg, num_classes)
    batch = _pick(options.batch, net.batch)
    subdivisions = _pick(options.subdivisions, net.subdivisions)
    _check_micro_batches(batch, subdivisions, options.world_size)
    max_batches = _max_batches(options, net, batch, train_images)
    policy = LRPolicy(_pick(options.policy, net.policy))
    burn_in = _pick(options.burn_in, net.burn_in)
    steps = tuple(options.steps) if options.steps is not None else net.steps
    scales = tuple(options.scales) if options.scales is not None else net.scales
    if policy != LRPolicy.STEPS:
        steps, scales = (), ()
    scaled = _scaling(options, net, max_batches, burn_in, steps)
    notes: tuple[str, ...] = ()
    if scaled is not None:
        factor = max_batches / scaled.max_batches
        old_burn_in, old_steps = burn_in, steps
        if scaled.burn_in is not None:
            burn_in = round(burn_in * factor)
        if scaled.steps is not None:
            # Inside the run: a step rounded up onto its end would never be taken.
            steps = tuple(min(round(step * factor), max_batches - 1) for step in steps)
        notes = (_scaling_note(scaled, max_batches, (old_burn_in, burn_in), (old_steps, steps)),)
    width, height = _pick(options.width, net.width), _pick(options.height, net.height)
    _check_size(width, height)
    try:
        layers = tuple(cfg.layer_table(width, height))  # every layer fits that input
    except CfgError as error:
        raise JobSettingsError(("train", "width"), f"at {width}x{height}: {error}") from error
    heads = [s for s in cfg.sections if isinstance(s, YoloSection | RegionSection)]
    jitter = heads[0].jitter if heads else 0.0
    fitted = None
    if options.anchors == AnchorSource.FIT:
        cfg, fitted, note = _fit_anchors(cfg, layers, box_sizes, width, height)
        notes += (note,)
        if fitted is not None:  # the rows hold the heads' sections, anchors included
            layers = tuple(cfg.layer_table(width, height))
    learning_rate = _pick(options.learning_rate, net.learning_rate)
    return ResolvedTraining(
        cfg=cfg,
        layers=layers,
        batch=batch,
        subdivisions=subdivisions,
        max_batches=max_batches,
        learning_rate=learning_rate,
        momentum=_pick(options.momentum, net.momentum),
        decay=_pick(options.decay, net.decay),
        burn_in=burn_in,
        power=net.power,
        policy=policy,
        steps=steps,
        scales=scales,
        step=net.step,
        scale=net.scale,
        gamma=net.gamma,
        learning_rate_min=net.learning_rate_min,
        sgdr_cycle=net.sgdr_cycle or max_batches,
        sgdr_mult=net.sgdr_mult,
        optimizer="adam" if net.adam else "sgd",
        adam_b1=net.b1,
        adam_b2=net.b2,
        adam_eps=net.eps,
        ema_alpha=net.ema_alpha,
        ema_start=max_batches // 2 if net.ema_alpha else 0,
        width=width,
        height=height,
        random=resolve_random(max((h.random for h in heads), default=0.0), options.multiscale),
        saturation=net.saturation,
        exposure=net.exposure,
        hue=net.hue,
        jitter=jitter,
        augment=_augment(net, jitter) if options.augment else AugmentParams(),
        ae_layers=_ae_layers(cfg, ae, width, height),
        retargeted_from_classes=retargeted_from,
        anchors_fitted=fitted,
        schedule_scaled_from=scaled,
        notes=notes,
        warnings=_schedule_warnings(max_batches, burn_in, policy, steps, learning_rate, net.power),
    )


def _pick(override: Any, from_cfg: Any) -> Any:
    return from_cfg if override is None else override


def _retargeted(
    cfg: DarknetConfig, num_classes: int | None
) -> tuple[DarknetConfig, tuple[int, ...] | None]:
    """The cfg with its heads (and the convolutions before them) sized to ``num_classes``, as
    darknet users do by hand, and the class counts it had; the cfg itself when they agree."""
    heads = (YoloSection, RegionSection)
    classes = {s.classes for s in cfg.sections if isinstance(s, heads)}
    if num_classes is None or classes == {num_classes}:
        return cfg, None
    try:
        return _retarget(cfg.text, cfg.source, num_classes), tuple(sorted(classes))
    except CfgError as error:
        raise JobSettingsError(
            ("model",),
            f"the cfg's heads resized to the dataset's {num_classes} classes do not make a "
            f"network aetrain can build ({error}); train on a dataset with fewer classes",
        ) from error


@lru_cache(maxsize=32)
def _retarget(text: str, source: str, num_classes: int) -> DarknetConfig:
    # Once per cfg and class count, not per job: the API resolves every submission, mostly of
    # the same few cfgs and datasets (DarknetConfig is frozen, so callers may share it).
    return parse_cfg(retarget_classes(text, num_classes), source)


def _fit_anchors(
    cfg: DarknetConfig,
    layers: tuple[LayerRow, ...],
    box_sizes: np.ndarray | None,
    width: int,
    height: int,
) -> tuple[DarknetConfig, tuple[tuple[int, int], ...] | None, str]:
    """The cfg with anchors fitted to ``box_sizes`` at ``width x height`` written into every
    head, the anchors, and a note in words.

    One set of ``num`` anchors serves every head, as in darknet's cfgs, whose heads share one
    anchors= list and pick theirs by mask=. [region] heads list anchors in cells of their grid.
    """
    heads = [row for row in layers if isinstance(row.section, YoloSection | RegionSection)]
    counts = {row.section.num for row in heads}  # type: ignore[attr-defined]
    if len(counts) != 1:
        raise JobSettingsError(
            ("train", "anchors"),
            "anchors=fit fits one anchors= list for every head, so it needs [yolo] or [region] "
            f"heads with one num= (this cfg's: {sorted(counts)}); keep anchors=cfg",
        )
    count = counts.pop()
    if box_sizes is None:
        note = f"{count} anchors are fitted to the dataset's training boxes when the job starts"
        return cfg, None, note
    boxes = np.asarray(box_sizes, dtype=np.float64).reshape(-1, 2) * (width, height)
    boxes = boxes[(boxes > 0).all(axis=1)]  # a label of zero width has no shape to fit
    try:
        anchors = fit_anchors(boxes, count)
    except ValueError as error:
        raise JobSettingsError(
            ("train", "anchors"), f"anchors=fit on this dataset's training boxes: {error}"
        ) from error

    def cells(row: LayerRow) -> float:  # network pixels per unit of the head's anchors=
        return row.out_stride if isinstance(row.section, RegionSection) else 1.0

    before = np.array(heads[0].section.anchors) * cells(heads[0])  # type: ignore[attr-defined]
    lists = [
        ", ".join(f"{w / cells(row):g},{h / cells(row):g}" for w, h in anchors) for row in heads
    ]
    cfg = parse_cfg(set_anchors(cfg.text, lists), cfg.source)
    fitted = tuple((int(w), int(h)) for w, h in anchors)
    note = (
        f"anchors fitted to the dataset's {len(boxes)} training boxes at {width}x{height}: "
        + "  ".join(f"{w},{h}" for w, h in fitted)
        + f" (a box's IoU with its best anchor: {mean_best_iou(boxes, before):.2f} on average "
        f"with the cfg's anchors, {mean_best_iou(boxes, anchors):.2f} with these)"
    )
    return cfg, fitted, note


def _check_micro_batches(batch: int, subdivisions: int, world_size: int) -> None:
    if batch % subdivisions:
        raise JobSettingsError(
            ("train", "batch"),
            f"batch={batch} is not divisible by subdivisions={subdivisions} (the cfg's unless "
            "the job sets them): each micro-batch must hold batch/subdivisions images; set "
            "batch and subdivisions together",
        )
    if subdivisions % world_size:
        raise JobSettingsError(
            ("train", "world_size"),
            f"world_size={world_size} processes share each iteration's subdivisions="
            f"{subdivisions} micro-batches: set subdivisions to a multiple of world_size "
            f"(e.g. subdivisions={world_size}, and batch a multiple of that)",
        )


def _max_batches(options: TrainOptions, net: Any, batch: int, train_images: int) -> int:
    if options.epochs is not None:
        if train_images < 1:
            raise JobSettingsError(
                ("train", "epochs"), "the dataset has no training images to count epochs over"
            )
        return math.ceil(options.epochs * train_images / batch)
    if options.max_batches is not None:
        return options.max_batches
    length = _cfg_max_batches(net)
    if length < 1:
        raise JobSettingsError(
            ("train", "max_batches"),
            f"the cfg's max_batches={length} trains nothing; set max_batches or epochs",
        )
    return length


def _cfg_max_batches(net: Any) -> int:
    return net.max_batches if "max_batches" in net else DEFAULT_MAX_BATCHES


def _scaling(
    options: TrainOptions, net: Any, max_batches: int, burn_in: int, steps: tuple[int, ...]
) -> ScheduleScaling | None:
    """What of the cfg's schedule to scale: the run's length is set by the job and shorter than
    the cfg's, and the job does not set burn_in (or steps) itself."""
    cfg_length = _cfg_max_batches(net)
    if options.epochs is None and options.max_batches is None:
        return None
    if not 0 < max_batches < cfg_length:
        return None
    scale_burn_in = options.burn_in is None and burn_in > 0
    scale_steps = options.steps is None and bool(steps)
    if not (scale_burn_in or scale_steps):
        return None
    return ScheduleScaling(
        max_batches=cfg_length,
        burn_in=burn_in if scale_burn_in else None,
        steps=steps if scale_steps else None,
    )


def _scaling_note(
    scaled: ScheduleScaling,
    max_batches: int,
    burn_in: tuple[int, int],
    steps: tuple[tuple[int, ...], tuple[int, ...]],
) -> str:
    changes = []
    if scaled.burn_in is not None:
        changes.append(f"burn_in {burn_in[0]} -> {burn_in[1]}")
    if scaled.steps is not None:
        changes.append(f"steps {_listed(steps[0])} -> {_listed(steps[1])}")
    return (
        f"the run's {max_batches} iterations are shorter than the cfg's max_batches="
        f"{scaled.max_batches}, so its schedule was scaled by "
        f"{max_batches / scaled.max_batches:.4g}: {', '.join(changes)} (set burn_in and steps "
        "to choose them yourself)"
    )


def _listed(values: tuple[int, ...]) -> str:
    return ",".join(str(v) for v in values)


def _schedule_warnings(
    max_batches: int,
    burn_in: int,
    policy: LRPolicy,
    steps: tuple[int, ...],
    learning_rate: float,
    power: float,
) -> tuple[str, ...]:
    warnings = []
    if burn_in >= max_batches:
        final = learning_rate * ((max_batches - 1) / burn_in) ** power
        warnings.append(
            f"burn_in={burn_in} is at or beyond the run's last iteration ({max_batches}): the "
            f"learning rate never leaves darknet's burn-in ramp and ends at {final:.2g} instead "
            f"of {learning_rate:g}; lower burn_in or train longer"
        )
    if policy == LRPolicy.STEPS and steps and steps[0] >= max_batches:
        warnings.append(
            f"the first learning-rate step ({steps[0]}) is at or beyond the run's last iteration "
            f"({max_batches}): policy=steps never lowers the rate; set steps within the run or "
            "train longer"
        )
    return tuple(warnings)


def _check_size(width: int, height: int) -> None:
    for side, value in (("width", width), ("height", height)):
        if value <= 0 or value % SIZE_MULTIPLE:
            raise JobSettingsError(
                ("train", side),
                f"{side}={value} is not a positive multiple of {SIZE_MULTIPLE}; YOLO downsamples "
                "by 32, so use e.g. 320, 416 or 608",
            )


def _augment(net: Any, jitter: float) -> AugmentParams:
    try:
        return AugmentParams.from_darknet({**net, "jitter": jitter})
    except ValueError as error:
        raise JobSettingsError(("model",), f"the cfg's augmentation: {error}") from error


def _ae_layers(cfg: DarknetConfig, ae: AEConfig | None, width: int, height: int) -> tuple[int, ...]:
    try:
        layers = set(cfg_excitation_layers(cfg))
    except CfgError as error:
        raise JobSettingsError(("model",), str(error)) from error
    if ae is not None:
        try:
            layers.update(resolve_layers(cfg, ae.layers, width, height))
        except ValueError as error:
            loc = ("ae", "layers", "stride") if isinstance(ae.layers, dict) else ("ae", "layers")
            raise JobSettingsError(loc, str(error)) from error
    return tuple(sorted(layers))
