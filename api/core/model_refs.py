"""What a model reference names: a bundled cfg by its name (``yolov3-tiny``), or one of the
tenant's uploaded cfgs by its id (``12``). The one resolver of references, for the API (a job's
``model``, ``GET /v1/models/{ref}``) and the worker (the cfg a job trains). Torch-free.
"""

import dataclasses
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from ae_model.cfg import CfgError, DarknetConfig, bundled_cfg_path, parse_cfg
from api.core.db.models import MAX_ROW_ID, ModelConfig


class ModelNotFoundError(LookupError):
    """The reference names neither a bundled cfg nor an uploaded cfg of the tenant."""


@dataclass(frozen=True)
class ModelCfg:
    """A resolved reference: the cfg's name and text, and its row when it is an upload."""

    name: str
    text: str
    upload: ModelConfig | None = None
    parsed: DarknetConfig | None = field(default=None, repr=False, compare=False)
    """The cfg parsed already (a bundled cfg's); None: parsed by :meth:`parse`."""

    @property
    def ref(self) -> str:
        """The reference as ``GET /v1/models`` lists it: the name, or an upload's id."""
        return self.name if self.upload is None else str(self.upload.id)

    @property
    def source(self) -> str:
        """The file name errors and warnings give the cfg: ``<name>.cfg``."""
        return f"{self.name}.cfg"

    def parse(self) -> DarknetConfig:
        """The parsed cfg; ``CfgError`` if its text does not parse (a stored cfg that an
        older, more lenient version of the parser accepted)."""
        return self.parsed if self.parsed is not None else parse_cfg(self.text, self.source)


def model_ref(ref: str | int) -> str | int:
    """What ``ref`` names: an ``int``, or a string of ASCII digits (an upload's ``ref`` in
    ``GET /v1/models``), is an upload's id; any other string a bundled cfg's name."""
    return int(ref) if isinstance(ref, str) and ref.isascii() and ref.isdigit() else ref


def resolve_model(session: Session, tenant_id: int, ref: str | int) -> ModelCfg:
    """The cfg ``ref`` (:func:`model_ref`) names for tenant ``tenant_id``: one of its uploads,
    or a bundled cfg (``.cfg`` optional). ``ModelNotFoundError`` otherwise, saying where to
    find the references that exist."""
    named = model_ref(ref)
    if isinstance(named, str):
        return bundled_model(named)
    upload = None
    if 0 < named <= MAX_ROW_ID:
        upload = session.scalar(
            select(ModelConfig).where(ModelConfig.id == named, ModelConfig.tenant_id == tenant_id)
        )
    if upload is None:
        raise ModelNotFoundError(f"no uploaded model {ref}; see GET /v1/models")
    return uploaded_model(upload)


def bundled_model(name: str) -> ModelCfg:
    """The bundled cfg ``name`` (``.cfg`` optional); ``ModelNotFoundError`` lists the
    bundled ones when there is none of that name."""
    try:
        path = bundled_cfg_path(name)
    except CfgError as error:
        raise ModelNotFoundError(str(error)) from None
    return _bundled(path)


@cache
def _bundled(path: Path) -> ModelCfg:
    """Read and parsed once per process: bundled cfgs ship with the code, and a submission
    naming one would otherwise read and parse it again (ModelCfg and the parsed cfg are
    frozen, so every request may share them)."""
    text = path.read_text(encoding="utf-8-sig")
    model = ModelCfg(name=path.stem, text=text)
    return dataclasses.replace(model, parsed=parse_cfg(text, model.source))


def uploaded_model(upload: ModelConfig) -> ModelCfg:
    """The cfg of an upload's row."""
    return ModelCfg(name=upload.name, text=upload.cfg_text, upload=upload)
