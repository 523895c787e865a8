"""Jobs over HTTP with a real worker: PostgreSQL + Redis, and the embedded SQLite + file broker.

Submit a tiny job -> a Celery worker process trains it -> metrics appear while it runs -> it
succeeds -> both checkpoint formats download and the .weights reproduce the .pt's outputs.
"""

import io
import time
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from ae_model.cfg import YoloSection, parse_cfg
from ae_model.darknet import Darknet
from ae_model.weights import load_darknet_weights
from tests.api.routes.conftest import TINY_TRAIN


def _wait(client: TestClient, url: str, auth: dict[str, str], until: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(url, headers=auth).json()
        if until(body):
            return body
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting on {url}: last {body}")


def test_job_trains_streams_metrics_and_serves_checkpoints(service: dict[str, Any]) -> None:
    client, auth = service["client"], service["auth"]
    spec = {"model": "yolov3-tiny-small", "dataset_id": service["dataset_id"], "seed": 3,
            "queue": service["queue"], "train": {**TINY_TRAIN, "anchors": "fit"},
            "ae": {"layers": {"stride": 16}, "schedule": "cosine"}}  # fmt: skip
    created = client.post("/v1/jobs", json=spec, headers=auth)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    assert created.json()["state"] == "queued"

    # Metrics appear while the job runs, not only at the end.
    seen_running_metrics = False
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
        if job["state"] == "running":
            page = client.get(f"/v1/jobs/{job_id}/metrics?keys=loss", headers=auth).json()
            seen_running_metrics = seen_running_metrics or page["count"] > 0
        if job["state"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.2)
    assert job["state"] == "succeeded", (job, service["log"].read_text()[-3000:])
    assert seen_running_metrics
    assert job["resolved"]["ae_layers"] == [20]
    assert job["result"]["AP"] >= 0.0 and job["iteration"] == 30
    # anchors=fit: the worker fitted six anchors to the dataset and trained the cfg with them.
    fitted = job["resolved"]["anchors_fitted"]
    assert len(fitted) == 6
    assert all(
        head.anchors == tuple(map(tuple, fitted))
        for head in parse_cfg(job["resolved"]["cfg_text"]).sections
        if isinstance(head, YoloSection)
    )

    losses = client.get(f"/v1/jobs/{job_id}/metrics?keys=loss", headers=auth).json()["data"]
    assert [m["step"] for m in losses] == list(range(1, 31))  # every step once, no gaps
    # 16 training images, batch 4: each step is a quarter epoch.
    assert [m["epoch"] for m in losses] == [step * 4 / 16 for step in range(1, 31)]
    page = client.get(f"/v1/jobs/{job_id}/metrics?limit=50", headers=auth).json()
    assert page["next_since_step"] is not None
    nxt = client.get(
        f"/v1/jobs/{job_id}/metrics?limit=50&since_step={page['next_since_step']}", headers=auth
    ).json()
    assert nxt["data"][0]["step"] == page["next_since_step"] + 1
    log = client.get(f"/v1/jobs/{job_id}/log", headers=auth).json()
    notes = [e for e in log["data"] if e["message"].startswith("note: ")]
    assert [e["state"] for e in log["data"] if e not in notes] == ["queued", "running", "succeeded"]
    assert log["count"] == len(log["data"])
    # The API says the anchors will be fitted; the worker says to what.
    assert [(e["state"], e["message"][:26]) for e in notes] == [
        ("queued", "note: 6 anchors are fitted"),
        ("running", "note: anchors fitted to th"),
    ]
    assert " ".join(f"{w},{h}" for w, h in fitted) in notes[1]["message"].replace("  ", " ")

    listed = client.get(f"/v1/jobs/{job_id}/checkpoints", headers=auth).json()
    checkpoints = {c["name"]: c for c in listed["data"]}
    assert listed["count"] == 2
    assert set(checkpoints) == {"last", "best"}
    assert set(checkpoints["last"]["formats"]) == {"pt", "weights", "onnx"}
    pt = client.get(f"/v1/jobs/{job_id}/checkpoints/last?format=pt", headers=auth)
    weights = client.get(f"/v1/jobs/{job_id}/checkpoints/last?format=weights", headers=auth)
    assert pt.status_code == weights.status_code == 200
    assert len(weights.content) == checkpoints["last"]["formats"]["weights"]["size"]

    state = torch.load(io.BytesIO(pt.content), map_location="cpu", weights_only=False)
    cfg = parse_cfg(job["resolved"]["cfg_text"])
    from_pt = Darknet(cfg).eval()
    from_pt.load_state_dict(state["model"])
    from_weights = Darknet(cfg).eval()
    report = load_darknet_weights(from_weights, io.BytesIO(weights.content))
    assert report.complete
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(from_pt(x), from_weights(x))

    # Server-sent events replay the whole history and end with the final state.
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=auth) as stream:
        text = "".join(stream.iter_text())
    assert "event: metrics" in text and "event: end" in text and "succeeded" in text

    other = service["other"]
    for url in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/metrics", f"/v1/jobs/{job_id}/log",
                f"/v1/jobs/{job_id}/checkpoints", f"/v1/jobs/{job_id}/checkpoints/last",
                f"/v1/jobs/{job_id}/events"):  # fmt: skip
        assert client.get(url, headers=other).status_code == 404, url
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=other).status_code == 404
    assert client.get("/v1/jobs", headers=other).json()["count"] == 0


def test_cancel_running_and_queued_jobs(service: dict[str, Any]) -> None:
    client, auth = service["client"], service["auth"]
    spec = {"model": "yolov3-tiny-small", "dataset_id": service["dataset_id"],
            "queue": service["queue"], "train": {**TINY_TRAIN, "max_batches": 100000}}  # fmt: skip
    job_id = client.post("/v1/jobs", json=spec, headers=auth).json()["id"]
    _wait(client, f"/v1/jobs/{job_id}", auth, lambda j: j["iteration"] > 12, 240)
    asked = time.monotonic()
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth).status_code == 200
    job = _wait(client, f"/v1/jobs/{job_id}", auth, lambda j: j["state"] == "cancelled", 60)
    assert time.monotonic() - asked < 15
    assert job["finished_at"] is not None
    listed = client.get(f"/v1/jobs/{job_id}/checkpoints", headers=auth).json()["data"]
    names = {c["name"] for c in listed}
    assert "last" in names
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth).status_code == 409

    # A job on a queue no worker consumes stays queued; cancelling it never runs it.
    queued = client.post("/v1/jobs", json={**spec, "queue": "nobody"}, headers=auth).json()
    cancelled = client.post(f"/v1/jobs/{queued['id']}/cancel", headers=auth).json()
    assert cancelled["state"] == "cancelled" and cancelled["started_at"] is None


def _run(service: dict[str, Any], spec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Submit ``spec`` and wait for its outcome: the job's URL and its final state."""
    client, auth = service["client"], service["auth"]
    created = client.post("/v1/jobs", json=spec, headers=auth)
    assert created.status_code == 201, created.text
    url = f"/v1/jobs/{created.json()['id']}"
    return url, _wait(client, url, auth, lambda j: j["state"] not in ("queued", "running"), 240)


def test_non_finite_loss_rolls_back_and_replaces_the_diverged_metrics(
    service: dict[str, Any],
) -> None:
    client, auth = service["client"], service["auth"]
    # lr 10 diverges by the third step; each step is evaluated, so the steps before it are
    # stored when it does. One rollback to iteration 0 goes on at lr 10 * 3e-4 = 0.003.
    train = {**TINY_TRAIN, "max_batches": 12, "learning_rate": 10.0, "burn_in": 0,
             "eval_interval": 1, "val_limit": 2,
             "nan_rollbacks": 1, "nan_lr_factor": 3e-4}  # fmt: skip
    spec = {"model": "yolov3-tiny-small", "dataset_id": service["dataset_id"], "seed": 2,
            "queue": service["queue"], "train": train}  # fmt: skip
    url, job = _run(service, spec)
    assert job["state"] == "succeeded", (job, service["log"].read_text()[-3000:])
    rates = client.get(f"{url}/metrics?keys=lr", headers=auth).json()["data"]
    assert [m["step"] for m in rates] == list(range(1, 13))
    assert all(abs(m["value"] - 0.003) < 1e-9 for m in rates), rates  # none of the lr-10 steps
    log = [event["message"] for event in client.get(f"{url}/log", headers=auth).json()["data"]]
    assert any("rolled back to iteration 0" in message for message in log), log

    # Without rollbacks the same job fails, naming the iteration and the last finite loss.
    _, job = _run(service, {**spec, "train": {**train, "nan_rollbacks": 0}})
    assert job["state"] == "failed"
    assert "non-finite at iteration" in job["failure_reason"], job
    assert "last finite loss" in job["failure_reason"], job


@pytest.mark.parametrize("service", ["postgres+redis"], indirect=True)
def test_a_job_trains_data_parallel_in_two_processes(service: dict[str, Any]) -> None:
    client, auth = service["client"], service["auth"]
    train = {**TINY_TRAIN, "max_batches": 6, "subdivisions": 2, "eval_interval": 0,
             "world_size": 2}  # fmt: skip
    spec = {"model": "yolov3-tiny-small", "dataset_id": service["dataset_id"], "seed": 1,
            "queue": service["queue"], "train": train}  # fmt: skip
    url, job = _run(service, spec)
    assert job["state"] == "succeeded", (job, service["log"].read_text()[-3000:])
    losses = client.get(f"{url}/metrics?keys=loss", headers=auth).json()["data"]
    assert [m["step"] for m in losses] == list(range(1, 7))
    assert job["resolved"]["subdivisions"] == 2 and "AP" in job["result"]

    # The processes share out micro-batches: one micro-batch cannot go to two of them.
    refused = client.post(
        "/v1/jobs", json={**spec, "train": {**train, "subdivisions": 1}}, headers=auth
    )
    assert refused.status_code == 422, refused.text
    detail = refused.json()["detail"][0]
    assert detail["loc"] == ["body", "train", "world_size"], detail
    assert "multiple of world_size" in detail["msg"], detail
