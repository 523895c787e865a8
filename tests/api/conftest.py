"""An API app on a freshly migrated database (PostgreSQL and SQLite), with two tenants."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.auth import create_tenant_with_key
from api.db import make_engine, make_session_factory
from api.main import create_app
from api.migrate import upgrade
from api.settings import Settings


@pytest.fixture(params=["postgres", "sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return f"sqlite:///{tmp_path / 'api.db'}"


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
