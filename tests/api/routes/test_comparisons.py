"""Comparisons over HTTP with a real worker: pairing by seed is real, statistics and plot."""

import io
import time
from typing import Any

from fastapi.testclient import TestClient
from PIL import Image

from tests.api.routes.conftest import TINY_TRAIN


def _wait_done(client: TestClient, cid: int, auth: dict[str, str], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/v1/comparisons/{cid}", headers=auth).json()
        progress = body["progress"]
        if progress["succeeded"] + progress["failed"] + progress["cancelled"] == progress["total"]:
            return body
        time.sleep(0.5)
    raise AssertionError(f"comparison {cid} did not finish: {body['progress']}")


def test_identical_arms_pair_exactly_and_ae_arm_is_compared(service: dict[str, Any]) -> None:
    client, auth = service["client"], service["auth"]
    body = {
        "name": "pairing check",
        "base": {"model": "yolov3-tiny-small", "dataset_id": service["dataset_id"],
                 "queue": service["queue"], "train": {**TINY_TRAIN, "max_batches": 12,
                                                      "eval_interval": 0}},
        "arms": [{"name": "baseline"}, {"name": "baseline-again", "ae": None},
                 {"name": "ae16", "ae": {"layers": {"stride": 16}}}],
        "seeds": [0, 1],
    }  # fmt: skip
    created = client.post("/v1/comparisons", json=body, headers=auth)
    assert created.status_code == 201, created.text
    cid = created.json()["id"]
    assert created.json()["progress"]["total"] == 6

    done = _wait_done(client, cid, auth, 300)
    assert done["progress"]["succeeded"] == 6, (done["jobs"], service["log"].read_text()[-2000:])
    results = {(j["arm"], j["seed"]): j for j in done["jobs"]}
    assert {arm for arm, _ in results} == {"baseline", "baseline-again", "ae16"}

    # Same seed, AE off in both arms: the same numbers, so the paired difference is exactly 0.
    jobs = {j["id"]: j for j in client.get("/v1/jobs?limit=50", headers=auth).json()["data"]}
    for seed in (0, 1):
        a = jobs[results["baseline", seed]["id"]]["result"]
        b = jobs[results["baseline-again", seed]["id"]]["result"]
        assert a.pop("latency_ms") > 0 and b.pop("latency_ms") > 0  # wall time: never repeats
        assert a == b
    summary = done["summary"]
    assert summary is not None and "no difference" in done["table"].lower()
    assert "ae16" in done["table"] and "baseline-again" in done["table"]

    plot = client.get(f"/v1/comparisons/{cid}/plot.png", headers=auth)
    assert plot.status_code == 200 and plot.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(plot.content)).size[0] > 300

    other = service["other"]
    assert client.get(f"/v1/comparisons/{cid}", headers=other).status_code == 404
    assert client.get(f"/v1/comparisons/{cid}/plot.png", headers=other).status_code == 404
    assert client.get("/v1/comparisons", headers=other).json()["count"] == 0


def test_invalid_comparisons_name_the_field(service: dict[str, Any]) -> None:
    client, auth = service["client"], service["auth"]
    base = {"model": "yolov3-tiny-small", "dataset_id": service["dataset_id"]}
    cases = [
        ({"base": base, "arms": [{"name": "a"}]}, "arms"),
        ({"base": base, "arms": [{"name": "a"}, {"name": "a"}]}, "unique"),
        ({"base": base, "arms": [{"name": "a"}, {"name": "b"}], "reference": "c"}, "reference"),
        ({"base": base, "arms": [{"name": "a"}, {"name": "b", "train": {"batch": 0}}]}, "batch"),
        (
            {"base": base, "arms": [{"name": "a"}, {"name": "b", "ae": {"layers": 999}}]},
            "index 999",
        ),
        ({"base": base, "arms": [{"name": "a"}, {"name": "b"}], "seeds": []}, "seeds"),
    ]
    for body, needle in cases:
        response = client.post("/v1/comparisons", json=body, headers=auth)
        assert response.status_code == 422, (body, response.text)
        assert needle in response.text, (needle, response.text)
    assert client.get("/v1/comparisons", headers=auth).json()["count"] == 0
