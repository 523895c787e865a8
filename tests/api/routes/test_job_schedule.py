"""A job shorter than its cfg's schedule: scaled and said so, or warned about, at submission.
No worker runs: the API resolves every job against its cfg before queueing it."""

from typing import Any

from fastapi.testclient import TestClient

from api.core.settings import Settings
from tests.api.conftest import ready_dataset

# yolov3-tiny-small: batch 16, max_batches 4000, burn_in 100, steps 3200,3600.
MODEL = "yolov3-tiny-small"


def _log(client: TestClient, auth: dict[str, str], job_id: int) -> list[str]:
    return [
        event["message"]
        for event in client.get(f"/v1/jobs/{job_id}/log", headers=auth).json()["data"]
    ]


def test_epochs_scale_the_cfgs_schedule_and_the_job_says_so(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    dataset = ready_dataset(settings, "alice", num_train=800)
    body = {"model": MODEL, "dataset_id": dataset, "train": {"epochs": 4}}
    response = client.post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == 201, response.text
    job = response.json()
    resolved = job["resolved"]
    assert job["max_batches"] == resolved["max_batches"] == 200  # 4 x 800 / 16
    assert (resolved["burn_in"], resolved["steps"]) == (5, [160, 180])  # 200/4000 of the cfg's
    assert resolved["schedule_scaled_from"] == {"max_batches": 4000, "burn_in": 100,
                                                "steps": [3200, 3600]}  # fmt: skip
    [note] = resolved["notes"]
    assert "burn_in 100 -> 5" in note and resolved["warnings"] == []
    assert f"note: {note}" in _log(client, auth, job["id"])


def test_a_burn_in_the_run_never_leaves_is_warned_about(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    dataset = ready_dataset(settings, "alice", num_train=800)
    body = {"model": MODEL, "dataset_id": dataset, "train": {"max_batches": 50, "burn_in": 100}}
    job = client.post("/v1/jobs", json=body, headers=auth).json()
    [warning] = job["resolved"]["warnings"]
    assert "burn_in=100 is at or beyond the run's last iteration (50)" in warning
    assert f"warning: {warning}" in _log(client, auth, job["id"])


def test_a_comparison_shows_each_arms_warnings(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    dataset = ready_dataset(settings, "alice", num_train=800)
    body: dict[str, Any] = {
        "base": {"model": MODEL, "dataset_id": dataset, "train": {"max_batches": 50}},
        "arms": [
            {"name": "baseline", "ae": None},
            {"name": "slow", "train": {"burn_in": 60}},
        ],
        "seeds": [0, 1],
    }
    created = client.post("/v1/comparisons", json=body, headers=auth)
    assert created.status_code == 201, created.text
    [warning] = created.json()["warnings"]
    assert warning.startswith("arm slow: burn_in=60 is at or beyond")
    again = client.get(f"/v1/comparisons/{created.json()['id']}", headers=auth).json()
    assert again["warnings"] == [warning]
    for job in again["jobs"]:
        log = _log(client, auth, job["id"])
        assert any(line.startswith("warning: burn_in=60") for line in log) == (job["arm"] == "slow")
        assert any(line.startswith("note: the run's 50 iterations") for line in log)
