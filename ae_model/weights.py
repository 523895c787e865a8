"""Darknet ``.weights`` files, read and written byte for byte as darknet does.

Layout (little-endian): int32 ``major``, ``minor``, ``revision``; ``seen`` (images trained on)
as uint64 when ``major * 10 + minor >= 2``, else uint32; then for each [convolutional] layer
in cfg order, float32 arrays:

- with ``batch_normalize=1``: beta (darknet's "biases"), gamma ("scales"), rolling mean,
  rolling variance, then the weights ``(filters, C/groups, size, size)``;
- without: biases, then the weights.

Truncated files such as ``darknet53.conv.74`` hold the first layers only; they load as far as
they go. ``load_start_weights`` starts a run from such a file or from a checkpoint, layer by
layer, re-initialising the layers whose shapes differ (another class count).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor

from ae_model.cfg import DarknetConfig
from ae_model.darknet import Darknet
from ae_model.layers import ConvolutionalLayer


class WeightsError(ValueError):
    """A .weights file that does not fit the network; the message says where and why."""


@dataclass(frozen=True)
class WeightsHeader:
    """The header of a .weights file. The default is what AlexeyAB's darknet writes."""

    major: int = 0
    minor: int = 2
    revision: int = 5
    seen: int = 0

    @property
    def seen_is_64bit(self) -> bool:
        return self.major * 10 + self.minor >= 2

    @property
    def nbytes(self) -> int:
        return 20 if self.seen_is_64bit else 16

    def to_bytes(self) -> bytes:
        return struct.pack(
            "<iii" + ("Q" if self.seen_is_64bit else "I"),
            self.major,
            self.minor,
            self.revision,
            self.seen,
        )

    @classmethod
    def from_bytes(cls, data: bytes | bytearray, name: str = "<weights>") -> WeightsHeader:
        if len(data) < 12:
            raise WeightsError(f"{name}: {len(data)} bytes is too short for a darknet header")
        major, minor, revision = struct.unpack_from("<iii", data)
        header = cls(major, minor, revision)
        if len(data) < header.nbytes:
            raise WeightsError(f"{name}: {len(data)} bytes is too short for a darknet header")
        (seen,) = struct.unpack_from("<Q" if header.seen_is_64bit else "<I", data, 12)
        return cls(major, minor, revision, seen)


@dataclass(frozen=True)
class LoadReport:
    """What ``load_darknet_weights`` read."""

    header: WeightsHeader
    layers_loaded: int  # [convolutional] layers read completely
    layers_expected: int  # [convolutional] layers below the cutoff
    last_layer: int  # darknet index of the last layer read; -1 when none
    params_loaded: int  # float32 values read

    @property
    def complete(self) -> bool:
        """True when every [convolutional] below the cutoff was in the file."""
        return self.layers_loaded == self.layers_expected


def darknet_tensors(layer: ConvolutionalLayer) -> list[Tensor]:
    """The tensors darknet stores for one [convolutional] layer, in file order."""
    bn = layer.bn
    if bn is None:
        assert layer.conv.bias is not None  # a conv without batch norm has a bias
        return [layer.conv.bias, layer.conv.weight]
    assert bn.running_mean is not None and bn.running_var is not None  # track_running_stats
    return [bn.bias, bn.weight, bn.running_mean, bn.running_var, layer.conv.weight]


def _conv_layers(model: Darknet, cutoff: int | None) -> list[tuple[int, ConvolutionalLayer]]:
    """``(index, layer)`` of the [convolutional] layers with index < cutoff (all for None)."""
    if cutoff is not None and cutoff < 0:
        raise ValueError(f"cutoff={cutoff}: expected a layer count >= 0")
    layers = list(model.layers)[:cutoff]
    return [(i, layer) for i, layer in enumerate(layers) if isinstance(layer, ConvolutionalLayer)]


def _read(path_or_file: str | os.PathLike[str] | BinaryIO) -> tuple[bytearray, str]:
    if isinstance(path_or_file, str | os.PathLike):
        with open(path_or_file, "rb") as f:
            return bytearray(f.read()), os.fspath(path_or_file)
    return bytearray(path_or_file.read()), str(getattr(path_or_file, "name", "<weights>"))


def load_darknet_weights(
    model: Darknet, path_or_file: str | os.PathLike[str] | BinaryIO, cutoff: int | None = None
) -> LoadReport:
    """Load darknet weights into ``model`` (in place) for layers ``0 .. cutoff-1``.

    A file that ends between two [convolutional] layers (a ``.conv.N`` backbone) loads the
    layers it holds; one that ends inside a layer, or (without ``cutoff``) has bytes left after
    the last layer, raises ``WeightsError``: the cfg and the weights do not match. The header
    is kept in ``model.weights_header`` so that saving writes it back unchanged.
    """
    data, name = _read(path_or_file)
    header = WeightsHeader.from_bytes(data, name)
    body = len(data) - header.nbytes
    if body % 4:
        raise WeightsError(
            f"{name}: the {body} bytes after the header are not whole float32 "
            "values; not a darknet .weights file?"
        )
    # A writable buffer lets torch.from_numpy share it without a warning or a copy.
    values = np.frombuffer(data, dtype="<f4", offset=header.nbytes).astype(np.float32, copy=False)
    layers = _conv_layers(model, cutoff)
    position, loaded, last = 0, 0, -1
    with torch.no_grad():
        for index, layer in layers:
            if position == len(values):
                break
            tensors = darknet_tensors(layer)
            needed = sum(t.numel() for t in tensors)
            if position + needed > len(values):
                raise WeightsError(
                    f"{name} ends inside layer {index} ([convolutional] at "
                    f"{model.sections[index].where}): it needs {needed} float32 values, "
                    f"{len(values) - position} are left; the cfg and the weights do not match"
                )
            for t in tensors:
                chunk = values[position : position + t.numel()]
                t.copy_(torch.from_numpy(chunk).view(t.shape))
                position += t.numel()
            loaded, last = loaded + 1, index
    if cutoff is None and position < len(values):
        raise WeightsError(
            f"{name} has {len(values) - position} float32 values after the last "
            f"[convolutional] (layer {last}); the weights are for another network "
            "(check the cfg's classes= and filters=)"
        )
    model.weights_header = header
    return LoadReport(header, loaded, len(layers), last, position)


def save_darknet_weights(
    model: Darknet,
    path: str | os.PathLike[str] | BinaryIO,
    cutoff: int | None = None,
    header: WeightsHeader | None = None,
    seen: int | None = None,
) -> None:
    """Write ``model`` as darknet .weights (layers ``0 .. cutoff-1``, all for None).

    ``header`` defaults to the one last loaded into the model, else ``WeightsHeader()``;
    ``seen``, when given, replaces its count of images trained on (darknet derives its
    iteration from it when it trains on from the file).
    """
    header = header or model.weights_header or WeightsHeader()
    if seen is not None:
        header = replace(header, seen=seen)
    if isinstance(path, str | os.PathLike):
        with open(path, "wb") as f:
            _write(model, f, cutoff, header)
    else:
        _write(model, path, cutoff, header)


def _write(model: Darknet, f: BinaryIO, cutoff: int | None, header: WeightsHeader) -> None:
    f.write(header.to_bytes())
    for _, layer in _conv_layers(model, cutoff):
        for t in darknet_tensors(layer):
            f.write(t.detach().to("cpu", torch.float32).numpy().astype("<f4", copy=False).tobytes())


@dataclass(frozen=True)
class StartReport:
    """Which layers a run's start weights set (``load_start_weights``); every other layer keeps
    its seeded initialisation. Layers are darknet indices of layers with parameters."""

    file: str  # the start file's name
    cutoff: int | None
    loaded: tuple[int, ...]
    reshaped: tuple[int, ...]  # re-initialised: the start's tensors have other shapes
    missing: tuple[int, ...]  # re-initialised: not in the start (past its cutoff or its end)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, as a run records it in ``resolved["start"]``."""
        return {
            "file": self.file,
            "cutoff": self.cutoff,
            "loaded": list(self.loaded),
            "reshaped": list(self.reshaped),
            "missing": list(self.missing),
        }

    def describe(self) -> str:
        """One line for a person: what was loaded, what was re-initialised and why."""
        cutoff = f" (first {self.cutoff} layers)" if self.cutoff is not None else ""
        text = (
            f"started from {self.file}{cutoff}: loaded {len(self.loaded)} layer(s) "
            f"{_spans(self.loaded)}"
        )
        if self.reshaped:
            text += (
                f"; re-initialised {_spans(self.reshaped)} (other shapes in the start: the "
                "heads and the convolutions feeding them when the classes differ)"
            )
        if self.missing:
            text += (
                f"; re-initialised {_spans(self.missing)} (not in the start: past its end or "
                "cutoff)"
            )
        return text


def _spans(indices: tuple[int, ...]) -> str:
    """``(0, 1, 2, 5)`` -> ``"0-2, 5"``; ``"none"`` when empty."""
    spans: list[list[int]] = []
    for i in indices:
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in spans) or "none"


def _layer_of(key: str) -> int | None:
    """``"layers.12.conv.weight"`` -> 12; None for a key outside the layers (AE modules)."""
    prefix, _, rest = key.partition(".")
    index = rest.partition(".")[0]
    return int(index) if prefix == "layers" and index.isdigit() else None


def _start_state(
    path: Path, file_cfg: DarknetConfig | None, cutoff: int | None
) -> dict[str, Tensor]:
    """The start's tensors by state-dict key: a checkpoint's weights (their moving average when
    the run kept one, ``ema_alpha``: what it was evaluated and exported with), or the layers a
    .weights file for ``file_cfg`` holds."""
    if path.suffix == ".pt":
        # An aetrain checkpoint also holds its config and RNG states (plain Python objects).
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        state: dict[str, Tensor] = checkpoint["model"]
        ema = checkpoint.get("ema")
        if ema is not None and int(ema["n_averaged"]) > 0:
            # AveragedModel's state: the network under "module.", and its counter.
            state = {k.removeprefix("module."): v for k, v in ema.items() if k != "n_averaged"}
        return state
    if file_cfg is None:
        raise ValueError(f"{path}: a darknet .weights start needs the cfg it was made for")
    # Building the file's network draws initial weights; the run's seeded RNG must not move.
    with torch.random.fork_rng(devices=[]):
        source = Darknet(file_cfg)
    report = load_darknet_weights(source, path, cutoff)
    return {
        key: value
        for key, value in source.state_dict().items()
        if (_layer_of(key) or 0) <= report.last_layer
    }


def load_start_weights(
    model: Darknet,
    path: str | os.PathLike[str],
    file_cfg: DarknetConfig | None = None,
    cutoff: int | None = None,
) -> StartReport:
    """Start ``model`` (in place) from a darknet ``.weights`` file made for ``file_cfg``, or
    from an aetrain checkpoint (``.pt``), for layers ``0 .. cutoff-1`` (all for None).

    Layer by layer: a layer is loaded when the start has each of its tensors with the same
    shape; otherwise (the heads and the convolutions feeding them, retargeted to other classes,
    or layers past the start's cutoff or end) it keeps its initialisation. Raises
    ``WeightsError`` for a .weights file that does not fit ``file_cfg``.
    """
    path = Path(path)
    start = _start_state(path, file_cfg, cutoff)
    layers: dict[int, list[str]] = {}
    for key in model.state_dict():
        index = _layer_of(key)
        if index is not None and (cutoff is None or index < cutoff):
            layers.setdefault(index, []).append(key)
    target = model.state_dict()
    loaded, reshaped, missing = [], [], []
    for index, keys in sorted(layers.items()):
        if any(key not in start for key in keys):
            missing.append(index)
        elif any(start[key].shape != target[key].shape for key in keys):
            reshaped.append(index)
        else:
            loaded.append(index)
    chosen = {key: start[key] for index in loaded for key in layers[index]}
    model.load_state_dict(chosen, strict=False)
    missing += [i for i in {_layer_of(k) for k in target} if i is not None and i not in layers]
    return StartReport(
        path.name, cutoff, tuple(loaded), tuple(reshaped), tuple(sorted(set(missing)))
    )
