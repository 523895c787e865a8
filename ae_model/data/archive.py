"""Safe extraction of an uploaded dataset zip.

:func:`extract_zip` unpacks an archive and refuses what could harm the server: paths that leave
the target folder or that no file system could hold (too long, too deep, control characters),
links and other non-regular members, encrypted members, and zip bombs. A zip's headers can lie,
so sizes are counted as the bytes are written: the total, and the ratio of bytes written to
bytes actually read from the archive, per member and for the whole upload.
:func:`find_dataset_root` skips the one folder a zip may wrap everything in. Torch-free: the API
extracts in the request.
"""

from __future__ import annotations

import re
import shutil
import stat
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from ae_model.data.layout import SPLITS

# Folder names that mark a dataset's top level (a zip's single wrapper folder is skipped).
LAYOUT_FOLDERS = frozenset({"annotations", "images", "labels", *SPLITS})
# Written by macOS and Windows file managers; never part of a dataset.
_JUNK_PREFIXES = ("__MACOSX/",)
_JUNK_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
# A file or folder name: the limit of ext4, XFS, btrfs and APFS alike.
MAX_NAME_BYTES = 255
# A whole relative path, and its number of parts: far beyond any dataset's, well within PATH_MAX
# once joined to the server's folder.
MAX_PATH_BYTES = 1024
MAX_PATH_DEPTH = 32
# Control characters (Unicode Cc) and UTF-16 surrogate halves: text no file name, database
# column or JSON response can hold (json.loads turns "\ud800" into a lone surrogate).
NOT_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# What zipfile raises on a malformed archive or member (a ValueError: a negative offset, a
# name flagged UTF-8 that is not; NotImplementedError: a zip spanning disks, a method it lacks).
_UNREADABLE = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    NotImplementedError,
    RuntimeError,
    ValueError,
)
# Small reads keep a bomb's output within the ratio limit of the archive bytes read so far.
_COPY_CHUNK = 64 << 10
_SHOWN_CHARS = 80


class DatasetError(ValueError):
    """A dataset or archive that cannot be accepted; the message says what to change."""


@dataclass(frozen=True)
class ArchiveLimits:
    """What :func:`extract_zip` accepts.

    ``max_ratio`` applies to members (and the whole archive) once they have extracted more than
    ``ratio_min_bytes``: small files compress wildly without being dangerous.
    """

    max_members: int = 100_000
    max_total_bytes: int = 8 << 30
    max_ratio: float = 100.0
    ratio_min_bytes: int = 1 << 20


def quoted(text: str) -> str:
    """``repr(text)``, cut after a few dozen characters: for messages about untrusted text."""
    if len(text) <= _SHOWN_CHARS:
        return repr(text)
    return f"{text[:_SHOWN_CHARS]!r}… ({len(text)} characters)"


def name_problem(name: str) -> str | None:
    """What keeps the relative ``/``-separated path ``name`` from being a file's path on the
    server, or None: a control character or surrogate half, a part over ``MAX_NAME_BYTES``,
    over ``MAX_PATH_BYTES`` in all, or over ``MAX_PATH_DEPTH`` parts."""
    bad = NOT_TEXT.search(name)
    if bad is not None:
        return f"contains the character {bad.group()!a}, which a file name cannot hold; rename it"
    parts = [part.encode() for part in name.split("/") if part not in ("", ".")]
    longest = max(parts, key=len, default=b"")
    if len(longest) > MAX_NAME_BYTES:
        return (
            f"has a name of {len(longest)} bytes, over the {MAX_NAME_BYTES} a file system "
            "allows; shorten it"
        )
    if len(name.encode()) > MAX_PATH_BYTES:
        return (
            f"is {len(name.encode())} bytes long, over the limit of {MAX_PATH_BYTES}; use "
            "shorter folder and file names"
        )
    if len(parts) > MAX_PATH_DEPTH:
        return (
            f"is {len(parts)} folders deep, over the limit of {MAX_PATH_DEPTH}; flatten the folders"
        )
    return None


def extract_zip(archive: IO[bytes], dest: Path, limits: ArchiveLimits | None = None) -> None:
    """Extract the zip ``archive`` into the new folder ``dest``.

    Every member's name and type is checked before anything is written; sizes are never taken
    from the headers but counted while writing, so no header can understate what the zip
    extracts to. Raises :class:`DatasetError` naming the offending member; ``dest`` is then
    removed. macOS ``__MACOSX/`` and ``.DS_Store`` entries are skipped.
    """
    limits = limits or ArchiveLimits()
    reader = _CountingReader(archive)
    try:
        zf = zipfile.ZipFile(reader)
    except (*_UNREADABLE, OSError) as error:
        raise DatasetError(
            f"the upload is not a readable zip archive ({error}); zip the dataset folder "
            "(e.g. `cd mydata && zip -r ../mydata.zip .`) and upload the .zip file"
        ) from None
    with zf:
        members = zf.infolist()
        _check_members(members, limits)
        dest.mkdir(parents=True)
        meter = _Meter(limits, archive_bytes=archive.seek(0, 2))
        try:
            wanted = [m for m in members if not _is_junk(m.filename)]
            _write_members(zf, reader, wanted, dest, meter)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise


class _CountingReader:
    """The upload as zipfile reads it, counting the bytes read."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.bytes_read = 0

    def read(self, n: int = -1, /) -> bytes:
        data = self.raw.read(n)
        self.bytes_read += len(data)
        return data

    def seek(self, offset: int, whence: int = 0, /) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def seekable(self) -> bool:
        return True


@dataclass
class _Meter:
    """Bytes written so far, against the limits, whatever the zip's headers declare.

    ``archive_bytes`` is the upload's size: all the compressed data there is, however the
    members' headers count it.
    """

    limits: ArchiveLimits
    archive_bytes: int
    total: int = 0

    def add(self, member: zipfile.ZipInfo, chunk: int, written: int, read: int) -> None:
        """Count ``chunk`` bytes more of ``member``, which has now written ``written`` bytes
        from ``read`` bytes of the archive; DatasetError once a limit is passed."""
        self.total += chunk
        limits = self.limits
        if self.total > limits.max_total_bytes:
            raise DatasetError(
                f"the zip extracts to at least {self.total} bytes, more than the limit of "
                f"{limits.max_total_bytes}; upload a smaller dataset"
            )
        if written > limits.ratio_min_bytes and written > limits.max_ratio * read:
            raise DatasetError(
                f"{quoted(member.filename)} expands {written / max(read, 1):.0f}x ({written} "
                f"bytes so far from {read}); members compressed more than "
                f"{limits.max_ratio:.0f}x are refused as a possible zip bomb"
            )
        if self.total > limits.ratio_min_bytes and self.total > limits.max_ratio * max(
            self.archive_bytes, 1
        ):
            raise DatasetError(
                f"the zip expands {self.total / max(self.archive_bytes, 1):.0f}x ({self.total} "
                f"bytes so far from {self.archive_bytes}); archives compressed more than "
                f"{limits.max_ratio:.0f}x are refused as a possible zip bomb"
            )


def _check_members(members: Sequence[zipfile.ZipInfo], limits: ArchiveLimits) -> None:
    if not members:
        raise DatasetError("the zip archive is empty; add the dataset's files to it")
    if len(members) > limits.max_members:
        raise DatasetError(
            f"the zip holds {len(members)} entries, more than the limit of "
            f"{limits.max_members}; remove files the dataset does not need or split it"
        )
    seen: set[str] = set()
    for member in members:
        name = _member_path(member)
        if name in seen:
            raise DatasetError(f"{quoted(member.filename)} appears twice in the zip; keep one copy")
        seen.add(name)
        _check_member_type(member)


def _member_path(member: zipfile.ZipInfo) -> str:
    """The member's relative path, normalised; raises on anything that could leave the folder
    or that the file system could not hold."""
    raw = member.orig_filename
    if "\\" in raw:
        problem = "uses backslashes; zip with a tool that writes '/' separators"
    elif raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        problem = "is an absolute path; zip paths relative to the dataset folder"
    elif ".." in PurePosixPath(raw).parts:
        problem = "contains '..'; zip paths inside the dataset folder only"
    else:
        problem = name_problem(raw) or ""
    if problem:
        raise DatasetError(f"zip member {quoted(raw)} {problem}")
    parts = [p for p in PurePosixPath(raw).parts if p != "."]
    if not parts:
        raise DatasetError(f"zip member {quoted(raw)} has no file name")
    return "/".join(parts)


def _check_member_type(member: zipfile.ZipInfo) -> None:
    name = quoted(member.filename)
    if member.flag_bits & 0x1:
        raise DatasetError(f"zip member {name} is encrypted; zip the dataset without a password")
    kind = stat.S_IFMT(member.external_attr >> 16)
    if kind == stat.S_IFLNK:
        raise DatasetError(
            f"zip member {name} is a symbolic link; zip the files themselves "
            "(e.g. `zip -r` without `--symlinks`)"
        )
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise DatasetError(
            f"zip member {name} is not a regular file or folder (a device, pipe or socket); "
            "remove it"
        )


def _is_junk(name: str) -> bool:
    return name.startswith(_JUNK_PREFIXES) or PurePosixPath(name).name in _JUNK_NAMES


def _write_members(
    zf: zipfile.ZipFile,
    reader: _CountingReader,
    members: Iterable[zipfile.ZipInfo],
    dest: Path,
    meter: _Meter,
) -> None:
    for member in members:
        target = dest.joinpath(*_member_path(member).split("/"))
        try:
            if member.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            read_before = reader.bytes_read
            with zf.open(member) as source, target.open("xb") as out:
                written = 0
                while chunk := source.read(_COPY_CHUNK):
                    written += len(chunk)
                    meter.add(member, len(chunk), written, reader.bytes_read - read_before)
                    out.write(chunk)
        except DatasetError:
            raise
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            raise DatasetError(
                f"zip member {quoted(member.filename)} clashes with another member of the same "
                "path (a file and a folder of one name); rename one of them"
            ) from None
        except OSError as error:
            # strerror, not str(error): that names the server's folder.
            raise DatasetError(
                f"zip member {quoted(member.filename)} cannot be extracted on the server "
                f"({error.strerror or type(error).__name__}); rename or remove it"
            ) from None
        except _UNREADABLE as e:
            raise DatasetError(
                f"zip member {quoted(member.filename)} cannot be extracted ({e}); re-create the "
                "zip with the standard deflate method"
            ) from None


def find_dataset_root(folder: Path) -> Path:
    """``folder``, or the folder a zip wrapped everything in (``mydata/annotations/...``)."""
    root = folder
    while True:
        entries = list(root.iterdir())
        if len(entries) != 1 or not entries[0].is_dir() or entries[0].name in LAYOUT_FOLDERS:
            return root
        root = entries[0]
