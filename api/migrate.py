"""Apply and inspect Alembic migrations programmatically (no alembic.ini needed)."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

import migrations
from api.core.db import make_engine

MIGRATIONS_DIR = Path(migrations.__file__).parent


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # '%' is ConfigParser interpolation syntax; URLs with escaped passwords contain it.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` to ``revision``."""
    command.upgrade(alembic_config(url), revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def check_up_to_date(url: str) -> None:
    """Raise ``RuntimeError`` telling the user what to run if the database is not at head."""
    engine = make_engine(url)
    try:
        current = current_revision(engine)
    except OperationalError as error:
        raise RuntimeError(
            f"cannot open database {engine.url.render_as_string(hide_password=True)} "
            f"({error.orig}); check DATABASE_URL, or run `aetrain db upgrade` to create it"
        ) from error
    finally:
        engine.dispose()
    head = head_revision()
    if current != head:
        raise RuntimeError(
            f"database {engine.url.render_as_string(hide_password=True)} is at revision "
            f"{current or 'none (empty)'}, code expects {head}: run `aetrain db upgrade` first"
        )
