"""Darknet ``.weights`` files, read and written byte for byte as darknet does.

Layout (little-endian): int32 ``major``, ``minor``, ``revision``; ``seen`` (images trained on)
as uint64 when ``major * 10 + minor >= 2``, else uint32; then for each [convolutional] layer
in cfg order, float32 arrays:

- with ``batch_normalize=1``: beta (darknet's "biases"), gamma ("scales"), rolling mean,
  rolling variance, then the weights ``(filters, C/groups, size, size)``;
- without: biases, then the weights.

Truncated files such as ``darknet53.conv.74`` hold the first layers only; they load as far as
they go.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import torch
from torch import Tensor

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
) -> None:
    """Write ``model`` as darknet .weights (layers ``0 .. cutoff-1``, all for None).

    ``header`` defaults to the one last loaded into the model, else ``WeightsHeader()``.
    """
    header = header or model.weights_header or WeightsHeader()
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
