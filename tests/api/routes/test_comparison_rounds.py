"""Seeds until decided over HTTP: a real worker ends each round's jobs and adds the next round
itself; and the requests that cannot run are refused with a 422 that names the field."""

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.core.settings import Settings
from tests.api.conftest import ready_dataset
from tests.api.routes.conftest import TINY_TRAIN


def _wait_stopped(client: TestClient, cid: int, auth: dict[str, str], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/v1/comparisons/{cid}", headers=auth).json()
        if body["status"] != "running":
            return body
        time.sleep(0.5)
    raise AssertionError(f"comparison {cid} did not stop: {body['progress']}, {body['rounds']}")


# One backend: each job trains; the round logic runs on both in tests/api/core.
@pytest.mark.parametrize("service", ["postgres+redis"], indirect=True)
def test_seeds_until_decided_add_a_round_then_stop_at_max(service: dict[str, Any]) -> None:
    """Two identical arms differ by exactly 0 on every seed. Two pairs leave the confidence
    sequence unbounded, so the worker that ends the last job adds a round of one seed; with
    it the comparison has tried its max of 3 seeds and stops, undecided (the sequence is
    bounded from 4 pairs)."""
    client, auth = service["client"], service["auth"]
    body = {
        "base": {"model": "yolov3-tiny-small", "dataset_id": service["dataset_id"],
                 "queue": service["queue"],
                 "train": {**TINY_TRAIN, "max_batches": 6, "eval_interval": 0}},
        "arms": [{"name": "baseline"}, {"name": "again", "ae": None}],
        "seeds": {"min": 2, "max": 3, "round": 1, "until": "decided"},
        "target_effect": 0.01,
    }  # fmt: skip
    created = client.post("/v1/comparisons", json=body, headers=auth)
    assert created.status_code == 201, created.text
    first = created.json()
    assert (first["status"], first["rounds"], first["progress"]["total"]) == ("running", 1, 4)

    done = _wait_stopped(client, first["id"], auth, 400)
    log = service["log"].read_text()[-3000:]
    assert (done["status"], done["rounds"]) == ("max_reached", 2), (done["stop_reason"], log)
    assert sorted((j["arm"], j["seed"]) for j in done["jobs"]) == [
        (arm, seed) for arm in ("again", "baseline") for seed in range(3)
    ]
    assert done["progress"]["succeeded"] == 6
    assert done["stop_reason"].startswith("3 of at most 3 seeds: again vs baseline (3 pairs)")
    assert done["decided_at"] is not None
    sequential = done["sequential"]["arms"]["again"]
    assert (sequential["n"], sequential["interval"], sequential["stop"]) == (3, [None, None], False)
    assert "confidence sequence" in done["table"]
    assert done["summary"]["target_effect"] == 0.01
    # Zero spread: two pairs would detect any difference, the target included.
    assert done["summary"]["metrics"]["AP"]["differences"]["again"]["pairs_needed"] == 2


def _refusal(client: TestClient, auth: dict[str, str], body: dict[str, Any] | str) -> Any:
    if isinstance(body, str):  # JSON that json= cannot write (NaN)
        headers = {**auth, "Content-Type": "application/json"}
        response = client.post("/v1/comparisons", content=body, headers=headers)
    else:
        response = client.post("/v1/comparisons", json=body, headers=auth)
    assert response.status_code == 422, response.text
    return response.json()["detail"]


REFUSED: list[tuple[dict[str, Any], list[str], str]] = [
    ({"seeds": {"min": 5, "max": 3}}, ["seeds"], "min (5) must not exceed max (3)"),
    ({"seeds": {"min": 2, "max": 500}}, ["seeds", "max"], "less than or equal"),
    ({"seeds": {"min": 1, "max": 4}}, ["seeds", "min"], "greater than or equal"),
    ({"seeds": {"min": 2, "max": 4, "until": "forever"}}, ["seeds", "until"],
     "'decided'"),
    ({"seeds": 3}, ["seeds"], "valid list"),
    ({"target_effect": 0}, ["target_effect"], "greater than 0"),
    ({"target_effect": -0.01}, ["target_effect"], "greater than 0"),
    ({"target_effect": 1.5}, ["target_effect"], "less than or equal to 1"),
    ({"seeds": {"min": 2, "max": 100, "round": 60}}, ["seeds", "round"],
     "a round of 60 seeds x 2 arms is 120 jobs, more than the 100"),
]  # fmt: skip


def test_seeds_until_decided_that_cannot_run_are_refused(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    dataset = ready_dataset(settings, "alice")
    for fields, loc, message in REFUSED:
        body = {"base": {"model": "yolov3-tiny-small", "dataset_id": dataset},
                "arms": [{"name": "a"}, {"name": "b"}], **fields}  # fmt: skip
        [error] = _refusal(client, auth, body)
        assert error["loc"] == ["body", *loc] and message in error["msg"], (fields, error)
    assert client.get("/v1/comparisons", headers=auth).json()["count"] == 0


def test_a_non_finite_target_effect_is_refused(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    dataset = ready_dataset(settings, "alice")
    for value in ("NaN", "Infinity", "1e999"):
        body = (
            f'{{"base": {{"model": "yolov3-tiny-small", "dataset_id": {dataset}}}, '
            f'"arms": [{{"name": "a"}}, {{"name": "b"}}], "target_effect": {value}}}'
        )
        [error] = _refusal(client, auth, body)
        assert error["loc"] == ["body", "target_effect"], (value, error)
