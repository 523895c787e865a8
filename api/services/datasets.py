"""Datasets: uploaded as a zip and validated, or generated; stored in the artifact store.

A dataset is all or nothing: it is extracted and checked in a staging folder, and only a clean
one (warnings allowed) becomes a row and ``datasets/<id>/`` in the artifact store (the folder
``artifacts/datasets/<id>/``, or objects of an S3 store). A rejected upload
leaves neither behind. Uploading and generating take a sessionmaker: the extraction, checks
and rendering hold no database session, only the short publishing step does (``api.heavy``).
"""

import shutil
import uuid
from pathlib import Path, PurePosixPath
from typing import IO

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from ae_model.data.archive import ArchiveLimits, DatasetError, extract_zip, find_dataset_root
from ae_model.data.check import check_dataset
from ae_model.data.layout import dataset_splits
from ae_model.data.synthetic import generate_dataset
from api.core.artifacts import folder_bytes, open_store
from api.core.db.models import MAX_ROW_ID, Dataset
from api.core.settings import Settings
from api.schemas.common import Page
from api.schemas.datasets import DatasetGenerate, DatasetPublic, DatasetReport, SplitCounts
from api.services.errors import Invalid, NotFound
from api.services.jobs import refuse_while_in_use
from api.services.usage import check_quota


class DatasetHasErrors(Invalid):
    """A dataset with errors: ``report`` lists every problem found."""

    def __init__(self, detail: str, report: DatasetReport) -> None:
        super().__init__(detail)
        self.report = report


def _archive_limits(settings: Settings) -> ArchiveLimits:
    return ArchiveLimits(
        max_members=settings.max_dataset_files,
        max_total_bytes=settings.max_dataset_bytes,
        max_ratio=settings.max_compression_ratio,
    )


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
    folder inside ``staging``. Committed only once the row reads back as the JSON every later
    request sends; on any failure neither the row nor the folder remains. OverQuota when it
    would pass the tenant's storage quota."""
    row.size = folder_bytes(staging)
    check_quota(session, row.tenant_id, settings, row.size)
    store = open_store(settings)
    key: str | None = None
    try:
        session.add(row)
        session.flush()
        key = f"datasets/{row.id}"
        # Replaces what a crash before an id was reused left there (no row owns it).
        store.put_tree(key, staging)
        # The key in the store, relative to the artifact root: a worker reads it under its own
        # mount of that root, or fetches it from an S3 store into its cache.
        row.path = PurePosixPath(key, root.relative_to(staging).as_posix()).as_posix()
        session.flush()
        public = DatasetPublic.model_validate(row)
        # A row that GET /v1/datasets could not send would break the tenant's listing for good.
        public.model_dump_json()
        session.commit()
    except BaseException:
        session.rollback()
        if key is not None:
            store.delete(key)
        raise
    return public


def upload_dataset(
    sessions: sessionmaker[Session],
    tenant_id: int,
    settings: Settings,
    archive: IO[bytes],
    filename: str | None,
    name: str | None,
) -> DatasetPublic:
    """Extract the zip ``archive`` within the settings' limits, check every file and store a
    clean dataset named ``name`` (default: ``filename`` without ``.zip``). Invalid when the
    zip is unsafe or unreadable, DatasetHasErrors when the dataset has errors."""
    staging = _staging_dir(settings)
    try:
        try:
            archive.seek(0)
            extract_zip(archive, staging, _archive_limits(settings))
        except DatasetError as error:
            raise Invalid(str(error)) from None
        root = find_dataset_root(staging)
        report = check_dataset(
            root, dataset_splits(root), display_root=staging, max_classes=settings.max_classes
        )
        public_report = DatasetReport.model_validate(report.as_dict())
        if not report.ok:
            raise DatasetHasErrors(
                f"the dataset has {report.error_count} error(s), first: {report.errors[0]}; "
                "fix them all (see report.errors) and upload again",
                public_report,
            )
        counts = report.splits
        row = Dataset(
            tenant_id=tenant_id,
            name=name or _name_from_file(filename),
            status="ready",
            path="",
            class_names=report.class_names,
            num_train=counts["train"].images,
            num_val=counts["val"].images,
            num_test=counts["test"].images if "test" in counts else 0,
            report=public_report.model_dump(mode="json"),
        )
        with sessions() as session:
            return _publish(session, settings, staging, root, row)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def generate(
    sessions: sessionmaker[Session], tenant_id: int, settings: Settings, spec: DatasetGenerate
) -> DatasetPublic:
    """Render and store the ``digits`` or ``shapes`` dataset ``spec`` asks for."""
    staging = _staging_dir(settings)
    try:
        try:
            info = generate_dataset(
                spec.kind,
                staging,
                train=spec.train,
                val=spec.val,
                test=spec.test,
                size=spec.size,
                seed=spec.seed,
                min_objects=spec.min_objects,
                max_objects=spec.max_objects,
                min_scale=spec.min_scale,
                max_scale=spec.max_scale,
            )
        except ValueError as error:
            raise Invalid(str(error)) from None
        report = DatasetReport(
            counts={
                split: SplitCounts(layout="coco", images=s.num_images, objects=s.num_objects)
                for split, s in info.splits.items()
            },
            generator=spec.model_dump(exclude={"name"}),
        )
        images = "+".join(str(n) for n in (spec.train, spec.val, spec.test) if n)
        default_name = f"{spec.kind}-{images}-{spec.size}px-seed{spec.seed}"
        row = Dataset(
            tenant_id=tenant_id,
            name=spec.name or default_name,
            status="ready",
            path="",
            class_names=list(info.class_names),
            num_train=info.splits["train"].num_images,
            num_val=info.splits["val"].num_images,
            num_test=info.splits["test"].num_images if "test" in info.splits else 0,
            report=report.model_dump(mode="json"),
        )
        with sessions() as session:
            return _publish(session, settings, staging, staging, row)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def list_datasets(session: Session, tenant_id: int, limit: int, offset: int) -> Page[DatasetPublic]:
    """The tenant's datasets, newest first."""
    mine = select(Dataset).where(Dataset.tenant_id == tenant_id)
    count = session.scalar(select(func.count()).select_from(mine.subquery())) or 0
    rows = session.scalars(
        mine.order_by(Dataset.created_at.desc(), Dataset.id.desc()).limit(limit).offset(offset)
    ).all()
    return Page(data=[DatasetPublic.model_validate(r) for r in rows], count=count)


def get_dataset(session: Session, tenant_id: int, dataset_id: int) -> DatasetPublic:
    row = session.get(Dataset, dataset_id) if 0 < dataset_id <= MAX_ROW_ID else None
    if row is None or row.tenant_id != tenant_id:
        raise NotFound(f"dataset {dataset_id} not found")
    return DatasetPublic.model_validate(row)


def delete_dataset(session: Session, tenant_id: int, settings: Settings, dataset_id: int) -> None:
    """Delete the tenant's dataset, its row and then (once that is committed) its folder on
    the artifact store. NotFound for another tenant's or a deleted one; Conflict while a
    queued or running job trains on it. Finished jobs keep their results and checkpoints."""
    get_dataset(session, tenant_id, dataset_id)
    refuse_while_in_use(session, tenant_id, "dataset_id", dataset_id, f"dataset {dataset_id}")
    session.execute(delete(Dataset).where(Dataset.id == dataset_id))
    session.commit()
    open_store(settings).delete(f"datasets/{dataset_id}")
