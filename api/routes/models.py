"""Models: darknet cfgs, bundled with ae_model or uploaded by a tenant, and their layer tables.

A model is referred to by a ``ref``: a bundled cfg's name (``yolov3-tiny``) or an uploaded
cfg's id (``12``). Cfgs are parsed with ``ae_model.cfg`` (torch-free), so an upload that would
not build is refused here, with the line at fault, rather than in a training job.
"""

import threading
import warnings
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from sqlalchemy import func, select

from ae_model.cfg import (
    SIZE_STEP,
    CfgError,
    CfgWarning,
    DarknetConfig,
    RegionSection,
    YoloSection,
    bundled_cfg_path,
    list_bundled_cfgs,
    parse_cfg,
)
from api.budget import parameters_over_budget
from api.core.db.models import ModelConfig
from api.deps import SessionDep, TenantDep
from api.schemas import (
    BAD_JSON,
    MAX_ROW_ID,
    UNAUTHORIZED,
    LayerRowPublic,
    LayerTablePublic,
    ModelCreate,
    ModelPublic,
    Page,
)

router = APIRouter(prefix="/v1/models", tags=["models"], responses=UNAUTHORIZED)

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No bundled cfg of that name and no uploaded cfg of that id."}
}
MAX_INPUT_SIDE = 4096

# warnings.catch_warnings swaps process-wide state; one parse at a time keeps each request's
# warnings its own.
_warnings_lock = threading.Lock()


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
        heads = [s for s in self.config.sections if isinstance(s, YoloSection | RegionSection)]
        net = self.config.net
        return ModelPublic(
            ref=self.ref,
            id=self.id,
            name=self.name,
            source="bundled" if self.id is None else "uploaded",
            classes=heads[0].classes if heads else None,
            width=net.width,
            height=net.height,
            channels=net.channels,
            layers=len(self.config.sections),
            bflops=sum(row.bflops for row in self.config.layer_table()),
            warnings=list(self.warnings),
            created_at=self.created_at,
        )


def _parse(text: str, source: str) -> tuple[DarknetConfig, tuple[str, ...]]:
    """Parse cfg text, collecting its ``CfgWarning``s; ``CfgError`` propagates."""
    with _warnings_lock, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CfgWarning)
        config = parse_cfg(text, source)
    messages = [str(w.message) for w in caught if issubclass(w.category, CfgWarning)]
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
        path = bundled_cfg_path(name)
        config, messages = _parse(path.read_text(encoding="utf-8-sig"), path.name)
        cfgs[name] = _Cfg(ref=name, id=None, name=name, config=config, warnings=messages)
    return cfgs


def _uploaded(row: ModelConfig) -> _Cfg:
    try:
        config, messages = _parse(row.cfg_text, f"{row.name}.cfg")
    except CfgError as error:  # stored by an older, more lenient version of the parser
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"stored cfg {row.id} no longer parses ({error}); upload a corrected cfg",
        ) from None
    return _Cfg(str(row.id), row.id, row.name, config, messages, row.created_at)


def _resolve(ref: str, session: SessionDep, tenant_id: int) -> _Cfg:
    """The cfg a ref names, visible to the tenant; 404 otherwise."""
    if ref.isascii() and ref.isdigit():
        row = session.get(ModelConfig, int(ref)) if 0 < int(ref) <= MAX_ROW_ID else None
        if row is not None and row.tenant_id == tenant_id:
            return _uploaded(row)
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"model {ref} not found")
    bundled = _bundled().get(ref.removesuffix(".cfg"))
    if bundled is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"no model {ref!r}: use a bundled name ({', '.join(_bundled())}) or the id of an "
            "uploaded cfg (GET /v1/models lists both)",
        )
    return bundled


def _parse_size(size: str) -> tuple[int, int]:
    """``"416"`` -> (416, 416), ``"320x192"`` -> (320, 192); 422 unless multiples of 32."""
    width_text, separator, height_text = size.lower().partition("x")
    if not separator:
        height_text = width_text
    if not (width_text.isdigit() and height_text.isdigit()):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"size={size!r}: give the input size as W or WxH, e.g. 416 or 320x192",
        )
    width, height = int(width_text), int(height_text)
    for side in (width, height):
        if side < SIZE_STEP or side % SIZE_STEP or side > MAX_INPUT_SIDE:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"size={size!r}: width and height must be positive multiples of {SIZE_STEP} "
                f"up to {MAX_INPUT_SIDE} (e.g. 416 or 320x192)",
            )
    return width, height


@router.get("", response_model=Page[ModelPublic], summary="List bundled and uploaded cfgs")
def list_models(
    session: SessionDep,
    tenant_id: TenantDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_ROW_ID)] = 0,
) -> Page[ModelPublic]:
    """Bundled cfgs first (by name), then this tenant's uploads, newest first."""
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
        data += [_uploaded(row).public() for row in rows]
    return Page(data=data, count=len(bundled) + uploaded_count)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ModelPublic,
    summary="Upload a darknet cfg",
    responses={
        **BAD_JSON,
        422: {
            "description": "The cfg does not parse (the detail names the line), or it passes "
            "this server's compute or parameter budget."
        },
    },
)
def create_model(
    body: ModelCreate, request: Request, session: SessionDep, tenant_id: TenantDep
) -> ModelPublic:
    """Store a darknet cfg after parsing it and checking its shapes at the cfg's own size.
    Unknown keys are accepted and listed in ``warnings``; unknown sections and bad values are
    refused with the line at fault."""
    try:
        config, messages = _parse(body.cfg, f"{body.name}.cfg")
    except CfgError as error:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(error)) from None
    settings = request.app.state.settings
    rows = config.layer_table()
    bflops = sum(row.bflops for row in rows)
    if bflops > settings.max_bflops:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"{body.name}.cfg needs {bflops:.0f} BFLOPs per image at its own size "
            f"{config.net.width}x{config.net.height}, over this server's budget of "
            f"{settings.max_bflops:g}; use fewer or smaller layers or a smaller [net] width/height",
        )
    too_many = parameters_over_budget(rows, settings.max_params_m)
    if too_many:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{body.name}.cfg: {too_many}")
    row = ModelConfig(tenant_id=tenant_id, name=body.name, cfg_text=body.cfg)
    session.add(row)
    session.commit()
    return _Cfg(str(row.id), row.id, row.name, config, messages, row.created_at).public()


@router.get("/{ref}", response_model=ModelPublic, summary="Get a cfg", responses=NOT_FOUND)
def get_model(ref: str, session: SessionDep, tenant_id: TenantDep) -> ModelPublic:
    return _resolve(ref, session, tenant_id).public()


@router.get(
    "/{ref}/layers",
    response_model=LayerTablePublic,
    summary="Darknet's layer table of a cfg at an input size",
    responses={
        **NOT_FOUND,
        422: {"description": "Bad size, or the cfg's shapes do not fit at that size."},
    },
)
def get_layers(
    ref: str,
    session: SessionDep,
    tenant_id: TenantDep,
    size: Annotated[
        str | None,
        Query(
            description="Input W or WxH, multiples of 32 (default: the cfg's width x height).",
            examples=["416", "320x192"],
        ),
    ] = None,
) -> LayerTablePublic:
    """Each layer's type, filters, kernel size/stride, input and output ``[w, h, c]``, BFLOPs
    and output stride (input width / output width), so an AE layer of stride 8, 16 or 32 can
    be picked by index."""
    cfg = _resolve(ref, session, tenant_id)
    if size is None:
        width, height = cfg.config.net.width, cfg.config.net.height
    else:
        width, height = _parse_size(size)
    try:
        rows = cfg.config.layer_table(width, height)
    except (CfgError, ArithmeticError) as error:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"the layers do not fit together at {width}x{height}: {error}; try another size",
        ) from None
    return LayerTablePublic(
        ref=cfg.ref,
        name=cfg.name,
        width=width,
        height=height,
        layers=[LayerRowPublic(**row.as_dict(), out_stride=row.out_stride) for row in rows],
        total_bflops=sum(row.bflops for row in rows),
    )
