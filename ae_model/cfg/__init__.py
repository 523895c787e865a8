"""Darknet ``.cfg`` files: darknet's lexing and defaults, shape inference and the layer table.

Torch-free on purpose: the API and the CLI read cfgs and print layer tables without importing
torch. ``ae_model.layers`` builds the PyTorch modules from the sections parsed here.

- ``lexer``: text into raw ``[section]``s, as darknet's ``read_cfg``; :class:`CfgError`.
- ``limits``: the bounds on a cfg's text, numbers, lists and layer outputs, declared once.
- ``sections``: ``[net]`` options and a class per layer type, with shapes and BFLOPs.
- ``parser``: darknet's defaults and checks per section: :func:`parse_cfg`, :class:`DarknetConfig`.
- ``bundled``: the cfgs in ``bundled/`` and :func:`resolve_cfg` (a name, a path or a config).
- ``table``: darknet's layer table and its text format.
- ``edit``: edits of cfg text that keep every other byte (:func:`retarget_classes`,
  :func:`set_anchors`).
- ``multiscale``: darknet's multi-scale input sizes (``random=``).

The names below are the package's interface (each defined in one of those modules); the
lexer's raw sections and the vocabularies the parser checks are imported from their modules.
"""

from ae_model.cfg.bundled import bundled_cfg_path, list_bundled_cfgs, resolve_cfg
from ae_model.cfg.edit import retarget_classes, set_anchors
from ae_model.cfg.lexer import CfgError
from ae_model.cfg.multiscale import (
    SIZE_STEP,
    darknet_side,
    largest_multiscale_size,
    multiscale_coef,
    resolve_random,
)
from ae_model.cfg.parser import DarknetConfig, load_cfg, parse_cfg
from ae_model.cfg.sections import (
    ACTIVATIONS,
    IOU_LOSSES,
    AvgpoolSection,
    ConvolutionalSection,
    DropoutSection,
    MaxpoolSection,
    NetOptions,
    RegionSection,
    ReorgSection,
    RouteSection,
    Section,
    Shape,
    ShortcutSection,
    UpsampleSection,
    YoloSection,
)
from ae_model.cfg.table import LayerRow, format_layer_table, layer_table

__all__ = [
    "ACTIVATIONS",
    "IOU_LOSSES",
    "SIZE_STEP",
    "AvgpoolSection",
    "CfgError",
    "ConvolutionalSection",
    "DarknetConfig",
    "DropoutSection",
    "LayerRow",
    "MaxpoolSection",
    "NetOptions",
    "RegionSection",
    "ReorgSection",
    "RouteSection",
    "Section",
    "Shape",
    "ShortcutSection",
    "UpsampleSection",
    "YoloSection",
    "bundled_cfg_path",
    "darknet_side",
    "format_layer_table",
    "largest_multiscale_size",
    "layer_table",
    "list_bundled_cfgs",
    "load_cfg",
    "multiscale_coef",
    "parse_cfg",
    "resolve_cfg",
    "resolve_random",
    "retarget_classes",
    "set_anchors",
]
