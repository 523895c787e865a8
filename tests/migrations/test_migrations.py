"""Migrations apply to an empty database on both engines, and the head check tells what to run."""

import pytest
from sqlalchemy import inspect

from api.db import Base, make_engine
from api.migrate import check_up_to_date, head_revision, upgrade


def _migrate_and_check(url: str) -> None:
    with pytest.raises(RuntimeError, match="aetrain db upgrade"):
        check_up_to_date(url)
    upgrade(url)
    check_up_to_date(url)
    engine = make_engine(url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables


def test_migrations_on_sqlite(sqlite_url: str) -> None:
    _migrate_and_check(sqlite_url)


@pytest.mark.postgres
def test_migrations_on_postgres(postgres_url: str) -> None:
    _migrate_and_check(postgres_url)


@pytest.mark.postgres
def test_models_match_migrations(postgres_url: str) -> None:
    # The migrations and the SQLAlchemy models must describe the same schema.
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == [], f"models and migrations differ: {diff}; run alembic revision --autogenerate"
    assert head_revision() is not None
