"""Migrations apply to an empty database on both engines, and the head check tells what to run."""

from datetime import UTC, datetime
from typing import Any

import pytest
from alembic import command
from sqlalchemy import DateTime, column, inspect, select, table

from api.core.db import Base, make_engine
from api.migrate import alembic_config, check_up_to_date, head_revision, upgrade

CREATED = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
JOB_COLUMNS = ("id", "tenant_id", "state", "spec", "queue", "attempt", "max_attempts",
               "cancel_requested", "iteration")  # fmt: skip


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


def _sent_at_backfill(url: str) -> None:
    # 0005 adds jobs.sent_at; a job queued at upgrade time was sent when it was created.
    upgrade(url, "0004")
    at = DateTime(timezone=True)
    tenants = table("tenants", column("id"), column("name"), column("created_at", at))
    jobs = table("jobs", *(column(name) for name in JOB_COLUMNS), column("created_at", at))
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(tenants.insert().values(id=1, name="t", created_at=CREATED))
            conn.execute(jobs.insert(), [
                {"id": job_id, "tenant_id": 1, "state": state, "spec": "{}", "queue": "cpu",
                 "attempt": 0, "max_attempts": 3, "cancel_requested": False, "iteration": 0,
                 "created_at": CREATED}
                for job_id, state in ((1, "queued"), (2, "succeeded"))
            ])  # fmt: skip
        upgrade(url)
        sent_at = column("sent_at", at)
        with engine.connect() as conn:
            sent: dict[int, Any] = dict(
                conn.execute(select(jobs.c.id, sent_at).select_from(jobs)).all()
            )
        assert sent[2] is None
        queued_sent = sent[1] if sent[1].tzinfo else sent[1].replace(tzinfo=UTC)  # SQLite: naive
        assert queued_sent == CREATED
        command.downgrade(alembic_config(url), "0004")
        assert "sent_at" not in {c["name"] for c in inspect(engine).get_columns("jobs")}
        upgrade(url)
    finally:
        engine.dispose()


def test_job_sent_at_backfill_on_sqlite(sqlite_url: str) -> None:
    _sent_at_backfill(sqlite_url)


@pytest.mark.postgres
def test_job_sent_at_backfill_on_postgres(postgres_url: str) -> None:
    _sent_at_backfill(postgres_url)
