"""A worker killed mid-training: the reaper re-queues the job and a new worker process resumes
it from its last checkpoint, with no gap and no duplicate in its metric history."""

import os
import signal
import time
from typing import Any

from api.core.broker import send_train_task
from tests.api.routes.conftest import TINY_TRAIN
from tests.api.routes.test_jobs import _wait


def test_sigkilled_worker_job_resumes_from_its_checkpoint(service: dict[str, Any]) -> None:
    client, auth = service["client"], service["auth"]
    train = {**TINY_TRAIN, "max_batches": 400, "checkpoint_interval": 10, "eval_interval": 0}
    spec = {"model": "yolov3-tiny-small", "dataset_id": service["dataset_id"], "seed": 5,
            "queue": service["queue"], "train": train}  # fmt: skip
    created = client.post("/v1/jobs", json=spec, headers=auth)
    assert created.status_code == 201, created.text
    url = f"/v1/jobs/{created.json()['id']}"

    def checkpointed(job: dict[str, Any]) -> bool:
        return job["state"] != "queued" and job["iteration"] >= 22

    job = _wait(client, url, auth, checkpointed, 120)
    assert job["state"] == "running", job
    listed = client.get(f"{url}/checkpoints", headers=auth).json()["data"]
    checkpoint = {c["name"]: c for c in listed}
    assert checkpoint["last"]["iteration"] >= 20
    # The worker's child process that runs the job dies without a word.
    pid = int(job["worker"].rsplit(":", 1)[1])
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()

    done = _wait(client, url, auth, lambda j: j["state"] not in ("queued", "running"), 180)
    assert done["state"] == "succeeded", (done, service["log"].read_text()[-3000:])
    assert done["attempt"] == 2 and done["worker"] != job["worker"]
    assert time.monotonic() - killed_at < 120
    log = [e["message"] for e in client.get(f"{url}/log", headers=auth).json()["data"]]
    assert any("re-queued for attempt 2 of 3" in m for m in log), log

    steps = [
        m["step"]
        for m in client.get(f"{url}/metrics?keys=loss&limit=1000", headers=auth).json()["data"]
    ]
    assert steps == list(range(1, 401))


def test_a_task_delivered_twice_trains_once(service: dict[str, Any]) -> None:
    client, auth = service["client"], service["auth"]
    spec = {"model": "yolov3-tiny-small", "dataset_id": service["dataset_id"],
            "queue": service["queue"], "train": {**TINY_TRAIN, "max_batches": 10}}  # fmt: skip
    job_id = client.post("/v1/jobs", json=spec, headers=auth).json()["id"]
    # What a broker re-delivery looks like to the worker: the same task again.
    send_train_task(client.app.state.celery, job_id, service["queue"])
    done = _wait(client, f"/v1/jobs/{job_id}", auth, lambda j: j["state"] == "succeeded", 120)
    assert done["attempt"] == 1
    deadline = time.monotonic() + 60
    while (
        f"job {job_id} is not queued; duplicate delivery ignored" not in service["log"].read_text()
    ):
        assert time.monotonic() < deadline, service["log"].read_text()[-3000:]
        time.sleep(0.25)
    events = client.get(f"/v1/jobs/{job_id}/log", headers=auth).json()["data"]
    log = [e["message"] for e in events]
    assert sum(m.startswith("claimed by") for m in log) == 1, log
