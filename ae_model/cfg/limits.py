"""Bounds on everything a cfg asks for, so that reading a cfg and computing its layer table
take little time and memory whatever its text says: the text's length, its sections and keys,
every number a key holds, every list's length, and every layer's output.

Every bound is declared here once; the lexer, :class:`ae_model.cfg.parser.SectionReader` and
:func:`ae_model.cfg.table.layer_table` enforce them, each with a ``CfgError`` naming the line and
key (or layer) and the range accepted. The bounds are far beyond any network a GPU trains, so
they refuse only cfgs written to exhaust the parser; the API's budgets then bound what a job
asks of a worker.
"""

from __future__ import annotations

from dataclasses import dataclass

# Four times the largest text the API accepts (512 KiB), so its own message comes first there.
MAX_CFG_CHARS = 2**21
MAX_SECTIONS = 2000
# Keys of one section, repeats included (darknet's [net] knows about 80).
MAX_KEYS_PER_SECTION = 500
MAX_SIDE = 65536
MAX_CHANNELS = 65536
# Values of one layer's output for one image: 8 GiB of float32, beyond any GPU's training step.
MAX_LAYER_VALUES = 2**31
MAX_ANCHORS = 1000
MAX_ITERATIONS = 10_000_000
# Kernel sizes, strides, dilations and paddings.
MAX_WINDOW = 512


@dataclass(frozen=True)
class Limit:
    """The inclusive range ``low..high`` of a key's number (each item's, for a list) and the
    most items its comma-separated list may hold."""

    low: float
    high: float
    items: int = 1

    def describe(self, noun: str) -> str:
        return f"{noun} >= {self.low:g} and <= {self.high:g}"


_FLAG = Limit(0, 1)
_FRACTION = Limit(0, 1)
_WINDOW = Limit(1, MAX_WINDOW)
_LOSS_WEIGHT = Limit(0, 1000)
_LAYER_REFERENCE = Limit(-MAX_SECTIONS, MAX_SECTIONS, items=MAX_SECTIONS)

# Keys with the same meaning in every section they appear in.
_COMMON = {
    "batch_normalize": _FLAG,
    "pad": _FLAG,
    "flip": _FLAG,
    "mosaic": _FLAG,
    "letter_box": _FLAG,
    "softmax": _FLAG,
    "rescore": _FLAG,
    "bias_match": _FLAG,
    "size": _WINDOW,
    "stride": _WINDOW,
    "stride_x": _WINDOW,
    "stride_y": _WINDOW,
    "dilation": _WINDOW,
    "padding": Limit(0, MAX_WINDOW),
    "filters": Limit(1, MAX_CHANNELS),
    "groups": Limit(1, MAX_CHANNELS),
    "group_id": Limit(0, MAX_CHANNELS - 1),
    "layers": _LAYER_REFERENCE,
    "from": _LAYER_REFERENCE,
    "probability": _FRACTION,
    "classes": Limit(1, 100_000),
    "coords": Limit(0, 100),
    "num": Limit(1, MAX_ANCHORS),
    "mask": Limit(0, MAX_ANCHORS - 1, items=MAX_ANCHORS),
    # Pixels ([yolo]) or grid cells ([region]), a width,height pair per anchor.
    "anchors": Limit(0, MAX_SIDE, items=2 * MAX_ANCHORS),
    "ignore_thresh": _FRACTION,
    "truth_thresh": _FRACTION,
    "iou_thresh": _FRACTION,
    "thresh": _FRACTION,
    "label_smooth_eps": _FRACTION,
    "scale_x_y": Limit(0, 10),
    "iou_normalizer": _LOSS_WEIGHT,
    "cls_normalizer": _LOSS_WEIGHT,
    "obj_normalizer": _LOSS_WEIGHT,
    "object_scale": _LOSS_WEIGHT,
    "noobject_scale": _LOSS_WEIGHT,
    "class_scale": _LOSS_WEIGHT,
    "coord_scale": _LOSS_WEIGHT,
    "max_delta": Limit(0, 1e6),
    # random >= 1 is darknet's largest multi-scale factor; ten times the cfg's size is plenty.
    "random": Limit(0, 10),
    "jitter": _FRACTION,
    # darknet multiplies an [upsample]'s output by scale.
    "scale": Limit(0, 1000),
}

# Keys whose meaning in a section type differs from the common one; the same bounds as the
# job's options (ae_model.options.TrainOptions) where a job may set the key too.
_BY_SECTION = {
    "net": {
        "batch": Limit(1, 4096),
        "subdivisions": Limit(1, 4096),
        "width": Limit(1, MAX_SIDE),
        "height": Limit(1, MAX_SIDE),
        "channels": Limit(1, MAX_CHANNELS),
        # Higher than a job's 10: a cfg may set a rate that diverges at once, and the Trainer
        # stops such a run with its message; finite, it overflows nothing here.
        "learning_rate": Limit(0, 1e12),
        "momentum": Limit(0, 1),
        "decay": Limit(0, 1),
        "burn_in": Limit(0, MAX_ITERATIONS),
        "max_batches": Limit(0, MAX_ITERATIONS),
        "power": Limit(0, 100),
        "step": Limit(1, MAX_ITERATIONS),
        "steps": Limit(0, MAX_ITERATIONS, items=1000),
        "scales": Limit(0, 1000, items=1000),
        # policy=step multiplies the rate by scale ** (iteration // step), exp by gamma **
        # iteration: a factor over 1 would overflow a float long before the last iteration.
        "scale": Limit(0, 1),
        "gamma": Limit(0, 1),
        "angle": Limit(-360, 360),
        "aspect": Limit(0, 100),
        "saturation": Limit(0, 100),
        "exposure": Limit(0, 100),
        "hue": _FRACTION,
        "adam": _FLAG,
        # torch.optim.Adam needs betas below 1; darknet's defaults are 0.9 and 0.999.
        "B1": Limit(0, 0.999999),
        "B2": Limit(0, 0.999999),
        "eps": Limit(0, 1),
        # ema_alpha=1 would keep the weights of the iteration the average starts at.
        "ema_alpha": Limit(0, 0.999999),
        "learning_rate_min": Limit(0, 1e12),
        "sgdr_cycle": Limit(1, MAX_ITERATIONS),
        "sgdr_mult": Limit(1, 1000),
    },
}


def key_limit(kind: str, key: str) -> Limit:
    """The bounds of ``key`` in a section of type ``kind`` (``net``, ``yolo``, ...)."""
    return _BY_SECTION.get(kind, {}).get(key) or _COMMON[key]
