"""`format=onnx` of a checkpoint before its file exists: a 4xx that says when it will, never a
500 (the worker writes ONNX files when a job's training ends; tests/api/test_cli_jobs.py
downloads one and runs it)."""

from fastapi.testclient import TestClient

from api.core.db import make_engine, make_session_factory
from api.core.db.models import Job
from api.core.settings import Settings
from tests.api.conftest import running_job


def test_onnx_is_409_while_the_job_trains_then_404_saying_how_to_convert(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    job_id = running_job(settings, [], checkpoint_at=10)
    url = f"/v1/jobs/{job_id}/checkpoints/last?format=onnx"
    early = client.get(url, headers=auth)
    assert early.status_code == 409, early.text
    assert early.json()["detail"].startswith(f"job {job_id} is running: its last.onnx does not")
    assert "when a job's training ends" in early.json()["detail"]

    engine = make_engine(settings.resolved_database_url())
    with make_session_factory(engine)() as session:
        session.get_one(Job, job_id).state = "failed"
        session.commit()
    engine.dispose()
    failed = client.get(url, headers=auth)
    assert failed.status_code == 404, failed.text
    assert "aetrain export CHECKPOINT.pt --format onnx" in failed.json()["detail"]
    assert client.get(f"{url[:-4]}tflite", headers=auth).status_code == 422
