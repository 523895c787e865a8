"""Datasets: uploaded as a zip and validated, or generated (``api.services.datasets``)."""

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, UploadFile, status
from fastapi.responses import JSONResponse

from api.core.db.models import MAX_ROW_ID
from api.deps import HeavyDep, HeavyTenantDep, SessionDep, SessionsDep, SettingsDep, TenantDep
from api.routes import OneHopRoute
from api.schemas.common import NAME_PATTERN, TENANT_BUSY, UNAUTHORIZED, Page
from api.schemas.datasets import DatasetGenerate, DatasetPublic, DatasetRejected
from api.services import datasets
from api.services.datasets import DatasetHasErrors

# An upload's body is refused over AETRAIN_MAX_UPLOAD_BYTES while it arrives, before it
# reaches the disk, by api.validation.RequestGuard (as every body is over its limit).
router = APIRouter(
    route_class=OneHopRoute, prefix="/v1/datasets", tags=["datasets"], responses=UNAUTHORIZED
)

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such dataset of this tenant."}
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetPublic,
    summary="Upload a dataset (zip, COCO or YOLO layout)",
    responses={
        **TENANT_BUSY,
        400: {"description": "The body is not valid multipart form data."},
        413: {
            "description": "The upload is larger than the limit, or the dataset would pass "
            "the tenant's storage quota (the detail says what to delete)."
        },
        422: {
            "model": DatasetRejected,
            "description": "The zip is unsafe or unreadable (detail only), or the dataset has "
            "errors (detail and the full report). Nothing was stored.",
        },
    },
)
async def upload_dataset(
    sessions: SessionsDep,
    tenant_id: HeavyTenantDep,
    heavy: HeavyDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="A .zip of the dataset folder.")],
    name: Annotated[
        str | None,
        Form(
            min_length=1,
            max_length=200,
            pattern=NAME_PATTERN,
            description="Default: the file's name.",
        ),
    ] = None,
) -> DatasetPublic | JSONResponse:
    """Upload a zip holding a COCO dataset (``annotations/instances_{train,val}.json`` with
    images in ``images/{train,val}/``) or a YOLO one (``images/{train,val}/``, labels in
    ``labels/{train,val}/*.txt`` and class names in ``classes.txt`` or one ``.names`` file).
    A single top folder in the zip is fine. Every image is read and every box checked; any
    error rejects the upload with a report naming each problem's file and line or id.
    """
    try:
        return await heavy.run(
            lambda: datasets.upload_dataset(
                sessions, tenant_id, settings, file.file, file.filename, name
            )
        )
    except DatasetHasErrors as error:
        rejected = DatasetRejected(detail=error.detail, report=error.report)
        return JSONResponse(rejected.model_dump(mode="json"), status_code=422)


@router.post(
    "/generate",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetPublic,
    summary="Generate a dataset (digits or shapes, deterministic by seed)",
    responses={
        **TENANT_BUSY,
        413: {"description": "The dataset would pass the tenant's storage quota."},
    },
)
async def generate(
    spec: DatasetGenerate,
    sessions: SessionsDep,
    tenant_id: HeavyTenantDep,
    heavy: HeavyDep,
    settings: SettingsDep,
) -> DatasetPublic:
    """Render a ``digits`` or ``shapes`` dataset in COCO layout (see docs/data.md): the same
    request gives byte-identical images. Rendering runs in the request; 500 digits images of
    256 px take a few seconds, so a tenant runs AETRAIN_MAX_HEAVY_PER_TENANT at once."""
    return await heavy.run(lambda: datasets.generate(sessions, tenant_id, settings, spec))


@router.get("", response_model=Page[DatasetPublic], summary="List datasets, newest first")
def list_datasets(
    session: SessionDep,
    tenant_id: TenantDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ROW_ID)] = 0,
) -> Page[DatasetPublic]:
    return datasets.list_datasets(session, tenant_id, limit, offset)


@router.get(
    "/{dataset_id}", response_model=DatasetPublic, summary="Get a dataset", responses=NOT_FOUND
)
def get_dataset(dataset_id: int, session: SessionDep, tenant_id: TenantDep) -> DatasetPublic:
    return datasets.get_dataset(session, tenant_id, dataset_id)


@router.delete(
    "/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a dataset",
    responses={**NOT_FOUND, 409: {"description": "A queued or running job trains on it."}},
)
def delete_dataset(
    dataset_id: int, session: SessionDep, tenant_id: TenantDep, settings: SettingsDep
) -> None:
    """Delete the dataset and its files. While a queued or running job uses it, 409: cancel
    the job or let it finish. Finished jobs keep their results and checkpoints. A second
    delete answers 404."""
    datasets.delete_dataset(session, tenant_id, settings, dataset_id)
