"""Fixtures for the real servers the service tests talk to.

PostgreSQL and Redis come from ``AETRAIN_TEST_POSTGRES_URL`` / ``AETRAIN_TEST_REDIS_URL``. When a
variable is set (CI sets both), an unreachable server fails the tests that need it. When it is
unset, the local default is probed; if nothing answers, those tests are skipped and pytest's
summary (-ra) names each one and why, while the rest of the suite runs on the embedded defaults.
"""

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

POSTGRES_ENV = "AETRAIN_TEST_POSTGRES_URL"
REDIS_ENV = "AETRAIN_TEST_REDIS_URL"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/9"
REPO_ROOT = Path(__file__).resolve().parents[1]


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 1
        ):
            return True
    except OSError:
        return False


def _server_url(env: str, default: str, port: int, what: str) -> str:
    url = os.environ.get(env)
    if url:
        return url  # Set explicitly: a dead server must fail the test, not skip it.
    if _reachable(default, port):
        return default
    pytest.skip(f"{what} not reachable at {default} and {env} unset: {what} tests skipped")


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """URL of a PostgreSQL database the tests may use to create and drop their own."""
    return _server_url(POSTGRES_ENV, DEFAULT_POSTGRES_URL, 5432, "PostgreSQL")


@contextmanager
def fresh_postgres_database(admin_url: str, prefix: str = "aetrain_test") -> Iterator[str]:
    """The URL of a new, empty database beside ``admin_url``'s; dropped on exit."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    # pre_ping: a test may restart the server, leaving pooled connections dead.
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    with fresh_postgres_database(postgres_admin_url) as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = _server_url(REDIS_ENV, DEFAULT_REDIS_URL, 6379, "Redis")
    import redis

    redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'aetrain.db'}"


def start_worker(
    env: dict[str, str], queue: str, log: Path, pool: str = "solo"
) -> subprocess.Popen[bytes]:
    """Start a real Celery worker process consuming ``queue`` with the given environment.

    ``pool="prefork"`` runs as production does: each task in a child process.
    """
    celery = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker"]
    options = [f"--pool={pool}", "--concurrency=1", "-Q", queue, "-n", f"{queue}@%h"]
    quiet = ["--loglevel=INFO", "--without-heartbeat", "--without-mingle", "--without-gossip"]
    with log.open("wb") as out:
        return subprocess.Popen(
            celery + options + quiet,
            cwd=REPO_ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop_worker(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    proc.terminate()
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
