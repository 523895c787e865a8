"""PostgreSQL and Redis restarted under a running job: it still finishes, and nothing is lost.

These restart the real servers the suite uses (with the commands DEVELOPERS.md gives), so they
run only where those commands exist and the servers are local.
"""

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.api.routes.conftest import TINY_TRAIN, require_local_redis, restart_redis
from tests.api.routes.test_jobs import _wait

pytestmark = pytest.mark.parametrize("service", ["postgres+redis"], indirect=True)


def _submit(service: dict[str, Any], max_batches: int) -> str:
    train = {**TINY_TRAIN, "max_batches": max_batches, "checkpoint_interval": 50,
             "eval_interval": 0}  # fmt: skip
    spec = {"model": "yolov3-tiny-small", "dataset_id": service["dataset_id"], "seed": 2,
            "queue": service["queue"], "train": train}  # fmt: skip
    created = service["client"].post("/v1/jobs", json=spec, headers=service["auth"])
    assert created.status_code == 201, created.text
    return f"/v1/jobs/{created.json()['id']}"


def _running_at(service: dict[str, Any], url: str, iteration: int) -> None:
    job = _wait(service["client"], url, service["auth"],
                lambda j: j["state"] != "queued" and j["iteration"] >= iteration, 120)  # fmt: skip
    assert job["state"] == "running", job


def _finished_without_gaps(service: dict[str, Any], url: str, max_batches: int) -> dict[str, Any]:
    client, auth = service["client"], service["auth"]
    done = _wait(client, url, auth, lambda j: j["state"] not in ("queued", "running"), 180)
    assert done["state"] == "succeeded", (done, service["log"].read_text()[-3000:])
    page = client.get(f"{url}/metrics?keys=loss&limit=1000", headers=auth).json()
    assert [m["step"] for m in page["data"]] == list(range(1, max_batches + 1))
    return done


@pytest.mark.skipif(shutil.which("pg_ctlcluster") is None, reason="needs pg_ctlcluster")
def test_postgres_restart_mid_job_buffers_metrics_and_finishes(service: dict[str, Any]) -> None:
    url = _submit(service, 300)
    _running_at(service, url, 20)
    version = next(Path("/etc/postgresql").iterdir()).name
    ctl = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]
    subprocess.run([*ctl, "stop", "--mode", "fast"], check=True)
    try:
        # Down until the worker has tried a write and failed (its hooks write every few seconds
        # and it trains on meanwhile), so the test sees an outage, not a lucky gap between
        # writes. The first hook to try says so: heartbeat replies, or the metrics it buffers.
        deadline = time.monotonic() + 30
        while "database unreachable" not in service["log"].read_text():
            assert time.monotonic() < deadline, service["log"].read_text()[-3000:]
            time.sleep(0.2)
    finally:
        subprocess.run([*ctl, "start"], check=True)
    _finished_without_gaps(service, url, 300)


def test_redis_restart_mid_job_the_job_finishes_and_the_worker_reconnects(
    service: dict[str, Any], redis_url: str
) -> None:
    require_local_redis(redis_url)
    url = _submit(service, 300)
    _running_at(service, url, 20)
    restart_redis(redis_url)
    _finished_without_gaps(service, url, 300)
    # The worker reconnected to the new server: a job submitted now trains too.
    _finished_without_gaps(service, _submit(service, 20), 20)
