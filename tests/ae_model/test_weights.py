"""Darknet .weights: file layout, sizes of the published files, round trips, truncation, errors."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ae_model.darknet import Darknet
from ae_model.layers import ConvolutionalLayer
from ae_model.weights import (
    LoadReport,
    WeightsError,
    WeightsHeader,
    darknet_tensors,
    load_darknet_weights,
    save_darknet_weights,
)


def darknet_floats(model: Darknet) -> int:
    """float32 values of a full .weights file for ``model``."""
    return sum(
        t.numel()
        for layer in model.layers
        if isinstance(layer, ConvolutionalLayer)
        for t in darknet_tensors(layer)
    )


def random_weights_file(model: Darknet, header: WeightsHeader, seed: int = 0) -> bytes:
    """A .weights file of random floats (variances positive) that fits ``model``."""
    values = np.random.default_rng(seed).random(darknet_floats(model), dtype=np.float32) + 0.5
    return header.to_bytes() + values.astype("<f4").tobytes()


@pytest.fixture(scope="module")
def tiny_small() -> Darknet:
    return Darknet("yolov3-tiny-small")


def test_yolov3_tiny_file_is_35434956_bytes_and_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Darknet("yolov3-tiny")
    path = tmp_path / "yolov3-tiny.weights"
    save_darknet_weights(model, path)
    # The published yolov3-tiny.weights: 20-byte header + 8,858,734 float32.
    assert path.stat().st_size == 35_434_956 == 20 + 4 * 8_858_734
    fresh = Darknet("yolov3-tiny")
    report = load_darknet_weights(fresh, path)
    assert report.complete and report.layers_loaded == report.layers_expected == 13
    assert report.params_loaded == 8_858_734 and report.last_layer == 22
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        if a.is_floating_point():
            assert torch.equal(a, b), name
    again = tmp_path / "again.weights"
    save_darknet_weights(fresh, again)
    assert again.read_bytes() == path.read_bytes()


@pytest.mark.parametrize(
    ("name", "parameters", "floats"),
    [
        # torch parameters exclude batch norm's running mean and variance; the file holds them.
        ("yolov3", 61_949_149, 62_001_757),  # yolov3.weights: 20 + 4 * floats = 248,007,048
        # yolov2.weights has the old 16-byte header: 16 + 4 * 50,983,561 = 203,934,260 bytes.
        ("yolov2", 50_962_889, 50_983_561),
        ("yolov4-tiny", 6_056_606, 6_062_814),  # yolov4-tiny.weights: 24,251,276 bytes
        # 11,237,145 - 2 * (16 + 32 + 64 + 128 + 256 + 512 + 1024 + 512) batch norm channels
        ("yolov2-tiny", 11_232_057, 11_237_145),  # yolov2-tiny.weights: 44,948,600 bytes
    ],
)
def test_parameter_and_file_sizes_of_the_published_networks(
    name: str, parameters: int, floats: int
) -> None:
    model = Darknet(name)
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert darknet_floats(model) == floats


def test_byte_identical_round_trip_of_a_file(tmp_path: Path, tiny_small: Darknet) -> None:
    data = random_weights_file(tiny_small, WeightsHeader(0, 2, 0, seen=32_013_312))
    path = tmp_path / "in.weights"
    path.write_bytes(data)
    report = load_darknet_weights(tiny_small, path)
    assert report.header == WeightsHeader(0, 2, 0, 32_013_312)
    assert tiny_small.weights_header == report.header
    out = io.BytesIO()
    save_darknet_weights(tiny_small, out)
    assert out.getvalue() == data


def test_old_header_has_a_32_bit_seen(tiny_small: Darknet) -> None:
    # darknet before 0.2 (the published yolov2.weights: 16 + 4 * 50,983,561 = 203,934,260 bytes)
    header = WeightsHeader(0, 1, 0, seen=1_024_000)
    assert header.nbytes == 16 and not header.seen_is_64bit
    data = random_weights_file(tiny_small, header)
    assert data[:16] == struct.pack("<iiiI", 0, 1, 0, 1_024_000)
    report = load_darknet_weights(tiny_small, io.BytesIO(data))
    assert report.header == header and report.complete
    out = io.BytesIO()
    save_darknet_weights(tiny_small, out)
    assert out.getvalue() == data


def test_values_land_in_darknets_order(tiny_small: Darknet) -> None:
    floats = darknet_floats(tiny_small)
    data = WeightsHeader().to_bytes() + np.arange(floats, dtype="<f4").tobytes()
    load_darknet_weights(tiny_small, io.BytesIO(data))
    conv0 = tiny_small.layers[0]
    assert isinstance(conv0, ConvolutionalLayer) and conv0.bn is not None
    # Layer 0 (batch_normalize, 4 filters of 3x3x3): beta, gamma, mean, variance, weights.
    assert conv0.bn.bias.tolist() == [0, 1, 2, 3]
    assert conv0.bn.weight.tolist() == [4, 5, 6, 7]
    assert conv0.bn.running_mean is not None and conv0.bn.running_var is not None
    assert conv0.bn.running_mean.tolist() == [8, 9, 10, 11]
    assert conv0.bn.running_var.tolist() == [12, 13, 14, 15]
    assert conv0.conv.weight.flatten().tolist() == list(range(16, 16 + 4 * 27))
    assert conv0.conv.weight[1, 0, 0].tolist() == [16 + 27, 17 + 27, 18 + 27]  # (n, c, ky, kx)
    # The last layer (no batch norm, 45 filters of 1x1x64): biases, then weights.
    last = tiny_small.layers[22]
    assert isinstance(last, ConvolutionalLayer) and last.conv.bias is not None
    start = floats - 45 - 45 * 64
    assert last.conv.bias.tolist() == list(range(start, start + 45))
    assert last.conv.weight[0, :2, 0, 0].tolist() == [start + 45, start + 46]


def test_truncated_backbone_file_loads_the_layers_it_holds(
    tmp_path: Path, tiny_small: Darknet
) -> None:
    # Like yolov3-tiny.conv.15: darknet's `partial` writes layers 0..14.
    path = tmp_path / "tiny-small.conv.15"
    save_darknet_weights(tiny_small, path, cutoff=15)
    held = [i for i in range(15) if isinstance(tiny_small.layers[i], ConvolutionalLayer)]
    report = load_darknet_weights(Darknet("yolov3-tiny-small"), path)
    assert report == LoadReport(
        header=WeightsHeader(),
        layers_loaded=len(held),
        layers_expected=13,
        last_layer=held[-1],
        params_loaded=(path.stat().st_size - 20) // 4,
    )
    assert not report.complete
    # With cutoff, a full file loads only the first layers and the rest is not an error.
    full = tmp_path / "full.weights"
    save_darknet_weights(tiny_small, full)
    report = load_darknet_weights(Darknet("yolov3-tiny-small"), full, cutoff=15)
    assert report.complete and report.layers_loaded == len(held)


def test_wrong_sizes_are_errors(tiny_small: Darknet) -> None:
    data = random_weights_file(tiny_small, WeightsHeader())
    with pytest.raises(
        WeightsError,
        match=r"ends inside layer 22 \(\[convolutional\] at .*"
        r"yolov3-tiny-small.cfg:\d+\): it needs 2925 float32 values, 2924 are left",
    ):
        load_darknet_weights(tiny_small, io.BytesIO(data[:-4]))
    with pytest.raises(
        WeightsError,
        match=r"1 float32 values after the last \[convolutional\] "
        r"\(layer 22\)",
    ):
        load_darknet_weights(tiny_small, io.BytesIO(data + bytes(4)))
    with pytest.raises(WeightsError, match="not whole float32 values"):
        load_darknet_weights(tiny_small, io.BytesIO(data + bytes(2)))
    with pytest.raises(WeightsError, match="too short for a darknet header"):
        load_darknet_weights(tiny_small, io.BytesIO(data[:18]))
    with pytest.raises(ValueError, match="cutoff=-1"):
        load_darknet_weights(tiny_small, io.BytesIO(data), cutoff=-1)
