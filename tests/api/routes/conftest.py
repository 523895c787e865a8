"""A running service for route tests: migrated database, API client, real worker process."""

import contextlib
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select

from ae_model.data.synthetic import generate_dataset
from api.core.db import Tenant, make_engine, make_session_factory
from api.core.db.models import Dataset
from api.core.settings import Settings
from api.main import create_app
from api.migrate import upgrade
from tests.api.conftest import _key
from tests.conftest import start_worker, stop_worker

# A constant rate after the burn-in: the cfg's steps would be scaled into so short a run
# (docs/training.md), and the tests read the rate.
TINY_TRAIN = {
    "max_batches": 30, "batch": 4, "subdivisions": 1, "width": 96, "height": 96,
    "learning_rate": 0.003, "burn_in": 5, "policy": "constant", "eval_interval": 15,
    "checkpoint_interval": 10, "val_limit": 4, "workers": 0, "multiscale": False,
}  # fmt: skip


# How .ci/run starts the local Redis: nothing kept on disk, so a restart loses every task.
REDIS_START = [
    "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
    "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis",
    "--logfile", "/var/log/redis/ci.log",
]  # fmt: skip


def require_local_redis(redis_url: str) -> None:
    """Skip unless ``redis_url`` is the local Redis of .ci/run and it can be restarted."""
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server")
    if not redis_url.startswith("redis://127.0.0.1:6379"):
        pytest.skip("restarts only the local Redis that .ci/run starts")


def restart_redis(redis_url: str) -> None:
    """Shut the local Redis down without saving and start it again, empty."""
    require_local_redis(redis_url)
    server = redis.Redis.from_url(redis_url)
    with contextlib.suppress(redis.ConnectionError):  # it may close the connection as it goes
        server.shutdown(nosave=True)
    subprocess.run(REDIS_START, check=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            server.ping()
            return
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "Redis did not come back"
            time.sleep(0.2)


@contextmanager
def running_service(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    backend: str,
    with_worker: bool = True,
    **settings: Any,
) -> Iterator[dict[str, Any]]:
    """A migrated database, an API client, a dataset and (``with_worker``) a real worker
    process; ``env`` starts more workers. ``settings`` override the API's settings."""
    home = tmp_path / "home"
    if backend == "postgres+redis":
        database_url = request.getfixturevalue("postgres_url")
        broker_url = request.getfixturevalue("redis_url")
    else:
        database_url, broker_url = f"sqlite:///{tmp_path / 'e2e.db'}", ""
    upgrade(database_url)
    # Heartbeats and the reaper at test speed: a killed worker's job is recovered in seconds.
    api_settings = Settings(
        home=home, database_url=database_url, broker_url=broker_url or None,
        heartbeat_interval_s=0.5, stale_after_s=5, reaper_interval_s=0.5, **settings,
    )  # fmt: skip
    queue = f"test-{uuid.uuid4().hex[:8]}"
    env = {
        "AETRAIN_HOME": str(home), "AETRAIN_DATABASE_URL": database_url,
        "AETRAIN_BROKER_URL": broker_url, "OMP_NUM_THREADS": "1",
        "AETRAIN_HEARTBEAT_INTERVAL_S": "0.5",
    }  # fmt: skip
    log = tmp_path / "worker.log"
    worker = start_worker(env, queue, log, pool="prefork") if with_worker else None
    data = tmp_path / "shapes"
    generate_dataset("shapes", data, train=16, val=4, size=96, seed=1, min_scale=0.1)
    alice, mallory = _key(api_settings, "alice"), _key(api_settings, "mallory")
    engine = make_engine(database_url)
    with make_session_factory(engine)() as session:
        tenant = session.execute(select(Tenant.id).where(Tenant.name == "alice")).scalar_one()
        dataset = Dataset(tenant_id=tenant, name="shapes", path=str(data), class_names=[])
        session.add(dataset)
        session.commit()
        dataset_id = dataset.id
    engine.dispose()
    try:
        with TestClient(create_app(api_settings)) as client:
            yield {
                "client": client,
                "auth": alice,
                "other": mallory,
                "queue": queue,
                "dataset_id": dataset_id,
                "log": log,
                "env": env,
            }
    finally:
        if worker is not None:
            stop_worker(worker)


@pytest.fixture(params=["postgres+redis", "sqlite+filesystem"])
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A migrated database, an API client, a real worker process and a dataset."""
    with running_service(request, tmp_path, request.param) as running:
        yield running
