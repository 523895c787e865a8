"""Safe extraction of an uploaded dataset zip.

:func:`extract_zip` unpacks an archive and refuses what could harm the server: paths that leave
the target folder, links and other non-regular members, encrypted members, and zip bombs (too
many members, too many bytes, too high a compression ratio). :func:`find_dataset_root` skips
the one folder a zip may wrap everything in. Torch-free: the API extracts in the request.
"""

from __future__ import annotations

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
_COPY_CHUNK = 1 << 20


class DatasetError(ValueError):
    """A dataset or archive that cannot be accepted; the message says what to change."""


@dataclass(frozen=True)
class ArchiveLimits:
    """What :func:`extract_zip` accepts.

    ``max_ratio`` applies to members (and the whole archive) that extract to more than
    ``ratio_min_bytes``: small files compress wildly without being dangerous.
    """

    max_members: int = 100_000
    max_total_bytes: int = 8 << 30
    max_ratio: float = 100.0
    ratio_min_bytes: int = 1 << 20


def extract_zip(archive: IO[bytes], dest: Path, limits: ArchiveLimits | None = None) -> None:
    """Extract the zip ``archive`` into the new folder ``dest``.

    Every member is checked before anything is written, and bytes are counted while writing,
    so a member cannot extract to more than its header declares. Raises :class:`DatasetError`
    naming the offending member; ``dest`` is then removed. macOS ``__MACOSX/`` and
    ``.DS_Store`` entries are skipped.
    """
    limits = limits or ArchiveLimits()
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as error:
        raise DatasetError(
            f"the upload is not a readable zip archive ({error}); zip the dataset folder "
            "(e.g. `cd mydata && zip -r ../mydata.zip .`) and upload the .zip file"
        ) from None
    with zf:
        members = zf.infolist()
        _check_members(members, limits)
        dest.mkdir(parents=True)
        try:
            _write_members(zf, [m for m in members if not _is_junk(m.filename)], dest, limits)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise


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
            raise DatasetError(f"{member.filename!r} appears twice in the zip; keep one copy")
        seen.add(name)
        _check_member_type(member)
        if member.file_size > limits.ratio_min_bytes:
            ratio = member.file_size / max(member.compress_size, 1)
            if ratio > limits.max_ratio:
                raise DatasetError(
                    f"{member.filename!r} expands {ratio:.0f}x ({member.file_size} bytes from "
                    f"{member.compress_size}); members compressed more than "
                    f"{limits.max_ratio:.0f}x are refused as a possible zip bomb"
                )
    total = sum(m.file_size for m in members)
    if total > limits.max_total_bytes:
        raise DatasetError(
            f"the zip extracts to {total} bytes, more than the limit of "
            f"{limits.max_total_bytes}; upload a smaller dataset"
        )
    packed = sum(m.compress_size for m in members)
    if total > limits.ratio_min_bytes and total / max(packed, 1) > limits.max_ratio:
        raise DatasetError(
            f"the zip expands {total / max(packed, 1):.0f}x ({total} bytes from {packed}); "
            f"archives compressed more than {limits.max_ratio:.0f}x are refused as a possible "
            "zip bomb"
        )


def _member_path(member: zipfile.ZipInfo) -> str:
    """The member's relative path, normalised; raises on anything that could leave the folder."""
    raw = member.orig_filename
    problem = None
    if "\x00" in raw:
        problem = "contains a NUL character"
    elif "\\" in raw:
        problem = "uses backslashes; zip with a tool that writes '/' separators"
    elif raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        problem = "is an absolute path; zip paths relative to the dataset folder"
    elif ".." in PurePosixPath(raw).parts:
        problem = "contains '..'; zip paths inside the dataset folder only"
    if problem:
        raise DatasetError(f"zip member {raw!r} {problem}")
    parts = [p for p in PurePosixPath(raw).parts if p != "."]
    if not parts:
        raise DatasetError(f"zip member {raw!r} has no file name")
    return "/".join(parts)


def _check_member_type(member: zipfile.ZipInfo) -> None:
    if member.flag_bits & 0x1:
        raise DatasetError(
            f"zip member {member.filename!r} is encrypted; zip the dataset without a password"
        )
    kind = stat.S_IFMT(member.external_attr >> 16)
    if kind == stat.S_IFLNK:
        raise DatasetError(
            f"zip member {member.filename!r} is a symbolic link; zip the files themselves "
            "(e.g. `zip -r` without `--symlinks`)"
        )
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise DatasetError(
            f"zip member {member.filename!r} is not a regular file or folder (a device, pipe "
            "or socket); remove it"
        )


def _is_junk(name: str) -> bool:
    return name.startswith(_JUNK_PREFIXES) or PurePosixPath(name).name in _JUNK_NAMES


def _write_members(
    zf: zipfile.ZipFile, members: Iterable[zipfile.ZipInfo], dest: Path, limits: ArchiveLimits
) -> None:
    written_total = 0
    for member in members:
        target = dest.joinpath(*_member_path(member).split("/"))
        try:
            if member.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(member) as source, target.open("xb") as out:
                written = 0
                while chunk := source.read(_COPY_CHUNK):
                    written += len(chunk)
                    written_total += len(chunk)
                    if written > member.file_size or written_total > limits.max_total_bytes:
                        raise DatasetError(
                            f"zip member {member.filename!r} extracts to more bytes than its "
                            "header declares; the archive is corrupt or crafted"
                        )
                    out.write(chunk)
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            raise DatasetError(
                f"zip member {member.filename!r} clashes with another member of the same path "
                "(a file and a folder of one name); rename one of them"
            ) from None
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as e:
            raise DatasetError(
                f"zip member {member.filename!r} cannot be extracted ({e}); re-create the zip "
                "with the standard deflate method"
            ) from None


def find_dataset_root(folder: Path) -> Path:
    """``folder``, or the folder a zip wrapped everything in (``mydata/annotations/...``)."""
    root = folder
    while True:
        entries = list(root.iterdir())
        if len(entries) != 1 or not entries[0].is_dir() or entries[0].name in LAYOUT_FOLDERS:
            return root
        root = entries[0]
