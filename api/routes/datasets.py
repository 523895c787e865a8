"""Datasets: uploaded as a zip and validated, or generated; stored under the artifact directory.

A dataset is all or nothing: it is extracted and checked in a staging folder, and only a clean
one (warnings allowed) becomes a row and ``artifacts/datasets/<id>/``. A rejected upload
leaves neither behind.
"""

import shutil
import uuid
from collections.abc import Callable, Coroutine
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from fastapi import (
    APIRouter,
    Depends,
    File,
    Form,
    HTTPException,
    Query,
    Request,
    UploadFile,
    status,
)
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.types import Message

from ae_model.dataset_check import (
    ArchiveLimits,
    DatasetError,
    check_dataset,
    extract_zip,
    find_dataset_root,
)
from ae_model.datasets import generate_dataset
from api.core.db.models import Dataset
from api.core.settings import Settings
from api.deps import SessionDep, SettingsDep, TenantDep
from api.schemas import (
    MAX_ROW_ID,
    NAME_PATTERN,
    UNAUTHORIZED,
    DatasetGenerate,
    DatasetPublic,
    DatasetRejected,
    DatasetReport,
    Page,
    SplitCounts,
)


class UploadLimits(BaseSettings):
    """Limits on dataset uploads, from ``AETRAIN_MAX_UPLOAD_BYTES`` and friends.

    ``max_upload_bytes`` bounds the request body; the others bound what the zip may extract to
    (see ``ae_model.dataset_check.ArchiveLimits``).
    """

    model_config = SettingsConfigDict(env_prefix="AETRAIN_", extra="ignore")

    max_upload_bytes: int = Field(default=2 << 30, gt=0)
    max_dataset_bytes: int = Field(default=8 << 30, gt=0)
    max_dataset_files: int = Field(default=100_000, gt=0)
    max_compression_ratio: float = Field(default=100.0, gt=1)

    def archive_limits(self) -> ArchiveLimits:
        return ArchiveLimits(
            max_members=self.max_dataset_files,
            max_total_bytes=self.max_dataset_bytes,
            max_ratio=self.max_compression_ratio,
        )


@lru_cache
def get_upload_limits() -> UploadLimits:
    """The upload limits, read once from the environment (a dependency tests can override)."""
    return UploadLimits()


UploadLimitsDep = Annotated[UploadLimits, Depends(get_upload_limits)]


def _too_large(limit: int) -> HTTPException:
    return HTTPException(
        status.HTTP_413_CONTENT_TOO_LARGE,
        f"the request body is larger than the upload limit of {limit} bytes; upload a smaller "
        "zip (drop unused images, or re-encode them as JPEG)",
    )


class UploadSizeLimitedRoute(APIRoute):
    """A route that refuses bodies over ``max_upload_bytes`` before they reach the disk.

    FastAPI parses a multipart body before it resolves dependencies, so the limit is applied
    here, by Content-Length up front and by counting while the body streams in.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def limited_handler(request: Request) -> Response:
            provider = request.app.dependency_overrides.get(get_upload_limits, get_upload_limits)
            limit = provider().max_upload_bytes
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise _too_large(limit)
            receive = request.receive
            received = 0

            async def counting_receive() -> Message:
                nonlocal received
                message = await receive()
                received += len(message.get("body", b""))
                if received > limit:
                    raise _too_large(limit)
                return message

            return await handler(Request(request.scope, counting_receive))

        return limited_handler


router = APIRouter(
    prefix="/v1/datasets",
    tags=["datasets"],
    responses=UNAUTHORIZED,
    route_class=UploadSizeLimitedRoute,
)

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such dataset of this tenant."}
}


def _name_from_file(filename: str | None) -> str:
    """``pets.zip`` -> ``pets``; control characters dropped."""
    stem = Path(filename or "").stem
    return "".join(c for c in stem if c.isprintable())[:200] or "dataset"


def _datasets_dir(settings: Settings) -> Path:
    return settings.artifacts_dir / "datasets"


def _staging_dir(settings: Settings) -> Path:
    # Beside the final folders, so publishing is a rename on one file system.
    return _datasets_dir(settings) / f".staging-{uuid.uuid4().hex}"


def _publish(
    session: Session,
    settings: Settings,
    staging: Path,
    root: Path,
    row: Dataset,
) -> DatasetPublic:
    """Insert ``row`` and move ``staging`` to ``datasets/<id>``; ``root`` is the dataset's top
    folder inside ``staging``. On any failure neither the row nor the folder remains."""
    session.add(row)
    session.flush()
    final = _datasets_dir(settings) / str(row.id)
    try:
        if final.exists():  # left by a crash before an id was reused; no row owns it
            shutil.rmtree(final)
        staging.rename(final)
        row.path = str(final / root.relative_to(staging))
        session.commit()
    except BaseException:
        session.rollback()
        shutil.rmtree(final, ignore_errors=True)
        raise
    return DatasetPublic.model_validate(row)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetPublic,
    summary="Upload a dataset (zip, COCO or YOLO layout)",
    responses={
        400: {"description": "The body is not valid multipart form data."},
        413: {"description": "The upload is larger than the limit."},
        422: {
            "model": DatasetRejected,
            "description": "The zip is unsafe or unreadable (detail only), or the dataset has "
            "errors (detail and the full report). Nothing was stored.",
        },
    },
)
def upload_dataset(
    session: SessionDep,
    tenant_id: TenantDep,
    settings: SettingsDep,
    limits: UploadLimitsDep,
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
    staging = _staging_dir(settings)
    try:
        try:
            file.file.seek(0)
            extract_zip(file.file, staging, limits.archive_limits())
        except DatasetError as error:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(error)) from None
        root = find_dataset_root(staging)
        report = check_dataset(root, display_root=staging)
        public_report = DatasetReport.model_validate(report.as_dict())
        if not report.ok:
            detail = (
                f"the dataset has {report.error_count} error(s), first: {report.errors[0]}; "
                "fix them all (see report.errors) and upload again"
            )
            rejected = DatasetRejected(detail=detail, report=public_report)
            return JSONResponse(rejected.model_dump(mode="json"), status_code=422)
        counts = report.splits
        row = Dataset(
            tenant_id=tenant_id,
            name=name or _name_from_file(file.filename),
            status="ready",
            path="",
            class_names=report.class_names,
            num_train=counts["train"].images,
            num_val=counts["val"].images,
            report=public_report.model_dump(mode="json"),
        )
        return _publish(session, settings, staging, root, row)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@router.post(
    "/generate",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetPublic,
    summary="Generate a dataset (digits or shapes, deterministic by seed)",
)
def generate(
    spec: DatasetGenerate, session: SessionDep, tenant_id: TenantDep, settings: SettingsDep
) -> DatasetPublic:
    """Render a ``digits`` or ``shapes`` dataset in COCO layout (see docs/data.md): the same
    request gives byte-identical images. Rendering runs in the request; 500 digits images of
    256 px take a few seconds."""
    staging = _staging_dir(settings)
    try:
        try:
            info = generate_dataset(
                spec.kind,
                staging,
                train=spec.train,
                val=spec.val,
                size=spec.size,
                seed=spec.seed,
                min_objects=spec.min_objects,
                max_objects=spec.max_objects,
                min_scale=spec.min_scale,
                max_scale=spec.max_scale,
            )
        except ValueError as error:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(error)) from None
        report = DatasetReport(
            counts={
                split: SplitCounts(layout="coco", images=s.num_images, objects=s.num_objects)
                for split, s in info.splits.items()
            },
            generator=spec.model_dump(exclude={"name"}),
        )
        default_name = f"{spec.kind}-{spec.train}+{spec.val}-{spec.size}px-seed{spec.seed}"
        row = Dataset(
            tenant_id=tenant_id,
            name=spec.name or default_name,
            status="ready",
            path="",
            class_names=list(info.class_names),
            num_train=info.splits["train"].num_images,
            num_val=info.splits["val"].num_images,
            report=report.model_dump(mode="json"),
        )
        return _publish(session, settings, staging, staging, row)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@router.get("", response_model=Page[DatasetPublic], summary="List datasets, newest first")
def list_datasets(
    session: SessionDep,
    tenant_id: TenantDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ROW_ID)] = 0,
) -> Page[DatasetPublic]:
    mine = select(Dataset).where(Dataset.tenant_id == tenant_id)
    count = session.scalar(select(func.count()).select_from(mine.subquery())) or 0
    rows = session.scalars(
        mine.order_by(Dataset.created_at.desc(), Dataset.id.desc()).limit(limit).offset(offset)
    ).all()
    return Page(data=[DatasetPublic.model_validate(r) for r in rows], count=count)


@router.get(
    "/{dataset_id}", response_model=DatasetPublic, summary="Get a dataset", responses=NOT_FOUND
)
def get_dataset(dataset_id: int, session: SessionDep, tenant_id: TenantDep) -> DatasetPublic:
    row = session.get(Dataset, dataset_id) if 0 < dataset_id <= MAX_ROW_ID else None
    if row is None or row.tenant_id != tenant_id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"dataset {dataset_id} not found")
    return DatasetPublic.model_validate(row)
