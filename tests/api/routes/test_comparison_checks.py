"""A comparison's semantic errors name where the fault is: the base, or one arm by index.
No worker runs: the requests are answered (or refused) before any job trains."""

from typing import Any

from fastapi.testclient import TestClient

from api.core.settings import Settings
from tests.api.conftest import ready_dataset

LAYER_99 = (
    "AE layer index 99 is not a layer of this network: valid indices are 0..23 "
    "(see the layer table)"
)


def _comparison(dataset_id: int, *arms: dict[str, Any], **base: Any) -> dict[str, Any]:
    return {
        "base": {"model": "yolov3-tiny-small", "dataset_id": dataset_id, **base},
        "arms": [{"name": "baseline"}, *arms],
        "seeds": [0, 1],
    }


def _errors(client: TestClient, auth: dict[str, str], body: dict[str, Any]) -> list[Any]:
    response = client.post("/v1/comparisons", json=body, headers=auth)
    assert response.status_code == 422, response.text
    return [(error["loc"], error["msg"]) for error in response.json()["detail"]]


def test_an_arms_fault_is_located_under_its_index(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    dataset = ready_dataset(settings, "alice")
    missing_layer = _comparison(dataset, {"name": "ok", "ae": {"layers": 20}},
                                {"name": "ae99", "ae": {"layers": 99}})  # fmt: skip
    assert _errors(client, auth, missing_layer) == [(["body", "arms", 2, "ae", "layers"], LAYER_99)]
    # The base fits the budget; the arm's training size does not: the arm's train is at fault.
    big = _comparison(dataset, {"name": "big", "train": {"width": 4096, "height": 4096}},
                      model="yolov3")  # fmt: skip
    [(loc, message)] = _errors(client, auth, big)
    assert loc == ["body", "arms", 1, "train"]
    assert "BFLOPs per image at 4096x4096, over this server's budget" in message


def test_a_fault_of_the_base_is_located_under_base(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    dataset = ready_dataset(settings, "alice")
    inherited = _comparison(dataset, {"name": "ae20", "ae": {"layers": 20}}, ae={"layers": 99})
    assert _errors(client, auth, inherited) == [(["body", "base", "ae", "layers"], LAYER_99)]
    no_dataset = _comparison(999999, {"name": "ae20", "ae": {"layers": 20}})
    assert _errors(client, auth, no_dataset) == [
        (["body", "base", "dataset_id"], "no dataset 999999; see GET /v1/datasets")
    ]


def test_a_base_fault_that_every_arm_overrides_is_no_fault(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    dataset = ready_dataset(settings, "alice")
    body = _comparison(dataset, {"name": "ae20", "ae": {"layers": 20}}, ae={"layers": 99})
    body["arms"][0]["ae"] = None
    created = client.post("/v1/comparisons", json=body, headers=auth)
    assert created.status_code == 201, created.text
    assert created.json()["progress"]["total"] == 4
