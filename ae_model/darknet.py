"""``Darknet``: a darknet cfg as one PyTorch module, indexed like darknet's layers.

See docs/contracts.md ("Darknet network") for what other ae_model modules rely on.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ae_model.cfg import (
    CfgError,
    DarknetConfig,
    LayerRow,
    NetOptions,
    Section,
    format_layer_table,
    resolve_cfg,
)
from ae_model.layers import RegionLayer, RouteLayer, ShortcutLayer, YoloLayer, build_layer

if TYPE_CHECKING:
    from ae_model.weights import WeightsHeader

# format_layer_table and LayerRow live in the torch-free ae_model.cfg (the API prints tables
# without torch); they are re-exported here, where the model's layer_table() returns them.
__all__ = ["Darknet", "LayerRow", "format_layer_table"]

Head = YoloLayer | RegionLayer


class Darknet(nn.Module):
    """A darknet network built from a cfg: a parsed ``DarknetConfig`` (``parse_cfg`` reads cfg
    text), a cfg file's path or a bundled cfg's name (see ``resolve_cfg``).

    ``forward(x)``, ``x`` ``(B, C, H, W)`` with H and W multiples of 32 (the input size is
    read from ``x``, so multi-scale training just feeds other sizes):

    - training: a list with each head's raw map, ``(B, A*(5+classes), h, w)``;
    - eval: ``(B, N, 5+classes)`` decoded boxes of all heads (see ``YoloLayer.decode``).

    ``excitations[str(i)]`` (empty by default) is applied to layer ``i``'s output before any
    later layer reads it.
    """

    def __init__(self, cfg: str | os.PathLike[str] | DarknetConfig) -> None:
        super().__init__()
        self.config = resolve_cfg(cfg)
        self.net: NetOptions = self.config.net
        self.sections: list[Section] = list(self.config.sections)
        rows = self.config.layer_table()
        self.layers = nn.ModuleList(
            build_layer(s, row.input) for s, row in zip(self.sections, rows, strict=True)
        )
        self.excitations = nn.ModuleDict()
        self.heads: list[Head] = [m for m in self.layers if isinstance(m, YoloLayer | RegionLayer)]
        if not self.heads:
            raise CfgError(
                f"{self.config.source}: no [yolo] or [region] layer; aetrain builds detectors"
            )
        classes = sorted({head.classes for head in self.heads})
        if len(classes) > 1:
            raise CfgError(
                f"{self.config.source}: the [yolo]/[region] layers have classes={classes}; "
                "their outputs are concatenated, so they need the same classes="
            )
        # The header of the last .weights file loaded, written back by save_darknet_weights.
        self.weights_header: WeightsHeader | None = None

        # Keep only outputs that a later route/shortcut reads, and drop each after its last use.
        last_use: dict[int, int] = {}
        for i, layer in enumerate(self.layers):
            for source in _sources(layer):
                last_use[source] = i
        self._saved = frozenset(last_use)
        release: defaultdict[int, list[int]] = defaultdict(list)
        for source, user in last_use.items():
            release[user].append(source)
        self._release = [tuple(release[i]) for i in range(len(self.layers))]

    def layer_table(self, width: int, height: int) -> list[LayerRow]:
        """Darknet's layer table for a ``width x height`` input."""
        return self.config.layer_table(width, height)

    def forward(self, x: Tensor) -> list[Tensor] | Tensor:
        input_height, input_width = x.shape[-2:]
        saved: dict[int, Tensor] = {}
        outputs: list[Tensor] = []
        for i, layer in enumerate(self.layers):
            if isinstance(layer, RouteLayer):
                x = layer([saved[j] for j in layer.sources])
            elif isinstance(layer, ShortcutLayer):
                x = layer(x, saved[layer.from_layer])
            elif isinstance(layer, YoloLayer | RegionLayer):
                # A head's input flows on unchanged (darknet passes its activated copy).
                outputs.append(layer(x, input_width, input_height))
            else:
                x = layer(x)
            key = str(i)
            if key in self.excitations:
                x = self.excitations[key](x)
            if i in self._saved:
                saved[i] = x
            for j in self._release[i]:
                del saved[j]
        return outputs if self.training else torch.cat(outputs, dim=1)


def _sources(layer: nn.Module) -> tuple[int, ...]:
    if isinstance(layer, RouteLayer):
        return layer.sources
    if isinstance(layer, ShortcutLayer):
        return (layer.from_layer,)
    return ()
