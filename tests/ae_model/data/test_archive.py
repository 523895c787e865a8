"""Safe zip extraction: wrapper folders, unsafe members, zip bombs, lying headers, names no
file system holds, file-system errors."""

import io
import random
import re
import resource
import signal
import stat
import struct
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


def test_malformed_archives_are_dataset_errors(tmp_path: Path) -> None:
    data = zip_bytes({"a_.txt": b"x"})
    newer = bytearray(data)  # a central directory entry needing zip version 9.9
    struct.pack_into("<H", newer, newer.find(b"PK\x01\x02") + 6, 99)
    with pytest.raises(DatasetError, match=r"not a readable zip archive \(zip file version 9\.9"):
        extract_zip(io.BytesIO(bytes(newer)), tmp_path / "a")
    not_utf8 = bytearray(data)  # a local header whose name is flagged UTF-8 but is not
    local = not_utf8.find(b"PK\x03\x04")
    struct.pack_into("<H", not_utf8, local + 6, 0x800)
    not_utf8[local + 31] = 0x96
    with pytest.raises(DatasetError, match=r"'a_\.txt' cannot be extracted \('utf-8' codec"):
        extract_zip(io.BytesIO(bytes(not_utf8)), tmp_path / "b")
    assert not any(tmp_path.iterdir())


def test_not_a_zip(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a readable zip archive"):
        extract_zip(io.BytesIO(b"GIF89a not a zip at all" * 10), tmp_path / "out")
    with pytest.raises(DatasetError, match="empty"):
        extract_zip(io.BytesIO(zip_bytes({})), tmp_path / "out")


def _claim_50x_compression(data: bytes) -> bytes:
    """``data`` with every member's compressed size, in the central directory and in its local
    header, raised to at least 1/50 of its size: compression of 50x at most, by the headers."""
    patched = bytearray(data)
    for signature, size_at in ((b"PK\x01\x02", 20), (b"PK\x03\x04", 18)):
        position = patched.find(signature)
        while position >= 0:
            compressed, file_size = struct.unpack_from("<II", patched, position + size_at)
            struct.pack_into("<I", patched, position + size_at, max(compressed, file_size // 50))
            position = patched.find(signature, position + 4)
    return bytes(patched)


def test_overstated_compressed_sizes_do_not_hide_a_bomb(tmp_path: Path) -> None:
    # Headers claiming 50x compression, under the limit of 100x; the data is zeros, over
    # 1000x. The ratio is measured against the bytes actually read from the upload, and
    # extraction stops within the limit of those, whatever the zip says.
    noise = random.Random(0).randbytes(2 << 20)  # follows the bomb: the bytes its header claims
    member = zip_bytes({**coco_files(), "zeros.bin": bytes(64 << 20), "noise.bin": noise})
    with pytest.raises(DatasetError, match="members compressed more than 100x") as refused:
        extract_zip(io.BytesIO(_claim_50x_compression(member)), tmp_path / "a")
    assert _bytes_written(refused.value) < 8 << 20
    many = zip_bytes({f"f{i}.bin": bytes(500_000) for i in range(200)})
    with pytest.raises(DatasetError, match="archives compressed more than 100x") as refused:
        extract_zip(io.BytesIO(_claim_50x_compression(many)), tmp_path / "b")
    assert _bytes_written(refused.value) < 100 * len(many) + (1 << 20)
    assert not any(tmp_path.iterdir())


def _bytes_written(error: DatasetError) -> int:
    found = re.search(r"\((\d+) bytes so far", str(error))
    assert found is not None, error
    return int(found[1])


def test_understated_sizes_are_refused(tmp_path: Path) -> None:
    # Every header says 100 bytes of a 5000-byte member: nothing beyond 100 bytes is trusted,
    # and the member's checksum then fails.
    data = bytearray(zip_bytes({"a.txt": b"x" * 5000}))
    for signature, file_size_at in ((b"PK\x01\x02", 24), (b"PK\x03\x04", 22)):
        struct.pack_into("<I", data, data.find(signature) + file_size_at, 100)
    with pytest.raises(DatasetError, match=r"'a\.txt' cannot be extracted \(Bad CRC-32"):
        extract_zip(io.BytesIO(bytes(data)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_total_bytes_are_counted_as_written(tmp_path: Path) -> None:
    data = zip_bytes({"a.txt": b"a" * 600, "b.txt": b"b" * 600})
    with pytest.raises(DatasetError, match="at least 1200 bytes, more than the limit of 1000"):
        extract_zip(io.BytesIO(data), tmp_path / "out", ArchiveLimits(max_total_bytes=1000))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("images/train/" + "a" * 252 + ".png", "has a name of 256 bytes, over the 255"),
        ("images/train/" + "é" * 126 + ".png", "has a name of 256 bytes, over the 255"),
        ("/".join(["d" * 200] * 6) + "/x.png", "is 1211 bytes long, over the limit of 1024"),
        ("/".join(["d"] * 33) + "/x.png", "is 34 folders deep, over the limit of 32"),
        ("images/train/a\x01.png", r"contains the character '\\x01'"),
    ],
    ids=["long-name", "long-utf8-name", "long-path", "deep", "control-character"],
)
def test_names_no_file_system_holds_are_refused(tmp_path: Path, name: str, expected: str) -> None:
    with pytest.raises(DatasetError, match=expected):
        extract_zip(io.BytesIO(zip_with_member(zipfile.ZipInfo(name), b"x")), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_name_with_a_nul_is_refused(tmp_path: Path) -> None:
    # zipfile cuts a name at a NUL when writing, so the NUL goes into the bytes afterwards.
    data = zip_bytes({**coco_files(), "images/train/a_b.png": b"x"}).replace(b"a_b", b"a\0b")
    with pytest.raises(DatasetError, match=r"'images/train/a\\x00b.png' contains the character"):
        extract_zip(io.BytesIO(data), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_names_at_the_limits_are_extracted(tmp_path: Path) -> None:
    longest = "images/train/" + "a" * 251 + ".png"
    deepest = "/".join(["d"] * 31) + "/x.png"
    extract_zip(io.BytesIO(zip_bytes({longest: b"x", deepest: b"y"})), tmp_path / "out")
    assert (tmp_path / "out" / longest).read_bytes() == b"x"
    assert (tmp_path / "out" / deepest).read_bytes() == b"y"


def test_a_file_system_error_is_a_dataset_error(tmp_path: Path) -> None:
    # A real refusal by the kernel: files over 1000 bytes fail to write (EFBIG) in this process.
    data = zip_bytes({**coco_files(), "images/train/big.bin": bytes(5000)})
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))
    try:
        with pytest.raises(DatasetError) as refused:
            extract_zip(io.BytesIO(data), tmp_path / "out")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)
    assert "cannot be extracted on the server (File too large)" in str(refused.value)
    assert str(tmp_path) not in str(refused.value)
    assert not (tmp_path / "out").exists()
