"""Fixtures of the data tests: the drawn scenes of ``scenes.py`` written in each layout."""

from pathlib import Path

import pytest

from tests.ae_model.data.scenes import write_coco, write_yolo


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    return write_coco(tmp_path)


@pytest.fixture
def yolo_root(tmp_path: Path) -> Path:
    return write_yolo(tmp_path)
