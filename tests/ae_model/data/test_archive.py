"""Safe zip extraction: wrapper folders, unsafe members, zip bombs, lying headers."""

import io
import stat
import zipfile
from pathlib import Path

import pytest

from ae_model.data.archive import ArchiveLimits, DatasetError, extract_zip, find_dataset_root
from ae_model.data.check import check_dataset
from tests.ae_model.data.dataset_files import (
    coco_files,
    symlink_member,
    write_files,
    yolo_files,
    zip_bytes,
    zip_with_member,
)


def test_extracts_and_finds_a_wrapper_folder(tmp_path: Path) -> None:
    data = zip_bytes({**coco_files(), "__MACOSX/._x": b"junk"}, prefix="mydata/")
    extract_zip(io.BytesIO(data), tmp_path / "out")
    root = find_dataset_root(tmp_path / "out")
    assert root == tmp_path / "out" / "mydata"
    assert not (tmp_path / "out" / "__MACOSX").exists()
    report = check_dataset(root, display_root=tmp_path / "out")
    assert report.ok
    assert find_dataset_root(write_files(tmp_path / "flat", coco_files())) == tmp_path / "flat"


@pytest.mark.parametrize(
    ("member", "expected"),
    [
        (zipfile.ZipInfo("../evil.txt"), "contains '..'"),
        (zipfile.ZipInfo("images/../../evil.txt"), "contains '..'"),
        (zipfile.ZipInfo("/etc/evil.txt"), "absolute path"),
        (zipfile.ZipInfo("C:/evil.txt"), "absolute path"),
        (zipfile.ZipInfo("images\\..\\evil.txt"), "backslashes"),
        (symlink_member(), "symbolic link"),
    ],
)
def test_unsafe_members_are_refused(tmp_path: Path, member: zipfile.ZipInfo, expected: str) -> None:
    with pytest.raises(DatasetError, match=expected):
        extract_zip(io.BytesIO(zip_with_member(member, b"x")), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_special_files_and_duplicates_are_refused(tmp_path: Path) -> None:
    fifo = zipfile.ZipInfo("images/train/pipe")
    fifo.create_system = 3
    fifo.external_attr = (stat.S_IFIFO | 0o644) << 16
    with pytest.raises(DatasetError, match="not a regular file"):
        extract_zip(io.BytesIO(zip_with_member(fifo, b"")), tmp_path / "a")
    duplicate = zipfile.ZipInfo("classes.txt")
    with pytest.warns(UserWarning, match="Duplicate name"):
        data = zip_with_member(duplicate, b"x", files=yolo_files())
    with pytest.raises(DatasetError, match="appears twice"):
        extract_zip(io.BytesIO(data), tmp_path / "b")


def test_zip_bombs_are_refused(tmp_path: Path) -> None:
    bomb = zip_bytes({**coco_files(), "images/train/zeros.bin": bytes(20 << 20)})
    with pytest.raises(DatasetError, match="possible zip bomb"):
        extract_zip(io.BytesIO(bomb), tmp_path / "a")
    many_small = zip_bytes({f"f{i}.txt": bytes(100_000) for i in range(30)})
    with pytest.raises(DatasetError, match="possible zip bomb"):
        extract_zip(io.BytesIO(many_small), tmp_path / "b")
    with pytest.raises(DatasetError, match="more than the limit of 1000"):
        extract_zip(
            io.BytesIO(zip_bytes(coco_files())),
            tmp_path / "c",
            ArchiveLimits(max_total_bytes=1000),
        )
    with pytest.raises(DatasetError, match="holds 5 entries, more than the limit of 3"):
        extract_zip(io.BytesIO(zip_bytes(coco_files())), tmp_path / "d", ArchiveLimits(3))
    assert not any(tmp_path.iterdir())


def test_member_larger_than_declared_is_refused(tmp_path: Path) -> None:
    data = bytearray(zip_bytes({"a.txt": b"x" * 5000}, prefix=""))
    # Lower the declared size in the central directory: extraction must not trust it.
    central = data.rfind(b"PK\x01\x02")
    data[central + 24 : central + 28] = (100).to_bytes(4, "little")
    with pytest.raises(DatasetError, match=r"a\.txt"):
        extract_zip(io.BytesIO(bytes(data)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_not_a_zip(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a readable zip archive"):
        extract_zip(io.BytesIO(b"GIF89a not a zip at all" * 10), tmp_path / "out")
    with pytest.raises(DatasetError, match="empty"):
        extract_zip(io.BytesIO(zip_bytes({})), tmp_path / "out")
