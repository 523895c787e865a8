"""A job shorter than its cfg's schedule: scaled and said so, or warned about, at submission.
No worker runs: the API resolves every job against its cfg before queueing it."""

from typing import Any

from fastapi.testclient import TestClient

from api.core.settings import Settings
from api.main import create_app
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


def test_jobs_that_differ_in_what_resolution_reads_resolve_each_on_their_own(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    """Submissions share a resolution only where everything it reads is equal: the dataset's
    size and classes, the train and ae settings (api.services.jobs keeps resolutions)."""
    small = ready_dataset(settings, "alice", num_train=800, class_names=["a", "b"])
    large = ready_dataset(settings, "alice", num_train=1600, class_names=["a", "b"])
    three = ready_dataset(settings, "alice", num_train=800, class_names=["a", "b", "c"])

    def resolved(dataset: int, **extra: Any) -> dict[str, Any]:
        body = {"model": MODEL, "dataset_id": dataset, "train": {"epochs": 4}, **extra}
        response = client.post("/v1/jobs", json=body, headers=auth)
        assert response.status_code == 201, response.text
        return dict(response.json()["resolved"])

    first = resolved(small)
    assert first["max_batches"] == 200 and first["retargeted_from_classes"] == [10]
    again = resolved(small)
    assert again == first
    assert resolved(large)["max_batches"] == 400  # 4 x 1600 / 16
    assert "classes=2" in first["cfg_text"] and "classes=3" in resolved(three)["cfg_text"]
    assert resolved(small, ae={"layers": {"stride": 16}})["ae_layers"] == [20]
    assert resolved(small)["ae_layers"] == first["ae_layers"] == []
    width = resolved(small, train={"epochs": 4, "width": 320, "height": 320})
    assert (width["width"], first["width"]) == (320, 160)


def test_a_server_with_smaller_budgets_refuses_what_another_accepted(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    """Budgets are part of what a kept resolution depends on: a job accepted under one
    server's budgets is checked afresh under another's in the same process."""
    dataset = ready_dataset(settings, "alice", num_train=800)
    body = {"model": MODEL, "dataset_id": dataset}
    assert client.post("/v1/jobs", json=body, headers=auth).status_code == 201
    tight = settings.model_copy(update={"max_params_m": 0.01})
    with TestClient(create_app(tight)) as tight_client:
        refused = tight_client.post("/v1/jobs", json=body, headers=auth)
    assert refused.status_code == 422, refused.text
    assert "over this server's budget of 0.01 M" in refused.text
    assert client.post("/v1/jobs", json=body, headers=auth).status_code == 201
