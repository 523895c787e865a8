"""Datasets and zips as ``{path: content}`` dicts, written to disk or zipped in memory: what the
check, archive and API dataset tests build their cases from."""

import io
import json
import stat
import zipfile
from pathlib import Path
from typing import Any

from PIL import Image

Files = dict[str, Any]  # path -> bytes, str, or a dict written as JSON
IMAGE_SIZE = (64, 48)


def png(size: tuple[int, int] = IMAGE_SIZE, colour: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def coco_files(train: int = 2, val: int = 1) -> Files:
    """A valid COCO dataset: 2 categories, one 20x16 box per image."""
    files: Files = {}
    width, height = IMAGE_SIZE
    for split, count in (("train", train), ("val", val)):
        images, annotations = [], []
        for i in range(count):
            name = f"{i:03d}.png"
            files[f"images/{split}/{name}"] = png()
            images.append({"id": i + 1, "file_name": name, "width": width, "height": height})
            annotations.append(
                {
                    "id": i + 1,
                    "image_id": i + 1,
                    "category_id": 1 + i % 2,
                    "bbox": [4, 4, 20, 16],
                    "area": 320,
                    "iscrowd": 0,
                }
            )
        files[f"annotations/instances_{split}.json"] = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        }
    return files


def yolo_files(train: int = 2, val: int = 1) -> Files:
    """A valid YOLO dataset: classes.txt with 2 names, one box per image."""
    files: Files = {"classes.txt": "cat\ndog\n"}
    for split, count in (("train", train), ("val", val)):
        for i in range(count):
            files[f"images/{split}/{i:03d}.png"] = png()
            files[f"labels/{split}/{i:03d}.txt"] = f"{i % 2} 0.5 0.5 0.25 0.3\n"
    return files


def encode(content: Any) -> bytes:
    if isinstance(content, bytes):
        return content
    if isinstance(content, str):
        return content.encode()
    return json.dumps(content).encode()


def write_files(root: Path, files: Files) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(content))
    return root


def zip_bytes(files: Files, prefix: str = "") -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items():
            zf.writestr(prefix + name, encode(content))
    return out.getvalue()


def zip_with_member(info: zipfile.ZipInfo, content: bytes, files: Files | None = None) -> bytes:
    """A valid dataset zip plus one crafted member."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in (files if files is not None else coco_files()).items():
            zf.writestr(name, encode(data))
        zf.writestr(info, content)
    return out.getvalue()


def symlink_member(name: str = "images/train/link.png") -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix: the mode in external_attr is meaningful
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info
