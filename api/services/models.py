"""Models: darknet cfgs, bundled with ae_model or uploaded by a tenant, and their layer tables.

A model is referred to by a ``ref``: a bundled cfg's name (``yolov3-tiny``) or an uploaded
cfg's id (``12``). Cfgs are parsed with ``ae_model.cfg`` (torch-free), so an upload that would
not build is refused here, with the line at fault, rather than in a training job. What a listing
shows of an uploaded cfg is stored with it (``ModelConfig.summary``), so listing parses nothing.
"""

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from ae_model.cfg import (
    SIZE_STEP,
    CfgError,
    DarknetConfig,
    RegionSection,
    YoloSection,
    list_bundled_cfgs,
    parse_cfg,
)
from api.budget import parameters_over_budget
from api.core.db.models import ModelConfig
from api.core.model_refs import (
    ModelCfg,
    ModelNotFoundError,
    bundled_model,
    resolve_model,
    uploaded_model,
)
from api.core.settings import Settings
from api.schemas.common import Page
from api.schemas.models import (
    LayerRowPublic,
    LayerTablePublic,
    ModelCreate,
    ModelPublic,
    ModelWeightsPublic,
)
from api.services.errors import Conflict, Invalid, NotFound
from api.services.jobs import refuse_while_in_use
from api.services.model_weights import remove_model_folder

MAX_INPUT_SIDE = 4096


@dataclass(frozen=True)
class _Cfg:
    """A parsed cfg with where it came from and the warnings parsing it raised."""

    ref: str
    id: int | None
    name: str
    config: DarknetConfig
    warnings: tuple[str, ...]
    created_at: datetime | None = None

    def public(self) -> ModelPublic:
        return ModelPublic(
            ref=self.ref,
            id=self.id,
            name=self.name,
            source="bundled" if self.id is None else "uploaded",
            created_at=self.created_at,
            **_summary(self.config, self.warnings),
        )


def _summary(config: DarknetConfig, warnings: tuple[str, ...]) -> dict[str, Any]:
    """``ModelPublic``'s fields that come from parsing the cfg, as JSON."""
    heads = [s for s in config.sections if isinstance(s, YoloSection | RegionSection)]
    net = config.net
    return {
        "classes": heads[0].classes if heads else None,
        "width": net.width,
        "height": net.height,
        "channels": net.channels,
        "layers": len(config.sections),
        "bflops": sum(row.bflops for row in config.layer_table()),
        "warnings": list(warnings),
    }


def _stored_public(row: ModelConfig) -> ModelPublic:
    """An upload as clients see it, from its stored summary; one stored before migration 0009
    is parsed once and its summary kept (committed by the caller)."""
    if row.summary is None:
        cfg = _uploaded(row)
        row.summary = _summary(cfg.config, cfg.warnings)
    return ModelPublic(
        ref=str(row.id),
        id=row.id,
        name=row.name,
        source="uploaded",
        created_at=row.created_at,
        weights=ModelWeightsPublic.model_validate(row.weights) if row.weights else None,
        **row.summary,
    )


def _parse(text: str, source: str) -> tuple[DarknetConfig, tuple[str, ...]]:
    """Parse cfg text, with its warnings and the API's own; ``CfgError`` propagates."""
    config = parse_cfg(text, source)
    messages = list(config.warnings)
    if not any(s.type in ("yolo", "region") for s in config.sections):
        messages.append(
            f"{source}: no [yolo] or [region] layer, so the network has no detection head and "
            "cannot be trained as a detector; its layer table still works"
        )
    return config, tuple(messages)


@lru_cache
def _bundled() -> dict[str, _Cfg]:
    """Every bundled cfg, parsed once per process (they ship with the code)."""
    cfgs = {}
    for name in list_bundled_cfgs():
        model = bundled_model(name)
        config, messages = _parse(model.text, model.source)
        cfgs[name] = _Cfg(ref=name, id=None, name=name, config=config, warnings=messages)
    return cfgs


def _uploaded(row: ModelConfig) -> _Cfg:
    try:
        config, messages = _parse(row.cfg_text, uploaded_model(row).source)
    except CfgError as error:  # stored by an older, more lenient version of the parser
        raise Invalid(
            f"stored cfg {row.id} no longer parses ({error}); upload a corrected cfg"
        ) from None
    return _Cfg(str(row.id), row.id, row.name, config, messages, row.created_at)


def _find(session: Session, tenant_id: int, ref: str) -> ModelCfg:
    """The cfg a ref names, visible to the tenant; NotFound otherwise."""
    try:
        return resolve_model(session, tenant_id, ref)
    except ModelNotFoundError as error:
        raise NotFound(str(error)) from None


def _resolve(ref: str, session: Session, tenant_id: int) -> _Cfg:
    """The cfg a ref names, visible to the tenant, parsed; NotFound otherwise."""
    model = _find(session, tenant_id, ref)
    return _bundled()[model.name] if model.upload is None else _uploaded(model.upload)


def _parse_size(size: str) -> tuple[int, int]:
    """``"416"`` -> (416, 416), ``"320x192"`` -> (320, 192); Invalid unless multiples of 32."""
    width_text, separator, height_text = size.lower().partition("x")
    if not separator:
        height_text = width_text
    if not (width_text.isdigit() and height_text.isdigit()):
        raise Invalid(
            f"size={size!r}: give the input size as W or WxH, e.g. 416 or 320x192",
        )
    width, height = int(width_text), int(height_text)
    for side in (width, height):
        if side < SIZE_STEP or side % SIZE_STEP or side > MAX_INPUT_SIDE:
            raise Invalid(
                f"size={size!r}: width and height must be positive multiples of {SIZE_STEP} "
                f"up to {MAX_INPUT_SIDE} (e.g. 416 or 320x192)",
            )
    return width, height


def list_models(session: Session, tenant_id: int, limit: int, offset: int) -> Page[ModelPublic]:
    """Bundled cfgs first (by name), then the tenant's uploads, newest first."""
    bundled = [cfg.public() for cfg in _bundled().values()]
    mine = select(ModelConfig).where(ModelConfig.tenant_id == tenant_id)
    uploaded_count = session.scalar(select(func.count()).select_from(mine.subquery())) or 0
    data = bundled[offset : offset + limit]
    uploaded_offset = max(0, offset - len(bundled))
    uploaded_limit = limit - len(data)
    if uploaded_limit > 0:
        rows = session.scalars(
            mine.order_by(ModelConfig.created_at.desc(), ModelConfig.id.desc())
            .limit(uploaded_limit)
            .offset(uploaded_offset)
        ).all()
        data += [_stored_public(row) for row in rows]
        if session.dirty:  # summaries filled in for rows stored before migration 0009
            session.commit()
    return Page(data=data, count=len(bundled) + uploaded_count)


def create_model(
    sessions: sessionmaker[Session], tenant_id: int, settings: Settings, body: ModelCreate
) -> ModelPublic:
    """Store a cfg that parses and fits this server's compute and parameter budgets at its
    own size; Invalid otherwise, with the line at fault or the budget passed. The parse holds
    no session: one is opened to store the row."""
    try:
        config, messages = _parse(body.cfg, f"{body.name}.cfg")
    except CfgError as error:
        raise Invalid(str(error)) from None
    rows = config.layer_table()
    bflops = sum(row.bflops for row in rows)
    if bflops > settings.max_bflops:
        raise Invalid(
            f"{body.name}.cfg needs {bflops:.0f} BFLOPs per image at its own size "
            f"{config.net.width}x{config.net.height}, over this server's budget of "
            f"{settings.max_bflops:g}; use fewer or smaller layers or a smaller [net] width/height"
        )
    too_many = parameters_over_budget(rows, settings.max_params_m)
    if too_many:
        raise Invalid(f"{body.name}.cfg: {too_many}")
    summary = _summary(config, messages)
    row = ModelConfig(tenant_id=tenant_id, name=body.name, cfg_text=body.cfg, summary=summary)
    with sessions() as session:
        session.add(row)
        session.commit()
        return _stored_public(row)


def get_model(session: Session, tenant_id: int, ref: str) -> ModelPublic:
    model = _find(session, tenant_id, ref)
    if model.upload is None:
        return _bundled()[model.name].public()
    public = _stored_public(model.upload)
    if session.dirty:  # the summary of a row stored before migration 0009
        session.commit()
    return public


def delete_model(session: Session, tenant_id: int, settings: Settings, ref: str) -> None:
    """Delete the tenant's uploaded cfg ``ref`` and then its weights. NotFound for no such cfg
    (or another tenant's); Conflict for a bundled cfg, or while a queued or running job trains
    it. Finished jobs keep their resolved cfg text."""
    model = _find(session, tenant_id, ref)
    if model.upload is None:
        raise Conflict(f"{model.name} is a bundled cfg, part of the server; only uploaded cfgs "
                       "can be deleted")  # fmt: skip
    upload_id = model.upload.id
    refuse_while_in_use(session, tenant_id, "model", upload_id, f"model {upload_id}")
    session.execute(delete(ModelConfig).where(ModelConfig.id == upload_id))
    session.commit()
    remove_model_folder(settings, upload_id)


def layer_table(session: Session, tenant_id: int, ref: str, size: str | None) -> LayerTablePublic:
    """Darknet's layer table of the cfg ``ref`` at ``size`` (W or WxH; default: the cfg's
    own); Invalid for a bad size or one the layers do not fit together at."""
    cfg = _resolve(ref, session, tenant_id)
    if size is None:
        width, height = cfg.config.net.width, cfg.config.net.height
    else:
        width, height = _parse_size(size)
    try:
        rows = cfg.config.layer_table(width, height)
    except (CfgError, ArithmeticError) as error:
        raise Invalid(
            f"the layers do not fit together at {width}x{height}: {error}; try another size"
        ) from None
    return LayerTablePublic(
        ref=cfg.ref,
        name=cfg.name,
        width=width,
        height=height,
        layers=[LayerRowPublic(**row.as_dict(), out_stride=row.out_stride) for row in rows],
        total_bflops=sum(row.bflops for row in rows),
    )
