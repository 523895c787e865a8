"""Engines and sessions for PostgreSQL (production) and SQLite (the embedded default)."""

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``; SQLite gets foreign keys on and a wait instead of 'locked' errors."""
    if url.startswith("sqlite"):
        connect_args = {"check_same_thread": False, "timeout": 30}
        engine = create_engine(url, connect_args=connect_args, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            # WAL lets the API read while a worker process writes metrics.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

        return engine
    # Sessions in UTC: timestamps come back as UTC whatever the server's TimeZone setting,
    # and the API writes them as such without converting each.
    utc: dict[str, Any] = {"options": "-c timezone=UTC"} if url.startswith("postgresql") else {}
    # A pooled connection is pinged before use unless ``pool_pre_ping=False`` is given.
    return create_engine(url, connect_args=utc, **{"pool_pre_ping": True, **kwargs})


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def dialect_insert(session: Session) -> Any:
    """The ``insert`` of the session's database (PostgreSQL's or SQLite's), which has
    ``on_conflict_do_nothing``."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
