"""Models: darknet cfgs, bundled or uploaded, and their layer tables (``api.services.models``).

A model is referred to by a ``ref``: a bundled cfg's name (``yolov3-tiny``) or an uploaded
cfg's id (``12``).
"""

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, UploadFile, status

from api.core.db.models import MAX_ROW_ID
from api.deps import HeavyDep, HeavyTenantDep, SessionDep, SessionsDep, SettingsDep, TenantDep
from api.routes import OneHopRoute
from api.schemas.common import BAD_JSON, TENANT_BUSY, UNAUTHORIZED, Page
from api.schemas.models import LayerTablePublic, ModelCreate, ModelPublic, ModelWeightsPublic
from api.services import model_weights, models

router = APIRouter(
    route_class=OneHopRoute, prefix="/v1/models", tags=["models"], responses=UNAUTHORIZED
)

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No bundled cfg of that name and no uploaded cfg of that id."}
}


@router.get("", response_model=Page[ModelPublic], summary="List bundled and uploaded cfgs")
def list_models(
    session: SessionDep,
    tenant_id: TenantDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_ROW_ID)] = 0,
) -> Page[ModelPublic]:
    """Bundled cfgs first (by name), then this tenant's uploads, newest first."""
    return models.list_models(session, tenant_id, limit, offset)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ModelPublic,
    summary="Upload a darknet cfg",
    responses={
        **BAD_JSON,
        **TENANT_BUSY,
        422: {
            "description": "The cfg does not parse (the detail names the line), or it passes "
            "this server's compute or parameter budget."
        },
    },
)
async def create_model(
    body: ModelCreate,
    sessions: SessionsDep,
    tenant_id: HeavyTenantDep,
    heavy: HeavyDep,
    settings: SettingsDep,
) -> ModelPublic:
    """Store a darknet cfg after parsing it and checking its shapes at the cfg's own size.
    Unknown keys are accepted and listed in ``warnings``; unknown sections and bad values are
    refused with the line at fault."""
    return await heavy.run(lambda: models.create_model(sessions, tenant_id, settings, body))


@router.get("/{ref}", response_model=ModelPublic, summary="Get a cfg", responses=NOT_FOUND)
def get_model(ref: str, session: SessionDep, tenant_id: TenantDep) -> ModelPublic:
    return models.get_model(session, tenant_id, ref)


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
    return models.layer_table(session, tenant_id, ref, size)


@router.delete(
    "/{ref}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete an uploaded cfg",
    responses={
        **NOT_FOUND,
        409: {"description": "A bundled cfg, or one a queued or running job trains."},
    },
)
def delete_model(
    ref: str, session: SessionDep, tenant_id: TenantDep, settings: SettingsDep
) -> None:
    """Delete an uploaded cfg (by its id) and its weights. Bundled cfgs answer 409, as does a
    cfg a queued or running job trains; finished jobs keep their resolved cfg. A second
    delete answers 404."""
    models.delete_model(session, tenant_id, settings, ref)


@router.post(
    "/{ref}/weights",
    status_code=status.HTTP_201_CREATED,
    response_model=ModelWeightsPublic,
    summary="Upload darknet .weights to start the cfg's jobs from",
    responses={
        **NOT_FOUND,
        **TENANT_BUSY,
        400: {"description": "The body is not valid multipart form data."},
        409: {"description": "A bundled cfg: upload its text as a model first."},
        413: {"description": "Larger than the upload limit, or over the storage quota."},
        422: {
            "description": "Not a .weights file, or its size does not match the cfg's layers "
            "up to the cutoff (the detail says what it holds)."
        },
    },
)
async def upload_weights(
    ref: str,
    sessions: SessionsDep,
    tenant_id: HeavyTenantDep,
    heavy: HeavyDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="A darknet .weights or .conv.N file.")],
    cutoff: Annotated[
        int | None,
        Form(
            ge=1,
            le=MAX_ROW_ID,
            description="The file holds the first N layers (darknet's partial, e.g. 74 for "
            "darknet53.conv.74); omitted: all layers.",
        ),
    ] = None,
) -> ModelWeightsPublic:
    """Store darknet weights for an uploaded cfg, replacing any before; jobs of the cfg
    start from them with ``"init": {"source": "model_weights"}``. The header and the size
    are checked against the cfg's [convolutional] layers below ``cutoff``. The file counts
    in the storage quota and goes with the model."""
    return await heavy.run(
        lambda: model_weights.upload_weights(
            sessions, tenant_id, settings, ref, file.file, file.filename, cutoff
        )
    )
