"""A real worker records a job's seed fingerprints and image bootstrap; a comparison shows, in
its result, a seed whose arms did not start alike, and its validation-image noise (there the
jobs' results as a worker records them are written to the database, no worker runs)."""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from ae_model.compare.image_bootstrap import DETECTIONS_LAST, average_precision, read_matches
from api.core.db import make_engine, make_session_factory
from api.core.db.models import Job
from api.core.settings import Settings
from tests.api.conftest import ready_dataset
from tests.api.routes.conftest import TINY_TRAIN, running_service


def _finish_jobs(
    settings: Settings, comparison_id: int, results: dict[tuple[str | None, int | None], Any]
) -> None:
    """Mark the comparison's jobs succeeded with ``results[arm, seed]``."""
    engine = make_engine(settings.resolved_database_url())
    try:
        with make_session_factory(engine)() as session:
            for job in session.scalars(select(Job).where(Job.comparison_id == comparison_id)):
                job.state, job.iteration = "succeeded", 1
                job.result = results[job.arm, job.seed]
            session.commit()
    finally:
        engine.dispose()


def _result(arm: str, seed: int) -> dict[str, Any]:
    weights = "f00d" if (arm, seed) == ("ae", 1) else f"weights-{seed}"
    values = [
        0.30 + 0.01 * seed + (0.02 + 0.005 * seed if arm == "ae" else 0.0) + 0.001 * i
        for i in range(5)
    ]
    return {
        "AP": values[2],
        "fingerprints": {"weights": weights, "data_stream": f"stream-{seed}",
                         "data_stream_iterations": 100, "data_settings": "alike", "start": False},
        "image_bootstrap": {"metric": "AP", "images": 150, "resamples": 5, "seed": 0,
                            "resamples_sha256": "same", "sd": 0.0016, "values": values,
                            "detections": "detections-last.json.gz"},
    }  # fmt: skip


def test_a_seed_whose_arms_started_apart_is_shown_in_the_result(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    body = {
        "base": {"model": "yolov3-tiny-small", "dataset_id": ready_dataset(settings, "alice")},
        "arms": [{"name": "baseline"}, {"name": "ae", "ae": {"layers": 20}}],
        "seeds": [0, 1, 2],
    }
    created = client.post("/v1/comparisons", json=body, headers=auth)
    assert created.status_code == 201, created.text
    cid = created.json()["id"]
    _finish_jobs(
        settings, cid, {(a, s): _result(a, s) for a in ("baseline", "ae") for s in range(3)}
    )

    shown = client.get(f"/v1/comparisons/{cid}", headers=auth).json()
    mismatch = "seed 1: the arms started from different weights (baseline weights-1, ae f00d)"
    assert f"seed control: {mismatch}" in shown["notes"]
    checks = shown["summary"]["seed_control"]
    assert checks["status"] == "mismatch" and checks["mismatches"] == [mismatch]
    assert "seed control: MISMATCH" in shown["table"]
    noise = shown["summary"]["image_noise"]
    assert noise["differences"]["ae"]["pairs"] == 3
    assert noise["differences"]["ae"]["mean_image_sd"] == 0.0  # the same shift on every image
    assert noise["differences"]["ae"]["image_share"] == 0.0
    assert "validation-image noise" in shown["table"]


@pytest.fixture
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A real worker on the embedded backends: what a job records does not depend on them."""
    with running_service(request, tmp_path, "sqlite+filesystem") as running:
        yield running


def test_a_worker_records_the_fingerprints_and_the_image_bootstrap(service: dict[str, Any]) -> None:
    client, auth = service["client"], service["auth"]
    spec = {"model": "yolov3-tiny-small", "dataset_id": service["dataset_id"], "seed": 4,
            "queue": service["queue"], "train": {**TINY_TRAIN, "max_batches": 2}}  # fmt: skip
    job_id = client.post("/v1/jobs", json=spec, headers=auth).json()["id"]
    deadline = time.monotonic() + 240
    while (job := client.get(f"/v1/jobs/{job_id}", headers=auth).json())["state"] in (
        "queued",
        "running",
    ) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert job["state"] == "succeeded", (job, service["log"].read_text()[-3000:])
    result = job["result"]
    fingerprints = result["fingerprints"]
    assert fingerprints["data_stream_iterations"] == 2 and fingerprints["start"] is False
    assert all(len(fingerprints[k]) == 64 for k in ("weights", "data_stream", "data_settings"))
    bootstrap = result["image_bootstrap"]
    assert bootstrap["images"] == 4 and len(bootstrap["values"]) == bootstrap["resamples"] == 200
    detections = Path(service["env"]["AETRAIN_HOME"], "artifacts", "jobs", str(job_id))
    matches = read_matches(detections / bootstrap["detections"])
    assert bootstrap["detections"] == DETECTIONS_LAST
    assert average_precision(matches, np.ones(4))[0] == pytest.approx(result["AP"], abs=1e-6)
