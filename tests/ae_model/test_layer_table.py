"""Darknet's layer table: sizes, BFLOPs against darknet's printed totals, text format, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ae_model.cfg import bundled_cfg_path, format_layer_table, layer_table, load_cfg
from ae_model.cli import app

# AlexeyAB's darknet prints this for yolov3-tiny.cfg at 416x416 (route rows: "->" aligned here
# with spaces where darknet uses tabs). By hand:
#   layer 0 conv: 2 * (3 in / 1 group) * 16 filters * 3*3 * 416*416 / 1e9 = 0.1495 -> 0.150
#   layer 1 max:  2*2 (size) * 16 channels * 208*208 / 1e9               = 0.0028 -> 0.003
#   layer 11 max: size 2, stride 1, padding 1: (13 + 1 - 2) / 1 + 1 = 13, so 13x13 stays
#   layer 12 conv: 2 * 512 * 1024 * 3*3 * 13*13 / 1e9                    = 1.5949 -> 1.595
#   layer 20 route 19 8: 128 + 256 = 384 channels at 26x26
YOLOV3_TINY_416 = """\
   layer   filters  size/strd(dil)      input                output
   0 conv     16       3 x 3/ 1    416 x 416 x   3 ->  416 x 416 x  16 0.150 BF
   1 max                2x 2/ 2    416 x 416 x  16 ->  208 x 208 x  16 0.003 BF
   2 conv     32       3 x 3/ 1    208 x 208 x  16 ->  208 x 208 x  32 0.399 BF
   3 max                2x 2/ 2    208 x 208 x  32 ->  104 x 104 x  32 0.001 BF
   4 conv     64       3 x 3/ 1    104 x 104 x  32 ->  104 x 104 x  64 0.399 BF
   5 max                2x 2/ 2    104 x 104 x  64 ->   52 x  52 x  64 0.001 BF
   6 conv    128       3 x 3/ 1     52 x  52 x  64 ->   52 x  52 x 128 0.399 BF
   7 max                2x 2/ 2     52 x  52 x 128 ->   26 x  26 x 128 0.000 BF
   8 conv    256       3 x 3/ 1     26 x  26 x 128 ->   26 x  26 x 256 0.399 BF
   9 max                2x 2/ 2     26 x  26 x 256 ->   13 x  13 x 256 0.000 BF
  10 conv    512       3 x 3/ 1     13 x  13 x 256 ->   13 x  13 x 512 0.399 BF
  11 max                2x 2/ 1     13 x  13 x 512 ->   13 x  13 x 512 0.000 BF
  12 conv   1024       3 x 3/ 1     13 x  13 x 512 ->   13 x  13 x1024 1.595 BF
  13 conv    256       1 x 1/ 1     13 x  13 x1024 ->   13 x  13 x 256 0.089 BF
  14 conv    512       3 x 3/ 1     13 x  13 x 256 ->   13 x  13 x 512 0.399 BF
  15 conv    255       1 x 1/ 1     13 x  13 x 512 ->   13 x  13 x 255 0.044 BF
  16 yolo
  17 route  13                                     ->   13 x  13 x 256
  18 conv    128       1 x 1/ 1     13 x  13 x 256 ->   13 x  13 x 128 0.011 BF
  19 upsample                 2x    13 x  13 x 128 ->   26 x  26 x 128
  20 route  19 8                                   ->   26 x  26 x 384
  21 conv    256       3 x 3/ 1     26 x  26 x 384 ->   26 x  26 x 256 1.196 BF
  22 conv    255       1 x 1/ 1     26 x  26 x 256 ->   26 x  26 x 255 0.088 BF
  23 yolo
Total BFLOPS 5.571"""


def table(name: str, width: int | None = None, height: int | None = None) -> str:
    return format_layer_table(layer_table(load_cfg(bundled_cfg_path(name)), width, height))


def test_yolov3_tiny_table_is_darknets() -> None:
    assert table("yolov3-tiny") == YOLOV3_TINY_416


def test_yolov3_rows_and_darknets_total() -> None:
    lines = table("yolov3", 416, 416).split("\n")
    # 2 * 32 * 64 * 3*3 * 208*208 / 1e9 = 1.595 (stride 2: 416 -> 208)
    assert (
        lines[2]
        == "   1 conv     64       3 x 3/ 2    416 x 416 x  32 ->  208 x 208 x  64 1.595 BF"
    )
    # AlexeyAB counts one addition per output value of a shortcut: 208*208*64 / 1e9 = 0.003.
    assert lines[5] == "   4 Shortcut Layer: 1,  wt = 0, wn = 0, outputs: 208 x 208 x  64 0.003 BF"
    assert lines[87] == "  86 route  85 61                                  ->   26 x  26 x 768"
    # darknet: "Total BFLOPS 65.879" (convolutions 65.864 + shortcuts 0.015).
    assert lines[-1] == "Total BFLOPS 65.879"


@pytest.mark.parametrize(
    ("name", "size", "total"),
    [
        ("yolov4-tiny", 416, "6.910"),  # AlexeyAB's README: yolov4-tiny 6.9 BFlops at 416
        ("yolov2-tiny", 416, "5.412"),
        ("yolov2", 608, "62.961"),
    ],
)
def test_totals_of_other_bundled_cfgs(name: str, size: int, total: str) -> None:
    assert table(name, size, size).split("\n")[-1] == f"Total BFLOPS {total}"


def test_yolov2_convolutions_match_the_published_62_94_bn() -> None:
    # darknet's YOLOv2 608x608 figure (62.94 Bn) counts convolutions only.
    rows = layer_table(load_cfg(bundled_cfg_path("yolov2")), 608, 608)
    assert round(sum(r.bflops for r in rows if r.type == "convolutional"), 2) == 62.94
    reorg = rows[27]
    assert (reorg.type, reorg.input, reorg.output) == ("reorg", (38, 38, 64), (19, 19, 256))


def test_non_square_input_and_out_stride() -> None:
    rows = layer_table(load_cfg(bundled_cfg_path("yolov3-tiny")), 320, 192)
    assert rows[15].output == (10, 6, 255) and rows[22].output == (20, 12, 255)
    assert (rows[16].out_stride, rows[23].out_stride) == (32.0, 16.0)
    row = rows[0]
    assert (row.index, row.type, row.filters, row.size, row.stride) == (
        0,
        "convolutional",
        16,
        3,
        1,
    )
    assert row.as_dict() == {
        "index": 0,
        "type": "convolutional",
        "filters": 16,
        "size": 3,
        "stride": 1,
        "input": [320, 192, 3],
        "output": [320, 192, 16],
        "bflops": row.bflops,
    }


def test_table_rows_for_less_common_layers() -> None:
    config = load_cfg(bundled_cfg_path("yolov4-tiny"))
    lines = format_layer_table(config.layer_table()).split("\n")
    assert lines[4] == "   3 route  2  group 1/2                           ->  104 x 104 x  32"
    lines = table("yolov2").split("\n")
    assert lines[28] == "  27 reorg              / 2         38 x  38 x  64 ->   19 x  19 x 256"
    assert lines[32] == "  31 detection"


runner = CliRunner()


def test_cli_prints_the_table_for_a_bundled_name_and_a_path() -> None:
    result = runner.invoke(app, ["layers", "yolov3-tiny"])
    assert result.exit_code == 0, result.output
    assert result.stdout == YOLOV3_TINY_416 + "\n"
    path = str(bundled_cfg_path("yolov3-tiny"))
    result = runner.invoke(app, ["layers", path, "--size", "320x192"])
    assert result.exit_code == 0, result.output
    assert "   0 conv     16       3 x 3/ 1    320 x 192 x   3 ->  320 x 192 x  16 0.053 BF" in (
        result.stdout
    )


def test_cli_json() -> None:
    result = runner.invoke(app, ["layers", "yolov3-tiny", "--size", "416", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 24
    assert rows[1] == {
        "index": 1,
        "type": "maxpool",
        "filters": 0,
        "size": 2,
        "stride": 2,
        "input": [416, 416, 16],
        "output": [208, 208, 16],
        "bflops": 2 * 2 * 16 * 208 * 208 / 1e9,
    }


def test_cli_errors() -> None:
    result = runner.invoke(app, ["layers", "no-such-net"])
    assert result.exit_code == 2
    assert "no bundled cfg named 'no-such-net'" in result.stderr
    result = runner.invoke(app, ["layers", "yolov3-tiny", "--size", "416x"])
    assert result.exit_code == 2
    assert "expected W or WxH" in result.stderr


def test_cli_reports_warnings_with_their_line(tmp_path: Path) -> None:
    cfg = tmp_path / "typo.cfg"
    cfg.write_text(
        "[net]\nwidth=64\nheight=64\nchannels=3\n[convolutional]\nfliters=6\nfilters=6\n"
        "[yolo]\nmask=0\nanchors=8,8\nnum=1\nclasses=1\n"
    )
    result = runner.invoke(app, ["layers", str(cfg)])
    assert result.exit_code == 0, result.output
    assert f"warning: {cfg}:6: unknown key 'fliters' in [convolutional] ignored" in result.stderr
    assert "Total BFLOPS" in result.stdout


def test_python_m_ae_model_runs_without_importing_torch() -> None:
    code = "import sys, ae_model.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    result = subprocess.run(
        [sys.executable, "-m", "ae_model", "layers", "yolov3-tiny-small", "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert json.loads(result.stdout)[-1]["type"] == "yolo"
