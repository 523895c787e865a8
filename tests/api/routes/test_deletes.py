"""Deleting datasets, models, jobs and comparisons, and the per-tenant storage quota, on
PostgreSQL and SQLite. No worker runs: jobs go to a queue nobody consumes, and are cancelled.

A delete is the tenant's only (another tenant's id: 404), refused (409) while a queued or
running job still needs what it deletes, removes the rows and then the files, and answers 404
when repeated."""

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from ae_model.cfg import bundled_cfg_path
from api.core.db import make_engine, make_session_factory
from api.core.db.models import Checkpoint, JobEvent, Metric
from api.core.settings import Settings
from api.main import create_app
from tests.api.routes.test_datasets import GENERATE

MODEL = "yolov3-tiny-small"
NOBODY = "nobody"  # a queue no worker consumes: the job stays queued


def _dataset(client: TestClient, auth: dict[str, str]) -> int:
    created = client.post("/v1/datasets/generate", json=GENERATE, headers=auth)
    assert created.status_code == 201, created.text
    dataset_id: int = created.json()["id"]
    return dataset_id


def _job(client: TestClient, auth: dict[str, str], **spec: Any) -> int:
    created = client.post("/v1/jobs", json={"queue": NOBODY, **spec}, headers=auth)
    assert created.status_code == 201, created.text
    job_id: int = created.json()["id"]
    return job_id


def _cancel(client: TestClient, auth: dict[str, str], job_id: int) -> None:
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth).status_code == 200


def _rows(settings: Settings, job_id: int) -> int:
    """Metric, event and checkpoint rows of the job."""
    engine = make_engine(settings.resolved_database_url())
    try:
        with make_session_factory(engine)() as session:
            return sum(
                session.scalar(select(func.count()).where(table.job_id == job_id)) or 0
                for table in (Metric, JobEvent, Checkpoint)
            )
    finally:
        engine.dispose()


def _add_results(settings: Settings, job_id: int) -> Path:
    """Metric and checkpoint rows as a worker leaves them, and the job's folder."""
    engine = make_engine(settings.resolved_database_url())
    with make_session_factory(engine)() as session:
        session.add_all(Metric(job_id=job_id, key="loss", step=s, value=1.0) for s in (1, 2))
        session.add(Checkpoint(job_id=job_id, name="last.pt", iteration=2, size=4, sha256="0",
                               path=f"jobs/{job_id}/last.pt"))  # fmt: skip
        session.commit()
    engine.dispose()
    folder = settings.artifacts_dir / "jobs" / str(job_id)
    folder.mkdir(parents=True)
    (folder / "last.pt").write_bytes(b"last")
    return folder


def test_delete_a_job(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str], settings: Settings
) -> None:
    job_id = _job(client, auth, model=MODEL, dataset_id=_dataset(client, auth))
    url = f"/v1/jobs/{job_id}"
    refused = client.delete(url, headers=auth)
    assert refused.status_code == 409 and "cancel" in refused.json()["detail"]

    _cancel(client, auth, job_id)
    folder = _add_results(settings, job_id)
    # Kept by the API once read (a finished job's pages never change), then deleted with it.
    assert client.get(f"{url}/metrics", headers=auth).json()["count"] == 2
    assert client.delete(url, headers=other_auth).status_code == 404
    assert client.delete(url, headers=auth).status_code == 204
    assert _rows(settings, job_id) == 0 and not folder.exists()
    for path in (url, f"{url}/metrics", f"{url}/log", f"{url}/checkpoints"):
        assert client.get(path, headers=auth).status_code == 404, path
    assert client.delete(url, headers=auth).status_code == 404  # repeated
    # A finished job whose folder is already gone is deleted all the same.
    gone = _job(client, auth, model=MODEL, dataset_id=_dataset(client, auth))
    _cancel(client, auth, gone)
    assert client.delete(f"/v1/jobs/{gone}", headers=auth).status_code == 204


def test_delete_a_comparison_and_its_jobs(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str], settings: Settings
) -> None:
    body = {
        "base": {"model": MODEL, "dataset_id": _dataset(client, auth), "queue": NOBODY},
        "arms": [{"name": "baseline"}, {"name": "ae20", "ae": {"layers": 20}}],
        "seeds": [0],
    }
    created = client.post("/v1/comparisons", json=body, headers=auth)
    assert created.status_code == 201, created.text
    url = f"/v1/comparisons/{created.json()['id']}"
    job_ids = [job["id"] for job in created.json()["jobs"]]
    refused = client.delete(url, headers=auth)
    assert refused.status_code == 409 and "cancel" in refused.json()["detail"]
    _cancel(client, auth, job_ids[0])
    assert client.delete(url, headers=auth).status_code == 409  # one job still queued
    _cancel(client, auth, job_ids[1])
    # A comparison's job goes with its comparison, whose statistics need every job.
    one = client.delete(f"/v1/jobs/{job_ids[0]}", headers=auth)
    assert one.status_code == 409 and f"DELETE {url}" in one.json()["detail"]

    folders = [_add_results(settings, job_id) for job_id in job_ids]
    assert client.delete(url, headers=other_auth).status_code == 404
    assert client.delete(url, headers=auth).status_code == 204
    assert client.get(url, headers=auth).status_code == 404
    for job_id, folder in zip(job_ids, folders, strict=True):
        assert client.get(f"/v1/jobs/{job_id}", headers=auth).status_code == 404
        assert _rows(settings, job_id) == 0 and not folder.exists()
    assert client.delete(url, headers=auth).status_code == 404


def test_delete_an_uploaded_model(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str]
) -> None:
    bundled = client.delete(f"/v1/models/{MODEL}", headers=auth)
    assert bundled.status_code == 409 and "bundled" in bundled.json()["detail"]
    assert client.delete("/v1/models/yolov9", headers=auth).status_code == 404
    cfg = bundled_cfg_path(MODEL).read_text()
    model = client.post("/v1/models", json={"name": "mine", "cfg": cfg}, headers=auth).json()
    url = f"/v1/models/{model['ref']}"
    job_id = _job(client, auth, model=model["id"], dataset_id=_dataset(client, auth))
    refused = client.delete(url, headers=auth)
    assert refused.status_code == 409 and f"[{job_id}]" in refused.json()["detail"]

    _cancel(client, auth, job_id)
    assert client.delete(url, headers=other_auth).status_code == 404
    assert client.delete(url, headers=auth).status_code == 204
    assert client.get(url, headers=auth).status_code == 404
    assert client.delete(url, headers=auth).status_code == 404
    # The finished job keeps the cfg it resolved.
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["resolved"]["cfg_text"]


def test_delete_a_dataset(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str], settings: Settings
) -> None:
    dataset_id = _dataset(client, auth)
    folder = settings.artifacts_dir / "datasets" / str(dataset_id)
    assert folder.is_dir()
    url = f"/v1/datasets/{dataset_id}"
    job_id = _job(client, auth, model=MODEL, dataset_id=dataset_id)
    refused = client.delete(url, headers=auth)
    assert refused.status_code == 409 and f"[{job_id}]" in refused.json()["detail"]

    _cancel(client, auth, job_id)
    assert client.delete(url, headers=other_auth).status_code == 404
    assert client.delete(url, headers=auth).status_code == 204
    assert not folder.exists()
    assert client.get(url, headers=auth).status_code == 404
    assert client.delete(url, headers=auth).status_code == 404
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).status_code == 200  # kept


def test_storage_quota_refuses_a_dataset_and_says_what_to_delete(
    settings: Settings, auth: dict[str, str]
) -> None:
    with TestClient(create_app(settings)) as client:
        _dataset(client, auth)
        usage = client.get("/v1/usage", headers=auth).json()
    assert usage["stored_bytes"] == usage["dataset_bytes"] > 0 and usage["job_bytes"] == 0
    # Room for one more byte than is stored: the next dataset does not fit.
    tight = settings.model_copy(update={"max_tenant_bytes": usage["stored_bytes"] + 1})
    with TestClient(create_app(tight)) as client:
        refused = client.post("/v1/datasets/generate", json=GENERATE, headers=auth)
        assert refused.status_code == 413, refused.text
        assert "DELETE /v1/datasets/{id}" in refused.json()["detail"]
        assert client.get("/v1/datasets", headers=auth).json()["count"] == 1
        # The refused dataset left no folder, staging or final.
        assert len(list((settings.artifacts_dir / "datasets").iterdir())) == 1
        assert client.get("/v1/usage", headers=auth).json()["max_bytes"] == tight.max_tenant_bytes
