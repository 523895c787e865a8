"""A queued job whose task Redis lost in a restart (no persistence) is not stuck: the reaper
sends its task again, and a worker started afterwards trains it, once."""

import time
from pathlib import Path
from typing import Any

import pytest
import redis

from api.core.broker import send_train_task
from tests.api.routes.conftest import (
    TINY_TRAIN,
    require_local_redis,
    restart_redis,
    running_service,
)
from tests.api.routes.test_jobs import _wait
from tests.conftest import start_worker, stop_worker

# Long enough that the task is not sent again before Redis has restarted.
REQUEUE_AFTER_S = 8


def _log(service: dict[str, Any], url: str) -> list[str]:
    events = service["client"].get(f"{url}/log", headers=service["auth"]).json()["data"]
    return [event["message"] for event in events]


def test_a_task_lost_in_a_redis_restart_is_sent_again_and_trains_once(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str
) -> None:
    require_local_redis(redis_url)
    with running_service(request, tmp_path, "postgres+redis", with_worker=False,
                         requeue_queued_after_s=REQUEUE_AFTER_S) as service:  # fmt: skip
        client, auth, queue = service["client"], service["auth"], service["queue"]
        spec = {"model": "yolov3-tiny-small", "dataset_id": service["dataset_id"],
                "queue": queue, "train": {**TINY_TRAIN, "max_batches": 10}}  # fmt: skip
        created = client.post("/v1/jobs", json=spec, headers=auth)
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        url = f"/v1/jobs/{job_id}"
        server = redis.Redis.from_url(redis_url)
        assert server.llen(queue) == 1  # no worker runs: the task waits in Redis

        restart_redis(redis_url)
        assert server.llen(queue) == 0  # the task is gone; the job is still queued
        assert client.get(url, headers=auth).json()["state"] == "queued"

        deadline = time.monotonic() + REQUEUE_AFTER_S + 30
        while not any("sent again" in message for message in _log(service, url)):
            assert time.monotonic() < deadline, _log(service, url)
            time.sleep(0.5)
        assert server.llen(queue) == 1
        # The lost message turning up after all (a broker restoring it) is a duplicate: the
        # claim lets the job train once.
        send_train_task(client.app.state.celery, job_id, queue)
        worker = start_worker(service["env"], queue, service["log"], pool="prefork")
        try:
            done = _wait(client, url, auth, lambda j: j["state"] == "succeeded", 180)
            assert done["attempt"] == 1
            deadline = time.monotonic() + 60
            while f"job {job_id} is not queued; duplicate delivery ignored" not in (
                service["log"].read_text()
            ):
                assert time.monotonic() < deadline, service["log"].read_text()[-3000:]
                time.sleep(0.25)
        finally:
            stop_worker(worker)
        log = _log(service, url)
        assert sum(message.startswith("claimed by") for message in log) == 1, log
        assert server.llen(queue) == 0
