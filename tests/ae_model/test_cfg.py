"""Parsing darknet cfgs: darknet's lexing, defaults, relative indices and errors naming lines."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from threading import Barrier

import pytest

from ae_model.cfg import (
    CfgError,
    ConvolutionalSection,
    MaxpoolSection,
    RegionSection,
    RouteSection,
    Section,
    ShortcutSection,
    YoloSection,
    bundled_cfg_path,
    list_bundled_cfgs,
    load_cfg,
    parse_cfg,
    resolve_cfg,
    retarget_classes,
)

NET = "[net]\nwidth=416\nheight=416\nchannels=3\n"


def parse(body: str, net: str = NET) -> list[Section]:
    """Sections of ``net + body`` (a cfg whose [net] is 416x416x3)."""
    return list(parse_cfg(net + body, "test.cfg").sections)


def warnings_of(body: str, net: str = NET) -> tuple[str, ...]:
    """The parse warnings of ``net + body``."""
    return parse_cfg(net + body, "test.cfg").warnings


def test_whitespace_comments_and_crlf_are_lexed_like_darknet() -> None:
    text = (
        "# a comment\r\n"
        "; another comment\r\n"
        "[ net ]\r\n"
        "  width = 4 16\r\n"  # darknet strips every whitespace character: 4 16 -> 416
        "height\t=\t416\r\n"
        "channels=3\r\n"
        "\r\n"
        "[convolutional]\r\n"
        "filters = 8   \r\n"
        "size=3\r\n"
        "pad=1\r\n"
        "activation= leaky\r\n"
    )
    config = parse_cfg(text)
    assert (config.net.width, config.net.height, config.net.channels) == (416, 416, 3)
    (conv,) = config.sections
    assert isinstance(conv, ConvolutionalSection)
    assert (conv.filters, conv.size, conv.padding, conv.activation) == (8, 3, 1, "leaky")
    assert conv.line == 8


def test_convolutional_defaults_are_darknets() -> None:
    (conv,) = parse("[convolutional]\n")
    assert isinstance(conv, ConvolutionalSection)
    # darknet: filters 1, size 1, stride 1, no padding, no batch norm, *logistic* activation.
    assert (conv.filters, conv.size, conv.stride_x, conv.stride_y) == (1, 1, 1, 1)
    assert (conv.padding, conv.groups, conv.dilation) == (0, 1, 1)
    assert conv.batch_normalize is False
    assert conv.activation == "logistic"


def test_pad_means_half_the_size_and_padding_is_used_otherwise() -> None:
    padded, explicit, unpadded = parse(
        "[convolutional]\nsize=5\npad=1\npadding=7\n"
        "[convolutional]\nsize=5\npadding=1\n"
        "[convolutional]\nsize=5\n"
    )
    assert isinstance(padded, ConvolutionalSection)
    assert isinstance(explicit, ConvolutionalSection)
    assert isinstance(unpadded, ConvolutionalSection)
    assert (padded.padding, explicit.padding, unpadded.padding) == (2, 1, 0)


def test_first_occurrence_of_a_key_wins_and_repeats_warn() -> None:
    config = parse_cfg(NET + "[convolutional]\nfilters=16\nfilters=32\n", "test.cfg")
    assert config.warnings == (
        "test.cfg:7: repeated key 'filters' in [convolutional] ignored; "
        "darknet uses the first one, at line 6",
    )
    (conv,) = config.sections
    assert isinstance(conv, ConvolutionalSection)
    assert conv.filters == 16
    assert conv.options["filters"] == "16"


def test_unknown_key_warns_with_file_and_line() -> None:
    assert warnings_of("[convolutional]\nfliters=16\n") == (
        "test.cfg:6: unknown key 'fliters' in [convolutional] ignored",
    )


def test_known_darknet_keys_and_assisted_excitation_do_not_warn() -> None:
    body = "[convolutional]\nfilters=8\nassisted_excitation=4000\n"
    net = NET + "mosaic=1\nmax_chart_loss=20\n"
    assert warnings_of(body, net) == ()
    (conv,) = parse(body, net)
    # The raw option is kept for ae_model.excitation.
    assert conv.options["assisted_excitation"] == "4000"


def test_warnings_are_the_parses_own_and_nothing_goes_through_the_warnings_module(
    recwarn: pytest.WarningsRecorder,
) -> None:
    # Threads parsing at once: each config holds its own warnings, none of another's.
    texts = [NET + f"[convolutional]\nunknown_{i}=1\n" for i in range(8)]
    start = Barrier(len(texts))

    def parse_when_all_are_ready(i: int) -> tuple[str, ...]:
        start.wait()
        return parse_cfg(texts[i], f"cfg{i}.cfg").warnings

    with ThreadPoolExecutor(len(texts)) as pool:
        results = list(pool.map(parse_when_all_are_ready, range(len(texts))))
    assert results == [
        (f"cfg{i}.cfg:6: unknown key 'unknown_{i}' in [convolutional] ignored",)
        for i in range(len(texts))
    ]
    assert not recwarn.list


def test_net_keeps_raw_options_and_typed_defaults() -> None:
    config = parse_cfg(
        NET + "burn_in=1000\npolicy=steps\nsteps=400,450\nscales=.1,.1\n[convolutional]\n"
    )
    net = config.net
    assert (net.burn_in, net.steps, net.scales, net.max_batches) == (
        1000,
        (400, 450),
        (0.1, 0.1),
        0,
    )
    assert (net.batch, net.subdivisions, net.momentum, net.decay) == (1, 1, 0.9, 0.0001)
    assert net["steps"] == "400,450"
    assert "burn_in" in net and "max_batches" not in net
    assert net.get("power", "4") == "4"


def test_negative_route_and_shortcut_indices_are_relative() -> None:
    sections = parse(
        "[convolutional]\nfilters=8\n"  # 0
        "[convolutional]\nfilters=8\n"  # 1
        "[shortcut]\nfrom=-2\n"  # 2 -> from 0
        "[route]\nlayers=-1, 0\n"  # 3 -> 2, 0
    )
    shortcut, route = sections[2], sections[3]
    assert isinstance(shortcut, ShortcutSection) and shortcut.from_layer == 0
    assert shortcut.activation == "linear"
    assert isinstance(route, RouteSection) and route.layers == (2, 0)


def test_maxpool_defaults_and_size_2_stride_1_keeps_13x13() -> None:
    config = parse_cfg(
        "[net]\nwidth=13\nheight=13\nchannels=4\n[maxpool]\nsize=2\nstride=1\n[maxpool]\nstride=2\n"
    )
    keep, halve = config.sections
    assert isinstance(keep, MaxpoolSection) and isinstance(halve, MaxpoolSection)
    assert keep.padding == 1  # darknet's default: size - 1
    assert (halve.size, halve.padding) == (2, 1)  # size defaults to stride
    rows = config.layer_table()
    assert rows[0].output == (13, 13, 4)  # (13 + 1 - 2) / 1 + 1
    assert rows[1].output == (7, 7, 4)  # (13 + 1 - 2) / 2 + 1


def test_stride_x_and_stride_y() -> None:
    config = parse_cfg(
        NET + "[convolutional]\nfilters=4\nsize=3\npad=1\nstride_x=2\n"
        "[maxpool]\nsize=2\nstride_y=2\nstride_x=1\n"
    )
    rows = config.layer_table(64, 32)
    assert rows[0].output == (32, 32, 4)
    assert rows[1].output == (32, 16, 4)


def test_yolo_and_region_parse_with_defaults() -> None:
    yolo_text = (
        "[convolutional]\nfilters=20\n[yolo]\nmask=0,2\nanchors=1,2, 3,4, 5,6\nnum=3\nclasses=5\n"
    )
    yolo = parse(yolo_text)[1]
    assert isinstance(yolo, YoloSection)
    assert yolo.anchors == ((1, 2), (3, 4), (5, 6))
    assert (yolo.mask, yolo.ignore_thresh, yolo.truth_thresh, yolo.iou_thresh) == (
        (0, 2),
        0.5,
        1,
        1,
    )
    assert (yolo.scale_x_y, yolo.iou_loss, yolo.iou_normalizer, yolo.max_delta) == (
        1.0,
        "mse",
        0.75,
        float("inf"),
    )
    region = parse("[convolutional]\nfilters=20\n[region]\nanchors=1,1,2,2\nnum=2\nclasses=5\n")[1]
    assert isinstance(region, RegionSection)
    assert (region.coords, region.softmax, region.thresh) == (4, False, 0.5)


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        ("[convolutional]\n[conv_lstm]\n", 6, r"unknown section \[conv_lstm\]"),
        ("[convolutional]\nfilters=sixteen\n", 6, r"filters=sixteen: expected an integer"),
        ("[convolutional]\nfilters=0\n", 6, r"filters=0: expected an integer >= 1"),
        ("[convolutional]\nactivation=swishy\n", 6, r"activation=swishy: expected one of"),
        ("[convolutional]\nsize=3\nstride=2\n[route]\nlayers=-2\n", 9, r"refers to layer -1"),
        ("[convolutional]\n[route]\nlayers=1\n", 7, r"refers to layer 1.*layers 0..0"),
        ("[convolutional]\n[shortcut]\nfrom=-5\n", 7, r"from=-5: -5 refers to layer -4"),
        (
            "[convolutional]\nfilters=8\n[convolutional]\nfilters=8\nsize=3\nstride=2\npad=1\n"
            "[shortcut]\nfrom=-2\n",
            12,
            r"layer 0 is 416x416x8 but the previous layer is 208x208x8",
        ),
        (
            "[convolutional]\nfilters=18\n[yolo]\nmask=0,1,2\nanchors=1,2,3\nnum=3\nclasses=1\n",
            9,
            r"anchors= has 3 numbers but num=3 needs 6",
        ),
        (
            "[convolutional]\nfilters=18\n[yolo]\nmask=0,1,2\nanchors=1,1,2,2,3,3\nnum=3\n"
            "classes=2\n",
            7,
            r"expects 3 masks \* \(classes=2 \+ 5\) = 21 input channels but gets 18",
        ),
        ("[route]\n", 5, r"needs layers="),
        ("[maxpool]\nsize=2\nstride=2\nmaxpool_depth=1\n", 8, r"maxpool_depth=1 is not supported"),
    ],
)
def test_errors_name_the_line_and_what_is_expected(body: str, line: int, message: str) -> None:
    with pytest.raises(CfgError, match=rf"^test.cfg:{line}: .*{message}"):
        parse(body)


def test_structural_errors() -> None:
    with pytest.raises(CfgError, match=r"x.cfg:1: the first section must be \[net\]"):
        parse_cfg("[convolutional]\n", "x.cfg")
    with pytest.raises(CfgError, match=r"x.cfg:1: 'width=' comes before the first section"):
        parse_cfg("width=3\n[net]\n", "x.cfg")
    with pytest.raises(CfgError, match=r"x.cfg:2: expected key=value"):
        parse_cfg("[net]\nwidth\n", "x.cfg")
    with pytest.raises(CfgError, match=r"x.cfg:1: \[net\] needs width=, height= and channels="):
        parse_cfg("[net]\nwidth=416\n[convolutional]\n", "x.cfg")
    with pytest.raises(CfgError, match=r"no layers"):
        parse_cfg(NET, "x.cfg")


def test_route_groups_slice_channels() -> None:
    config = parse_cfg(
        NET + "[convolutional]\nfilters=64\n[route]\nlayers=-1\ngroups=2\ngroup_id=1\n"
    )
    route = config.sections[1]
    assert isinstance(route, RouteSection) and (route.groups, route.group_id) == (2, 1)
    assert config.layer_table()[1].output == (416, 416, 32)
    with pytest.raises(CfgError, match=r"group_id=2: expected 0..1"):
        parse("[convolutional]\n[route]\nlayers=-1\ngroups=2\ngroup_id=2\n")


def test_bundled_cfgs_parse_without_warnings() -> None:
    names = list_bundled_cfgs()
    assert {"yolov3", "yolov3-tiny", "yolov3-small", "yolov3-tiny-small"} <= set(names)
    for name in names:
        config = load_cfg(bundled_cfg_path(name))
        assert config.sections and config.warnings == ()


def test_resolve_cfg_names_a_bundled_cfg_by_a_bare_name() -> None:
    path = bundled_cfg_path("yolov3-tiny")
    assert bundled_cfg_path("yolov3-tiny.cfg") == path
    by_name = resolve_cfg("yolov3-tiny")
    assert by_name.source == str(path)
    assert resolve_cfg(by_name) is by_name
    with pytest.raises(CfgError, match=r"no bundled cfg named 'yolov9-huge'; bundled: .*yolov3"):
        resolve_cfg("yolov9-huge")
    with pytest.raises(CfgError, match="no bundled cfg named"):
        bundled_cfg_path("../cfg")


def test_resolve_cfg_reads_a_path_like_or_a_str_with_a_separator_or_cfg_suffix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = bundled_cfg_path("yolov3-tiny-small").read_text()
    (tmp_path / "mine.cfg").write_text(text)
    (tmp_path / "no-suffix").write_text(text)
    monkeypatch.chdir(tmp_path)
    for reference in (
        tmp_path / "no-suffix",
        "mine.cfg",
        "./no-suffix",
        str(tmp_path / "mine.cfg"),
    ):
        config = resolve_cfg(reference)
        assert config.source == str(Path(reference))
        assert len(config.sections) == len(resolve_cfg("yolov3-tiny-small").sections)
    with pytest.raises(CfgError, match=r"no cfg file 'missing.cfg'"):
        resolve_cfg("missing.cfg")
    with pytest.raises(CfgError, match=r"no cfg file"):
        resolve_cfg(tmp_path / "missing")


def test_resolve_cfg_never_picks_a_file_named_like_a_bundled_cfg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "yolov3-tiny").write_text("[net]\nwidth=32\nheight=32\nchannels=1\n[maxpool]\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_cfg("yolov3-tiny").source == str(bundled_cfg_path("yolov3-tiny"))
    assert len(resolve_cfg("./yolov3-tiny").sections) == 1


def test_resolve_cfg_refuses_cfg_text() -> None:
    text = bundled_cfg_path("yolov3-tiny").read_text()
    with pytest.raises(CfgError, match=r"not cfg text; parse text with parse_cfg"):
        resolve_cfg(text)
    assert [s.options for s in parse_cfg(text).sections] == [
        s.options for s in resolve_cfg("yolov3-tiny").sections
    ]


def test_retarget_classes_changes_only_classes_and_head_filters() -> None:
    original = bundled_cfg_path("yolov3-tiny").read_text()
    retargeted = retarget_classes(original, 3)
    changed = [
        (old, new)
        for old, new in zip(original.split("\n"), retargeted.split("\n"), strict=True)
        if old != new
    ]
    assert (
        changed
        == [
            ("filters=255", "filters=24"),  # (3 + 5) * 3 masks
            ("classes=80", "classes=3"),
        ]
        * 2
    )
    config = parse_cfg(retargeted)
    assert {s.classes for s in config.sections if isinstance(s, YoloSection)} == {3}


def test_retarget_classes_region_spacing_crlf_and_missing_keys() -> None:
    text = (
        "[net]\r\nwidth=416\r\nheight=416\r\nchannels=3\r\n"
        "[convolutional]\r\nsize=1\r\n"  # no filters=: added under the header
        "[region]\r\nclasses = 20 \r\nnum=5\r\nanchors=1,1,2,2,3,3,4,4,5,5\r\n"
    )
    out = retarget_classes(text, 2)
    assert out == text.replace("[convolutional]\r\n", "[convolutional]\r\nfilters=35\r\n").replace(
        "classes = 20 \r\n", "classes = 2 \r\n"
    )  # (2 + 4 + 1) * 5
    assert parse_cfg(out).layer_table()[-1].output == (416, 416, 35)
    with pytest.raises(CfgError, match=r"does not follow a \[convolutional\]"):
        retarget_classes("[net]\n[maxpool]\n[yolo]\n", 2)
