"""Start weights for an uploaded cfg: a darknet ``.weights`` file (full, or a ``.conv.N``
backbone with its cutoff), checked against the cfg's layers and stored under the model's folder.

The file's layout is darknet's (``ae_model.weights``, which reads it in the worker; the API
never imports torch): a header of three int32 (major, minor, revision) and ``seen`` (uint64
from version 0.2 on, else uint32), then per [convolutional] layer its float32 values.
``tests/api/routes/test_model_weights.py`` checks these sizes against what
``ae_model.weights`` writes.
"""

import hashlib
import struct
import uuid
from pathlib import Path
from typing import IO, Any

from sqlalchemy.orm import Session, sessionmaker

from ae_model.cfg import CfgError, ConvolutionalSection, DarknetConfig, parse_cfg
from api.core.artifacts import open_store
from api.core.db.models import ModelConfig, utcnow
from api.core.model_refs import ModelNotFoundError, resolve_model
from api.core.settings import Settings
from api.schemas.models import ModelWeightsPublic
from api.services.errors import Conflict, Invalid, NotFound
from api.services.usage import check_quota, model_folder

WEIGHTS_FILE = "start.weights"
_CHUNK = 1 << 20


def _header(head: bytes, name: str) -> tuple[str, int, int]:
    """``(version, seen, header bytes)`` of a .weights file starting with ``head``."""
    if len(head) >= 12:
        major, minor, revision = struct.unpack_from("<iii", head)
        wide = major * 10 + minor >= 2  # darknet's rule for a 64-bit ``seen``
        nbytes = 20 if wide else 16
        if len(head) >= nbytes and 0 <= major < 1000 and 0 <= minor < 1000:
            (seen,) = struct.unpack_from("<Q" if wide else "<I", head, 12)
            return f"{major}.{minor}.{revision}", seen, nbytes
    raise Invalid(
        f"{name} does not start with a darknet .weights header (int32 major, minor, revision "
        "and the images seen); upload the file darknet wrote"
    )


def layer_values(config: DarknetConfig) -> list[tuple[int, int]]:
    """``(layer index, float32 values)`` of each [convolutional] layer in a .weights file for
    ``config``: with batch norm its shift, scale, rolling mean and variance, else its bias,
    then the kernel ``(filters, C/groups, size, size)``."""
    values = []
    for row in config.layer_table():
        conv = row.section
        if isinstance(conv, ConvolutionalSection):
            kernel = row.input[2] // conv.groups * conv.filters * conv.size * conv.size
            values.append((row.index, kernel + conv.filters * (4 if conv.batch_normalize else 1)))
    return values


def _size_problem(
    config: DarknetConfig, model_id: int, values: int, cutoff: int | None
) -> str | None:
    """What is wrong with a file of ``values`` float32 for layers ``0 .. cutoff-1``, or None."""
    layers = layer_values(config)
    expected = sum(count for index, count in layers if cutoff is None or index < cutoff)
    if values == expected:
        return None
    below = f"layers 0-{cutoff - 1}" if cutoff is not None else "all layers"
    problem = (
        f"the file holds {values} float32 values after its header, and {below} of model "
        f"{model_id} need {expected}"
    )
    total = 0
    for index, count in layers:
        total += count
        if total == values:
            return (
                f"{problem}: it holds the first {index + 1} layers; upload it with "
                f"cutoff={index + 1}"
            )
    return f"{problem}: the weights are for another network (check classes= and filters=)"


def _model_row(session: Session, tenant_id: int, ref: str) -> ModelConfig:
    """The tenant's uploaded cfg ``ref``; NotFound, or Conflict for a bundled cfg."""
    try:
        model = resolve_model(session, tenant_id, ref)
    except ModelNotFoundError as error:
        raise NotFound(str(error)) from None
    if model.upload is None:
        raise Conflict(
            f"{model.name} is a bundled cfg; weights belong to an uploaded cfg: upload its text "
            "(POST /v1/models) and then the weights for the new model's id"
        )
    return model.upload


def _checked(
    config: DarknetConfig, model_id: int, file: IO[bytes], name: str, cutoff: int | None
) -> dict[str, Any]:
    """What the stored row records of ``file``; Invalid unless it fits the cfg's layers."""
    if cutoff is not None and cutoff > len(config.sections):
        raise Invalid(f"cutoff={cutoff}: model {model_id} has {len(config.sections)} layers")
    file.seek(0)
    version, seen, nbytes = _header(file.read(20), name)
    size = file.seek(0, 2)
    body = size - nbytes
    problem = (
        f"the {body} bytes after the header are not whole float32 values"
        if body % 4
        else _size_problem(config, model_id, body // 4, cutoff)
    )
    if problem:
        raise Invalid(f"{name}: {problem}")
    layers = [i for i, _ in layer_values(config) if cutoff is None or i < cutoff]
    return {"version": version, "seen": seen, "size": size, "cutoff": cutoff,
            "layers": len(layers)}  # fmt: skip


def _copy(file: IO[bytes], target: Path) -> str:
    """Write ``file`` to ``target``; its sha256."""
    digest = hashlib.sha256()
    file.seek(0)
    with target.open("wb") as out:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def upload_weights(
    sessions: sessionmaker[Session],
    tenant_id: int,
    settings: Settings,
    ref: str,
    file: IO[bytes],
    filename: str | None,
    cutoff: int | None,
) -> ModelWeightsPublic:
    """Check ``file`` against the layers of the tenant's uploaded cfg ``ref`` up to ``cutoff``
    and store it as the model's start weights, replacing any before. NotFound, Conflict (a
    bundled cfg), Invalid (a file that does not fit, saying how), OverQuota."""
    with sessions() as session:
        row = _model_row(session, tenant_id, ref)
        model_id, text, name = row.id, row.cfg_text, row.name
    try:
        config = parse_cfg(text, f"{name}.cfg")
    except CfgError as error:
        raise Invalid(f"stored cfg {model_id} no longer parses ({error})") from None
    record = _checked(config, model_id, file, filename or "the file", cutoff)
    folder = model_folder(settings, model_id)
    folder.mkdir(parents=True, exist_ok=True)
    # Beside the models' folders, so the quota does not count it.
    staging = folder.parent / f".staging-{uuid.uuid4().hex}"
    key = f"models/{model_id}/{WEIGHTS_FILE}"  # its path relative to the artifact root
    try:
        record["sha256"] = _copy(file, staging)
        with sessions() as session:
            check_quota(session, tenant_id, settings, record["size"])
            stored = session.get(ModelConfig, model_id)
            if stored is None:
                raise NotFound(f"model {model_id} was deleted during the upload")
            record["created_at"] = utcnow().isoformat()
            record["path"] = key
            open_store(settings).put_file(key, staging)  # whole: a job never reads half a file
            stored.weights = record
            session.commit()
    finally:
        staging.unlink(missing_ok=True)
    return ModelWeightsPublic.model_validate(record)


def remove_model_folder(settings: Settings, model_id: int) -> None:
    """Remove a deleted model's folder (its weights); already gone is fine."""
    open_store(settings).delete(f"models/{model_id}")
