"""The artifact store: checkpoints, datasets and models' start weights, by key.

A key is the path relative to the artifact root that rows hold (``jobs/12/last.pt``,
``datasets/3/pets``, ``models/4/start.weights``); a key names a file or, as a folder, every
file under ``key/``. Two stores answer the same interface:

- :class:`LocalStore` (the default): the directory ``AETRAIN_HOME/artifacts``, which every
  worker and API replica mounts. Reading needs no copy and a download streams the file.
- :class:`S3Store` (``AETRAIN_ARTIFACTS_URL=s3://bucket/prefix``): any S3-compatible object
  store (AWS, MinIO). Workers fetch what a job reads into a local cache
  (``AETRAIN_HOME/cache``) and upload what it writes; a download is a presigned URL.

Torch-free, and boto3 is imported only when an S3 store is opened.
"""

import errno
import hashlib
import json
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:  # api.core.settings imports this module to check artifacts_url
    from api.core.settings import Settings

# Files a folder's upload or download moves at once: a dataset is thousands of small images.
TRANSFER_THREADS = 8
# Seconds a presigned download URL stays valid.
PRESIGNED_URL_S = 3600


class ArtifactStore(ABC):
    """Files by key. ``remote``: readers need a local copy (:meth:`fetch`), and writers
    write locally first, then :meth:`put_file` or :meth:`put_tree`."""

    remote: bool

    @abstractmethod
    def put_file(self, key: str, local: Path) -> None:
        """Store the file ``local`` as ``key``, replacing it whole (a reader sees the old or
        the new file, never half of one)."""

    @abstractmethod
    def put_tree(self, key: str, folder: Path) -> None:
        """Store every file under ``folder`` as ``key/<its path under folder>``, replacing
        whatever was under ``key``. A store on ``folder``'s file system moves it in whole (a
        rename); the caller removes whatever is left of ``folder``."""

    @abstractmethod
    def get_file(self, key: str, local: Path) -> None:
        """Write the file ``key`` to ``local`` atomically; FileNotFoundError when absent."""

    @abstractmethod
    def fetch(self, key: str) -> Path:
        """A local path from which to read the file or folder ``key`` (for a remote store, a
        copy in the cache); FileNotFoundError when the store holds nothing there."""

    @abstractmethod
    def size(self, key: str) -> int:
        """Bytes of the file ``key``, or of every file under ``key/``; 0 when none."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete the file ``key`` and every file under ``key/``; nothing there is fine."""

    @abstractmethod
    def download(self, key: str, filename: str) -> Path | str:
        """Where a client gets the file ``key`` as ``filename``: a local path to stream, or a
        presigned URL to redirect to. FileNotFoundError when absent."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether the store holds a file ``key`` or files under ``key/``."""


class LocalStore(ArtifactStore):
    """The artifact directory ``root``, shared by every process that mounts it."""

    remote = False

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def path(self, key: str) -> Path:
        return self.root / key

    def put_file(self, key: str, local: Path) -> None:
        target = self.path(key)
        if target.resolve() != local.resolve():  # workers write in place: nothing to copy
            _copy_atomically(local, target)

    def put_tree(self, key: str, folder: Path) -> None:
        target = self.path(key)
        self.delete(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            folder.rename(target)  # a reader sees the whole folder or none of it
        except OSError as error:
            if error.errno != errno.EXDEV:  # only a folder on another file system is copied
                raise
            shutil.copytree(folder, target)

    def get_file(self, key: str, local: Path) -> None:
        source = self.path(key)
        if not source.is_file():
            raise FileNotFoundError(f"{key} is not in {self!r}")
        _copy_atomically(source, local)

    def fetch(self, key: str) -> Path:
        path = self.path(key)
        if not path.exists():
            raise FileNotFoundError(f"{key} is not in {self!r}")
        return path

    def size(self, key: str) -> int:
        path = self.path(key)
        if path.is_file():
            return path.stat().st_size
        return folder_bytes(path)

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def delete(self, key: str) -> None:
        path = self.path(key)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def download(self, key: str, filename: str) -> Path | str:
        path = self.path(key)
        if not path.is_file():
            raise FileNotFoundError(f"{key} is not in {self!r}")
        return path


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (links not followed; 0 when it does not exist)."""
    total = 0
    for parent, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(parent, name)).st_size
            except FileNotFoundError:  # deleted while counted
                continue
    return total


def _copy_atomically(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` through a temporary file beside it and a rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
    try:
        shutil.copyfile(source, partial)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


@dataclass(frozen=True)
class _Object:
    """An object of the bucket: its key relative to the store's prefix, size and ETag."""

    key: str
    size: int
    etag: str


class S3Store(ArtifactStore):
    """Keys as objects ``<prefix>/<key>`` of ``bucket`` on an S3-compatible service, with
    files read by workers cached under ``cache`` by key and content (a dataset or weights
    replaced under the same key are fetched again)."""

    remote = True

    def __init__(self, client: Any, bucket: str, prefix: str, cache: Path, signer: Any) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.cache = cache
        # Presigns download URLs: a client of the endpoint that API clients reach, which may
        # differ from the one this process uses (docker-compose: minio:9000 vs localhost).
        self.signer = signer

    def __repr__(self) -> str:
        return f"S3Store('s3://{self.bucket}/{self.prefix}')"

    def _name(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_file(self, key: str, local: Path) -> None:
        self.client.upload_file(str(local), self.bucket, self._name(key))

    def put_tree(self, key: str, folder: Path) -> None:
        self.delete(key)
        files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
        with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
            done = pool.map(
                lambda p: self.put_file(f"{key}/{p.relative_to(folder).as_posix()}", p), files
            )
            list(done)  # raises the first upload's error

    def get_file(self, key: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(f".{local.name}.{uuid.uuid4().hex}")
        try:
            self.client.download_file(self.bucket, self._name(key), str(partial))
            partial.replace(local)
        except self.client.exceptions.ClientError as error:
            if _status(error) == 404:
                raise FileNotFoundError(f"{key} is not in {self!r}") from None
            raise
        finally:
            partial.unlink(missing_ok=True)

    def _objects(self, key: str) -> list[_Object]:
        """The object ``key``, or else every object under ``key/``."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._name(key))
            return [_Object(key, head["ContentLength"], head["ETag"])]
        except self.client.exceptions.ClientError as error:
            if _status(error) != 404:
                raise
        return list(self._under(key))

    def _under(self, key: str) -> Iterator[_Object]:
        start = len(self._name("")) if self.prefix else 0
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._name(key) + "/"
        )
        for page in pages:
            for item in page.get("Contents", []):
                yield _Object(item["Key"][start:], item["Size"], item["ETag"])

    def fetch(self, key: str) -> Path:
        objects = self._objects(key)
        if not objects:
            raise FileNotFoundError(f"{key} is not in {self!r}")
        # The content's fingerprint names the copy: a key whose files changed is fetched anew.
        version = hashlib.sha256(
            json.dumps([(o.key, o.etag) for o in objects]).encode()
        ).hexdigest()[:24]
        copy = self.cache / version
        if not copy.exists():
            self._download_into(objects, copy)
        return copy / key

    def _download_into(self, objects: list[_Object], copy: Path) -> None:
        """Download ``objects`` under a temporary folder, then rename it to ``copy``: a job
        reading the cache never sees half a dataset, and a crash leaves only a temporary."""
        partial = copy.with_name(f".partial-{copy.name}-{uuid.uuid4().hex}")
        try:
            with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
                list(pool.map(lambda o: self.get_file(o.key, partial / o.key), objects))
            try:
                partial.rename(copy)
            except OSError:  # another job fetched the same copy meanwhile
                if not copy.exists():
                    raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)

    def size(self, key: str) -> int:
        return sum(o.size for o in self._objects(key))

    def exists(self, key: str) -> bool:
        return bool(self._objects(key))

    def delete(self, key: str) -> None:
        names = [self._name(o.key) for o in self._objects(key)]
        for start in range(0, len(names), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": name} for name in names[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})

    def download(self, key: str, filename: str) -> Path | str:
        if not self.exists(key):
            raise FileNotFoundError(f"{key} is not in {self!r}")
        url: str = self.signer.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self._name(key),
                "ResponseContentDisposition": f'attachment; filename="{filename}"',
            },
            ExpiresIn=PRESIGNED_URL_S,
        )
        return url


def _status(error: Any) -> int:
    """The HTTP status of a botocore ClientError."""
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def parse_s3_url(url: str) -> tuple[str, str]:
    """``(bucket, prefix)`` of ``s3://bucket[/prefix]``; ValueError saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(
            f"{url!r} is not an S3 URL: write s3://BUCKET or s3://BUCKET/PREFIX (the endpoint "
            "and credentials go in AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
        )
    bucket = parts.netloc
    if not _valid_bucket(bucket):
        raise ValueError(
            f"{bucket!r} is not an S3 bucket name: 3 to 63 lowercase letters, digits, dots and "
            "hyphens, starting and ending with a letter or digit"
        )
    return bucket, parts.path.strip("/")


def _valid_bucket(name: str) -> bool:
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789.-")
    ends = name[:1].isalnum() and name[-1:].isalnum()
    return 3 <= len(name) <= 63 and set(name) <= allowed and ends and ".." not in name


def open_store(settings: "Settings") -> ArtifactStore:
    """The settings' artifact store: S3 when ``artifacts_url`` is set, else the directory
    ``artifacts_dir``. One per process and configuration (an S3 client is costly to make)."""
    return _open_store(
        settings.artifacts_url, settings.artifacts_dir, settings.cache_dir,
        settings.artifacts_public_endpoint,
    )  # fmt: skip


@lru_cache(maxsize=8)
def _open_store(
    url: str | None, root: Path, cache: Path, public_endpoint: str | None
) -> ArtifactStore:
    if url is None:
        return LocalStore(root)
    import boto3  # type: ignore[import-untyped]  # only a process with an S3 store loads it
    from botocore.config import Config  # type: ignore[import-untyped]

    bucket, prefix = parse_s3_url(url)
    # Path-style addressing works with any endpoint (MinIO needs no wildcard DNS); standard
    # retries ride out a brief outage of the store under a checkpoint upload.
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        retries={"mode": "standard", "max_attempts": 10},
    )
    client = boto3.client("s3", config=config)
    signer = client
    if public_endpoint:
        signer = boto3.client("s3", config=config, endpoint_url=public_endpoint)
    return S3Store(client, bucket, prefix, cache, signer)
