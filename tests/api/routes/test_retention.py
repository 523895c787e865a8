"""A job keeps ``last``, ``best`` and every ``train.keep``-th checkpoint; the tenant's usage
counts their bytes and drops them with the job. Trained by a real worker, whose job names a
webhook that never answers: training goes on as if it had none."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.routes.conftest import TINY_TRAIN, running_service
from tests.api.routes.test_jobs import _wait
from tests.api.routes.test_webhooks import FAST, Receiver, deliveries


@pytest.fixture
def fast_service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """``service`` with webhooks at test speed, on PostgreSQL and Redis only: training is the
    cost here, and tests/api/routes/test_webhooks.py covers both databases."""
    with running_service(request, tmp_path, "postgres+redis", **FAST) as running:
        yield running


def test_a_job_keeps_every_nth_checkpoint_and_trains_on_while_its_webhook_hangs(
    fast_service: dict[str, Any],
) -> None:
    client, auth = fast_service["client"], fast_service["auth"]
    hanging = Receiver([None] * 100)
    before = client.get("/v1/usage", headers=auth).json()
    # Checkpoints at 2, 4, ..., 12; keep=2 keeps those at 4, 8 and 12 as iter_N.
    spec = {
        "model": "yolov3-tiny-small", "dataset_id": fast_service["dataset_id"],
        "queue": fast_service["queue"], "webhook": hanging.url,
        "train": {**TINY_TRAIN, "max_batches": 12, "checkpoint_interval": 2, "keep": 2},
    }  # fmt: skip
    try:
        created = client.post("/v1/jobs", json=spec, headers=auth)
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        job = _wait(client, f"/v1/jobs/{job_id}", auth, lambda j: j["state"] != "running"
                    and j["state"] != "queued", timeout=180)  # fmt: skip
        assert job["state"] == "succeeded", job
        sent = deliveries(client, auth, job_id=job_id)
    finally:
        hanging.stop()
    # Every call recorded with the job's change, none answered, the job done regardless.
    assert sorted(d["event"] for d in sent) == ["job.queued", "job.running", "job.succeeded"]
    assert all(d["delivered_at"] is None and d["last_status_code"] is None for d in sent)
    assert any(d["last_error"] == "no answer within 0.5 s" for d in sent), sent

    kept = ["best", "iter_12", "iter_4", "iter_8", "last"]  # by name
    folder = Path(fast_service["env"]["AETRAIN_HOME"]) / "artifacts" / "jobs" / str(job_id)
    for suffix in (".pt", ".weights"):
        assert sorted(p.name for p in folder.glob(f"*{suffix}")) == [k + suffix for k in kept]
    listed = client.get(f"/v1/jobs/{job_id}/checkpoints", headers=auth).json()["data"]
    assert [c["name"] for c in listed] == kept
    assert [c["iteration"] for c in listed if c["name"].startswith("iter_")] == [12, 4, 8]
    recorded = sum(f["size"] for c in listed for f in c["formats"].values())

    usage = client.get("/v1/usage", headers=auth).json()
    assert usage["job_bytes"] - before["job_bytes"] == recorded > 0
    assert usage["stored_bytes"] - before["stored_bytes"] == recorded
    assert client.delete(f"/v1/jobs/{job_id}", headers=auth).status_code == 204
    assert client.get("/v1/usage", headers=auth).json() == before
