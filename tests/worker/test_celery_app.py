"""A real Celery worker process answers through a real broker: Redis, and the server-less
file-system broker of the embedded default. The API's producer app and the worker's app share
one configuration; only the worker's registers tasks."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from api.core.broker import TRAIN_TASK, create_celery
from api.core.settings import Settings
from tests.conftest import REPO_ROOT, start_worker, stop_worker
from worker.celery_app import create_worker_app


def _round_trip(env: dict[str, str], settings: Settings, tmp_path: Path) -> None:
    queue = f"test-{uuid.uuid4().hex[:8]}"
    app = create_celery(settings)
    proc = start_worker(env, queue, tmp_path / "worker.log")
    try:
        result = app.send_task("aetrain.ping", queue=queue)
        reply = result.get(timeout=60)
    finally:
        stop_worker(proc)
    log = (tmp_path / "worker.log").read_text()
    assert reply["pong"] is True, log
    assert reply["pid"] == proc.pid, "the task ran in the worker process, not here"
    # The worker's parent must not load torch: CUDA state would be inherited by forked children.
    assert reply["torch_imported"] is False


@pytest.mark.redis
def test_ping_through_redis(redis_url: str, tmp_path: Path) -> None:
    env = {
        "AETRAIN_BROKER_URL": redis_url,
        "AETRAIN_RESULT_BACKEND": redis_url,
        "AETRAIN_HOME": str(tmp_path / "home"),
    }
    settings = Settings(broker_url=redis_url, result_backend=redis_url, home=tmp_path / "home")
    _round_trip(env, settings, tmp_path)


def test_ping_through_embedded_filesystem_broker(tmp_path: Path) -> None:
    backend = f"db+sqlite:///{tmp_path / 'results.db'}"
    env = {"AETRAIN_HOME": str(tmp_path / "home"), "AETRAIN_RESULT_BACKEND": backend}
    for key in ("AETRAIN_BROKER_URL", "CELERY_BROKER_URL"):
        env[key] = ""
    settings = Settings(home=tmp_path / "home", result_backend=backend, broker_url=None)
    assert settings.embedded_broker
    _round_trip(env, settings, tmp_path)
    # Every broker file stays under AETRAIN_HOME, none in the worker's working directory.
    assert not (REPO_ROOT / "control").exists()
    assert (tmp_path / "home" / "broker" / "control").is_dir()


def test_producer_and_worker_share_the_configuration_and_only_the_worker_has_tasks(
    tmp_path: Path,
) -> None:
    settings = Settings(home=tmp_path / "home", broker_url=None)
    producer, worker = create_celery(settings), create_worker_app(settings)
    # The producer imports no task module (it sends tasks by name); the worker its own.
    assert producer.conf.table() == {**worker.conf.table(), "include": []}
    worker.loader.import_default_modules()
    assert TRAIN_TASK in worker.tasks
    for name in ("queue", "processed", "control"):  # made by the factory, for both sides
        assert (tmp_path / "home" / "broker" / name).is_dir()


def test_celery_finds_the_worker_app_that_the_module_builds_on_first_use(tmp_path: Path) -> None:
    # How `celery -A worker.celery_app` finds the app, in a fresh interpreter.
    code = (
        "import pathlib, sys\n"
        "import worker.celery_app\n"
        "home = pathlib.Path(sys.argv[1])\n"
        "assert not home.exists(), 'importing made the broker folders'\n"
        "from celery.app.utils import find_app\n"
        "app = find_app('worker.celery_app')\n"
        "assert app is worker.celery_app.app and list(app.conf.include) == ['worker.tasks']\n"
        "assert (home / 'broker' / 'queue').is_dir()\n"
    )
    env = {**os.environ, "AETRAIN_HOME": str(tmp_path / "home"), "AETRAIN_BROKER_URL": ""}
    subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "home")], cwd=REPO_ROOT, env=env, check=True
    )
