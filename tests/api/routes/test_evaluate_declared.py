"""A job declares up front which evaluation is its result: the last checkpoint on val, or the
best (on val) on the dataset's test split, which must then have one; a comparison's arms share
the base's declaration. Datasets carry their test split's count."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from ae_model.compare.image_bootstrap import average_precision, read_matches
from api.core.settings import Settings
from tests.ae_model.data.dataset_files import png, yolo_files, zip_bytes
from tests.api.conftest import ready_dataset
from tests.api.routes.conftest import TINY_TRAIN, running_service
from tests.api.routes.test_datasets import upload
from tests.api.routes.test_jobs import _wait
from worker.training import DETECTIONS_BEST_TEST

BEST = {"checkpoint": "best"}
ENDED = ("succeeded", "failed", "cancelled")


def test_a_generated_dataset_records_its_test_split(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    spec = {"kind": "shapes", "train": 3, "val": 2, "test": 4, "size": 64, "min_scale": 0.15}
    body = client.post("/v1/datasets/generate", json=spec, headers=auth).json()
    assert body["num_test"] == 4 and body["report"]["counts"]["test"]["images"] == 4
    assert body["report"]["generator"]["test"] == 4
    stored = settings.artifacts_dir / "datasets" / str(body["id"])
    assert len(list((stored / "images" / "test").iterdir())) == 4
    without = client.post("/v1/datasets/generate", json={**spec, "test": 0}, headers=auth).json()
    assert without["num_test"] == 0 and "test" not in without["report"]["counts"]
    too_many = {**spec, "train": 4000, "val": 500, "test": 501}
    refused = client.post("/v1/datasets/generate", json=too_many, headers=auth)
    assert refused.status_code == 422 and "train + val + test = 5001" in refused.text


def test_an_uploaded_test_split_is_checked_and_counted(
    client: TestClient, auth: dict[str, str]
) -> None:
    files = yolo_files(train=2, val=1)
    for i in range(3):
        files[f"images/test/{i:03d}.png"] = png()
        files[f"labels/test/{i:03d}.txt"] = "1 0.5 0.5 0.25 0.3\n"
    body = upload(client, auth, zip_bytes(files)).json()
    assert (body["num_train"], body["num_val"], body["num_test"]) == (2, 1, 3)
    assert body["report"]["counts"]["test"] == {"layout": "yolo", "images": 3, "objects": 3}
    files["labels/test/002.txt"] = "7 0.5 0.5 0.25 0.3\n"  # no class 7
    refused = upload(client, auth, zip_bytes(files))
    assert refused.status_code == 422
    assert [e["file"] for e in refused.json()["report"]["errors"]] == ["labels/test/002.txt"]


def _job(dataset_id: int, **fields: Any) -> dict[str, Any]:
    return {"model": "yolov3-tiny-small", "dataset_id": dataset_id, **fields}


def test_best_needs_a_test_split(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    no_test = ready_dataset(settings, "alice", num_train=8, num_val=2)
    refused = client.post("/v1/jobs", json=_job(no_test, evaluate=BEST), headers=auth)
    assert refused.status_code == 422
    (error,) = refused.json()["detail"]
    assert error["loc"] == ["body", "evaluate", "checkpoint"]
    assert f"dataset {no_test} has none" in error["msg"] and '"test": N' in error["msg"]
    with_test = ready_dataset(settings, "alice", num_train=8, num_val=2, num_test=2)
    created = client.post("/v1/jobs", json=_job(with_test, evaluate=BEST), headers=auth)
    assert created.status_code == 201, created.text
    assert created.json()["spec"]["evaluate"] == BEST
    default = client.post("/v1/jobs", json=_job(no_test), headers=auth).json()
    assert default["spec"]["evaluate"] == {"checkpoint": "last"}


def test_a_comparison_declares_its_evaluation_in_base_for_every_arm(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    no_test = ready_dataset(settings, "alice", num_train=8, num_val=2)
    arms: list[dict[str, Any]] = [
        {"name": "baseline", "ae": None},
        {"name": "ae", "ae": {"layers": 20}},
    ]
    body = {"base": _job(no_test, evaluate=BEST), "arms": arms, "seeds": [0, 1]}
    refused = client.post("/v1/comparisons", json=body, headers=auth)
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "base", "evaluate", "checkpoint"]

    with_test = ready_dataset(settings, "alice", num_train=8, num_val=2, num_test=2)
    apart = [arms[0], {**arms[1], "evaluate": {"checkpoint": "last"}}]
    body = {"base": _job(with_test, evaluate=BEST), "arms": apart, "seeds": [0, 1]}
    refused = client.post("/v1/comparisons", json=body, headers=auth)
    assert refused.status_code == 422
    (error,) = refused.json()["detail"]
    assert error["loc"] == ["body", "arms", 1, "evaluate", "checkpoint"]
    assert "set evaluate in base only" in error["msg"]

    alike = [arms[0], {**arms[1], "evaluate": BEST}]  # repeating the base's is no conflict
    created = client.post("/v1/comparisons", json={**body, "arms": alike}, headers=auth)
    assert created.status_code == 201, created.text
    jobs = [client.get(f"/v1/jobs/{j['id']}", headers=auth).json() for j in created.json()["jobs"]]
    assert [j["spec"]["evaluate"] for j in jobs] == [BEST] * 4


@pytest.fixture
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    with running_service(request, tmp_path, "sqlite+filesystem") as running:
        yield running


def test_a_worker_reports_the_best_checkpoint_on_test_and_trains_alike(
    service: dict[str, Any],
) -> None:
    client, auth, home = service["client"], service["auth"], Path(service["env"]["AETRAIN_HOME"])
    generate = {"kind": "shapes", "train": 16, "val": 4, "test": 6, "size": 96, "seed": 1,
                "min_scale": 0.2, "max_scale": 0.5, "max_objects": 2}  # fmt: skip
    dataset_id = client.post("/v1/datasets/generate", json=generate, headers=auth).json()["id"]
    train = {**TINY_TRAIN, "max_batches": 8, "eval_interval": 4}
    ids = {
        checkpoint: client.post(
            "/v1/jobs", headers=auth,
            json=_job(dataset_id, seed=3, queue=service["queue"], train=train,
                      evaluate={"checkpoint": checkpoint}),
        ).json()["id"]
        for checkpoint in ("last", "best")
    }  # fmt: skip
    jobs = {
        name: _wait(client, f"/v1/jobs/{job_id}", auth, lambda j: j["state"] in ENDED, 240)
        for name, job_id in ids.items()
    }
    for job in jobs.values():
        assert job["state"] == "succeeded", (job, service["log"].read_text()[-3000:])
    last, best = jobs["last"]["result"], jobs["best"]["result"]
    assert last["evaluated"] == {"checkpoint": "last", "split": "val", "iteration": 8}
    checkpoints = client.get(f"/v1/jobs/{ids['best']}/checkpoints", headers=auth).json()
    best_pt = next(c for c in checkpoints["data"] if c["name"] == "best")
    evaluated = best["evaluated"]
    assert (evaluated["checkpoint"], evaluated["split"]) == ("best", "test")
    assert evaluated["iteration"] == best_pt["iteration"]
    # The run itself is the last job's: its final val metrics and its checkpoints' weights.
    keys = ("AP", "AP50", "AP75", "AR100")
    assert {k: best["last_val"][k] for k in keys} == {k: last[k] for k in keys}
    folders = {name: home / "artifacts" / "jobs" / str(job_id) for name, job_id in ids.items()}
    weights = [torch.load(f / "last.pt", weights_only=False)["model"] for f in folders.values()]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    # The result's main metrics and its image bootstrap are those of the 6 test images.
    bootstrap = best["image_bootstrap"]
    assert bootstrap["detections"] == DETECTIONS_BEST_TEST and bootstrap["images"] == 6
    matches = read_matches(folders["best"] / DETECTIONS_BEST_TEST)
    assert average_precision(matches, np.ones(6))[0] == pytest.approx(best["AP"], abs=1e-6)
