"""Cfgs written to exhaust the parser: every size, count, list and number is bounded before
anything is built, every layer's output as it is computed, and numbers must be finite.

Each case must be refused with a ``CfgError`` naming the line and key (or layer) quickly and in
little memory; generated cfgs must parse or be refused the same way.
"""

from __future__ import annotations

import re
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ae_model.cfg import CfgError, parse_cfg
from ae_model.cfg.limits import MAX_CFG_CHARS, MAX_KEYS_PER_SECTION, MAX_SECTIONS

NET = "[net]\nwidth=416\nheight=416\nchannels=3\n"
HEAD = "[convolutional]\nfilters=18\n[yolo]\nmask=0,1,2\nanchors=1,1,2,2,3,3\nnum=3\nclasses=1\n"
SECONDS = 1.0
PEAK_BYTES = 50 * 2**20


@contextmanager
def bounded(seconds: float = SECONDS, peak_bytes: int = PEAK_BYTES) -> Iterator[None]:
    """Fail unless the block takes under ``seconds`` and allocates under ``peak_bytes``."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert elapsed < seconds, f"took {elapsed:.2f} s"
    assert peak < peak_bytes, f"allocated {peak / 2**20:.1f} MiB"


def refused(text: str) -> str:
    """The message of the ``CfgError`` parsing ``text`` raises, within the time and memory."""
    with bounded(), pytest.raises(CfgError) as error:
        parse_cfg(text, "x.cfg")
    return str(error.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # The issue's [yolo] with a huge num and no mask (it built range(num)).
        (
            NET + "[convolutional]\nfilters=18\n[yolo]\nnum=1000000000000\nclasses=1\n",
            r"^x.cfg:8: \[yolo\] num=1000000000000: expected an integer >= 1 and <= 1000$",
        ),
        (
            "[net]\nwidth=" + "9" * 300 + "\nheight=416\nchannels=3\n[convolutional]\n",
            r"^x.cfg:2: \[net\] width=9{40}\.\.\. \(300 characters\): expected an integer >= 1 "
            r"and <= 65536$",
        ),
        (NET + "[convolutional]\nfilters=1e400\n", r"^x.cfg:6: \[convolutional\] filters=1e400"),
        (NET + "[convolutional]\nfilters=65537\n", r"filters=65537: expected an integer >= 1 and"),
        (NET + "[convolutional]\nsize=100000\n", r"size=100000: expected an integer >= 1 and"),
        (NET + "[maxpool]\nstride=-3\n", r"stride=-3: expected an integer >= 1 and <= 512"),
        (NET + "[upsample]\nstride=1000000\n", r"\[upsample\] stride=1000000: expected"),
        (NET + "[route]\nlayers=-" + "9" * 50 + "\n", r"layers=-9{39}\.\.\. \(51 characters\)"),
        (NET + "[convolutional]\ngroups=99999999\n", r"groups=99999999: expected an integer"),
        (NET + "max_batches=1000000000000\n[convolutional]\n", r"max_batches=1000000000000"),
        ("[net]\nwidth=416\nheight=416\nchannels=0\n[convolutional]\n", r"channels=0: expected"),
        # Non-finite numbers, in keys read, in lists and in keys kept raw.
        (NET + "learning_rate=nan\n[convolutional]\n", r"^x.cfg:5: \[net\] learning_rate=nan: "),
        (NET + "learning_rate=inf\n[convolutional]\n", r"learning_rate=inf: not a finite number"),
        (NET + "momentum=-1e400\n[convolutional]\n", r"momentum=-1e400: not a finite number"),
        (NET + "decay=" + "9" * 400 + "\n[convolutional]\n", r"decay=9{40}\.\.\. .*not a finite"),
        (
            NET + "policy=steps\nsteps=10,20\nscales=.1,nan\n[convolutional]\n",
            r"^x.cfg:7: \[net\] scales=\.1,nan: nan is not a finite number; expected numbers >= 0",
        ),
        (
            NET + "[convolutional]\nfilters=6\n[yolo]\nnum=1\nanchors=1,Infinity\nclasses=1\n",
            r"^x.cfg:9: \[yolo\] anchors=1,Infinity: Infinity is not a finite number",
        ),
        (NET + HEAD + "jitter=nan\n", r"\[yolo\] jitter=nan: not a finite number"),
        (NET + HEAD + "random=1e300\n", r"\[yolo\] random=1e300: expected a number >= 0 and <= 10"),
        (NET + "learning_rate_min=nan\n[convolutional]\n", r"^x.cfg:5: \[net\] learning_rate_min"),
        (NET + "[convolutional]\nassisted_excitation=inf\n", r"^x.cfg:6: .*assisted_excitation="),
        (NET + "[convolutional]\nmy_own_key=1,-inf\n", r"my_own_key=1,-inf: -inf is not a finite"),
        (NET + "[dropout]\nprobability=NaN\n", r"probability=NaN: not a finite number"),
        # Lists: their length is checked before they are split.
        (
            NET + "policy=steps\nsteps=" + "1," * 200_000 + "1\nscales=.1\n[convolutional]\n",
            r"steps=1,1,.*\(400001 characters\): expected at most 1000 comma-separated items",
        ),
        (
            NET + "[convolutional]\nfilters=6\n[yolo]\nmask=" + "0," * 5000 + "0\nclasses=1\n",
            r"\[yolo\] mask=.*: expected at most 1000 comma-separated items",
        ),
        (NET + "[convolutional]\n[route]\nlayers=" + "-1," * 3000 + "\n", r"at most 2000 comma"),
    ],
)
def test_hostile_numbers_are_refused_naming_the_line_and_key(text: str, message: str) -> None:
    error = refused(text)
    assert re.search(message, error), error


def test_the_text_its_sections_and_keys_are_bounded() -> None:
    assert "more than" in refused("#" * (MAX_CFG_CHARS + 1))
    many_layers = NET + "[dropout]\n" * MAX_SECTIONS
    assert f"x.cfg:{MAX_SECTIONS + 4}: more than {MAX_SECTIONS} sections" in refused(many_layers)
    many_keys = NET + "".join(f"k{i}=1\n" for i in range(MAX_KEYS_PER_SECTION))
    assert f"[net] has more than {MAX_KEYS_PER_SECTION} key=value lines" in refused(many_keys)
    repeats = NET + "[convolutional]\n" + "filters=1\n" * (MAX_KEYS_PER_SECTION + 1)
    assert "[convolutional] has more than" in refused(repeats)


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        # 1,100 doubling upsamples: layer 7 is the first output over 2**31 values (53248**2).
        (
            "[upsample]\nstride=2\n",
            r"^x.cfg:19: \[upsample\] \(layer 7\) output 53248x53248x1 is too",
        ),
        # 1,100 routes doubling the channels: 416 * 416 * 16384 values at layer 14.
        (
            "[route]\nlayers=-1,-1\n",
            r"^x.cfg:33: \[route\] \(layer 14\) output 416x416x16384 is too",
        ),
    ],
)
def test_layers_that_grow_without_end_stop_at_the_first_too_large_output(
    layer: str, message: str
) -> None:
    error = refused(NET + "[convolutional]\nfilters=1\n" + layer * 1100)
    assert re.search(message, error), error


def test_the_input_is_bounded_at_any_size() -> None:
    config = parse_cfg(NET + "[convolutional]\nfilters=1\n[upsample]\nstride=64\n", "x.cfg")
    assert config.layer_table()[-1].output == (26624, 26624, 1)
    with bounded(), pytest.raises(CfgError, match=r"^x.cfg:7: \[upsample\] \(layer 1\) output"):
        config.layer_table(4096, 4096)
    with pytest.raises(CfgError, match=r"^x.cfg: the input 70000x32x3 is too large"):
        config.layer_table(70000, 32)


NUMBERS = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.integers(0, 3000).map(lambda n: "9" * n),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "-inf", "Infinity", "1e400", "-1e-400", "0x10", "1_0", "", "a"]),
)
# Values that fit most keys, so that many generated cfgs parse and reach the layer table.
PLAIN = st.sampled_from(["0", "1", "2", "3", "-1", "-2", "16", ".5", "leaky", "steps"])
VALUES = st.one_of(
    PLAIN, PLAIN, PLAIN, NUMBERS, st.lists(st.one_of(PLAIN, NUMBERS), max_size=50).map(",".join)
)
KEYS = st.sampled_from(
    ["width", "height", "channels", "batch", "subdivisions", "learning_rate", "momentum",
     "max_batches", "burn_in", "policy", "steps", "scales", "gamma", "scale", "filters", "size",
     "stride", "pad", "padding", "groups", "group_id", "dilation", "layers", "from", "num",
     "classes", "mask", "anchors", "random", "jitter", "coords", "probability", "max_delta",
     "assisted_excitation", "activation", "unknown"]
)  # fmt: skip
SECTIONS = st.sampled_from(
    ["convolutional", "maxpool", "avgpool", "upsample", "route", "shortcut", "reorg",
     "dropout", "yolo", "region"]
)  # fmt: skip
OPTIONS = st.dictionaries(KEYS, VALUES, max_size=4)


def _section(name: str, options: dict[str, str]) -> str:
    return f"[{name}]\n" + "".join(f"{key}={value}\n" for key, value in options.items())


CFGS = st.builds(
    lambda net, layers: (
        _section("net", {"width": "64", "height": "64", "channels": "3", **net})
        + "".join(_section(name, options) for name, options in layers)
    ),
    st.dictionaries(KEYS, VALUES, max_size=2),
    st.lists(st.tuples(SECTIONS, OPTIONS), min_size=1, max_size=30),
)


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(text=CFGS, size=st.tuples(st.integers(1, 70000), st.integers(1, 70000)))
def test_generated_cfgs_parse_or_are_refused_quickly_in_little_memory(
    text: str, size: tuple[int, int]
) -> None:
    with bounded():
        try:
            config = parse_cfg(text, "x.cfg")
        except CfgError:
            return
        with suppress(CfgError):
            config.layer_table(*size)
