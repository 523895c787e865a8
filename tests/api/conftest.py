"""An API app on a freshly migrated database (PostgreSQL and SQLite), with two tenants."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.auth import create_tenant_with_key
from api.core.db import Tenant, make_engine, make_session_factory
from api.core.db.models import Checkpoint, Dataset, Job, Metric
from api.core.settings import Settings
from api.main import create_app
from api.migrate import upgrade


@pytest.fixture(params=["postgres", "sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return f"sqlite:///{tmp_path / 'api.core.db'}"


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    upgrade(database_url)
    return Settings(home=tmp_path / "home", database_url=database_url, broker_url=None)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _key(settings: Settings, tenant: str) -> dict[str, str]:
    engine = make_engine(settings.resolved_database_url())
    try:
        with make_session_factory(engine)() as session:
            issued = create_tenant_with_key(session, tenant)
    finally:
        engine.dispose()
    return {"Authorization": f"Bearer {issued.key}"}


@pytest.fixture
def auth(settings: Settings) -> dict[str, str]:
    """Headers of tenant "alice"."""
    return _key(settings, "alice")


@pytest.fixture
def other_auth(settings: Settings) -> dict[str, str]:
    """Headers of tenant "mallory", who must see nothing of alice's."""
    return _key(settings, "mallory")


def ready_dataset(settings: Settings, tenant: str, **fields: Any) -> int:
    """A ready dataset row of ``tenant``: enough for requests the API answers without reading
    the data (no worker runs)."""
    engine = make_engine(settings.resolved_database_url())
    try:
        with make_session_factory(engine)() as session:
            tenant_id = session.scalars(select(Tenant.id).where(Tenant.name == tenant)).one()
            row = Dataset(tenant_id=tenant_id, **{
                "name": "seeded", "path": str(settings.home / "nowhere"), "class_names": [],
                **fields,
            })  # fmt: skip
            session.add(row)
            session.commit()
            return row.id
    finally:
        engine.dispose()


def running_job(
    settings: Settings,
    metrics: list[tuple[str, int]],
    checkpoint_at: int | None = None,
    nan_rollbacks: int = 2,
) -> int:
    """A running job of tenant alice with a metric row per ``(key, step)``, a checkpoint
    recorded at ``checkpoint_at``, and ``train.nan_rollbacks`` in its spec (no worker runs)."""
    engine = make_engine(settings.resolved_database_url())
    try:
        with make_session_factory(engine)() as session:
            tenant = session.scalars(select(Tenant.id).where(Tenant.name == "alice")).one()
            spec = {"train": {"nan_rollbacks": nan_rollbacks}}
            job = Job(tenant_id=tenant, spec=spec, state="running")
            session.add(job)
            session.flush()
            session.add_all(Metric(job_id=job.id, key=k, step=s, value=1.0) for k, s in metrics)
            if checkpoint_at is not None:
                session.add(
                    Checkpoint(
                        job_id=job.id, name="last.pt", iteration=checkpoint_at, size=1,
                        sha256="0", path="x",
                    )
                )  # fmt: skip
            session.commit()
            return job.id
    finally:
        engine.dispose()
