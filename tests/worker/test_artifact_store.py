"""Jobs on an S3 artifact store (moto's S3 server on loopback, PostgreSQL, Redis and real
worker processes): a dataset generated through the API is stored in the bucket, checkpoints
are uploaded as a job trains, a job whose worker machine dies resumes on another machine with
an empty disk from the checkpoint in the bucket, a download is a redirect to a presigned URL
of the same bytes, and deleting the job and the dataset deletes their objects."""

import hashlib
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.core.s3_server import BUCKET, S3Server, s3_server
from tests.api.routes.conftest import TINY_TRAIN, running_service
from tests.api.routes.test_jobs import _wait
from tests.conftest import start_worker, stop_worker

__all__ = ["s3_server"]  # the fixture, for pytest

PREFIX = "aetrain"


def _parent(pid: int) -> int:
    """The parent process of ``pid`` (a prefork worker's child: its Celery worker)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _kill_machine(job: dict[str, Any]) -> None:
    """Kill the worker training ``job``, child and parent, as a machine that goes away."""
    child = int(job["worker"].rsplit(":", 1)[1])
    parent = _parent(child)
    os.kill(parent, signal.SIGKILL)
    os.kill(child, signal.SIGKILL)


def test_a_job_resumes_on_another_machine_from_the_s3_store(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    s3_server: S3Server,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Read by the API's settings and inherited by the worker processes.
    monkeypatch.setenv("AETRAIN_ARTIFACTS_URL", f"s3://{BUCKET}/{PREFIX}")
    with running_service(request, tmp_path, "postgres+redis") as service:
        client, auth = service["client"], service["auth"]
        home = Path(service["env"]["AETRAIN_HOME"])
        generated = client.post("/v1/datasets/generate", headers=auth, json={
            "kind": "shapes", "train": 16, "val": 4, "size": 96, "seed": 1, "min_scale": 0.1,
        })  # fmt: skip
        assert generated.status_code == 201, generated.text
        dataset_id = generated.json()["id"]
        assert len(s3_server.keys(f"{PREFIX}/datasets/{dataset_id}/")) >= 20
        assert not (home / "artifacts" / "datasets" / str(dataset_id)).exists()
        # The API holds no copy, yet the tenant's usage counts the dataset's bytes.
        listed = s3_server.client().list_objects_v2(
            Bucket=BUCKET, Prefix=f"{PREFIX}/datasets/{dataset_id}/"
        )
        stored = sum(item["Size"] for item in listed["Contents"])
        usage = client.get("/v1/usage", headers=auth).json()
        assert usage["dataset_bytes"] == stored > 0, usage

        train = {**TINY_TRAIN, "max_batches": 40, "checkpoint_interval": 10, "eval_interval": 0}
        spec = {"model": "yolov3-tiny-small", "dataset_id": dataset_id, "seed": 5,
                "queue": service["queue"], "train": train}  # fmt: skip
        created = client.post("/v1/jobs", json=spec, headers=auth)
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        url = f"/v1/jobs/{job_id}"
        job = _wait(
            client, url, auth, lambda j: j["state"] == "running" and j["iteration"] >= 11, 120
        )
        uploaded = {key.rsplit("/", 1)[1] for key in s3_server.keys(f"{PREFIX}/jobs/{job_id}/")}
        assert {"last.pt", "last.weights"} <= uploaded
        _kill_machine(job)

        # The second machine: its own AETRAIN_HOME, with no cache and no artifacts.
        machine = tmp_path / "machine2"
        log = tmp_path / "worker2.log"
        second = start_worker({**service["env"], "AETRAIN_HOME": str(machine)}, service["queue"],
                              log, pool="prefork")  # fmt: skip
        try:
            done = _wait(client, url, auth, lambda j: j["state"] not in ("queued", "running"), 240)
        finally:
            stop_worker(second)
        assert done["state"] == "succeeded", (done, log.read_text()[-3000:])
        assert done["attempt"] == 2 and done["worker"] != job["worker"]
        events = [e["message"] for e in client.get(f"{url}/log", headers=auth).json()["data"]]
        resumed = [m for m in events if m.startswith("resumed from iteration ")]
        assert len(resumed) == 1 and int(resumed[0].split()[3]) >= 10, events
        # The dataset came from the bucket into the second machine's cache.
        assert list((machine / "cache").glob(f"*/datasets/{dataset_id}/annotations/*.json"))
        metrics = client.get(f"{url}/metrics?keys=loss&limit=1000", headers=auth).json()
        steps = [m["step"] for m in metrics["data"]]
        assert steps == list(range(1, 41))

        listed = {
            c["name"]: c for c in client.get(f"{url}/checkpoints", headers=auth).json()["data"]
        }
        assert listed["last"]["iteration"] == 40
        answer = client.get(
            f"{url}/checkpoints/last?format=pt", headers=auth, follow_redirects=False
        )
        assert answer.status_code == 307, answer.text
        fetched = httpx.get(answer.headers["location"])
        assert fetched.status_code == 200
        assert (
            hashlib.sha256(fetched.content).hexdigest() == listed["last"]["formats"]["pt"]["sha256"]
        )

        assert client.delete(url, headers=auth).status_code == 204
        assert s3_server.keys(f"{PREFIX}/jobs/{job_id}/") == []
        assert client.delete(f"/v1/datasets/{dataset_id}", headers=auth).status_code == 204
        assert s3_server.keys(f"{PREFIX}/datasets/{dataset_id}/") == []
