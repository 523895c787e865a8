"""Cfgs written to exhaust the API, on PostgreSQL and SQLite: an upload is refused with a 422
naming the line and key (and stores nothing), and a cfg that fits at its own size but not at
a size a request asks for is a 422 on its layer table and on a job, never a 500."""

from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.core.settings import Settings
from tests.api.conftest import ready_dataset

NET = "[net]\nwidth=416\nheight=416\nchannels=3\nmax_batches=100\n"
# At 416x416 the upsample's output is 6656x6656x6; at 4096x4096 (or the 4192x4192 of
# multi-scale with random=10) it would be more than 65536 wide.
GROWS = (
    NET + "[convolutional]\nfilters=6\n\n[upsample]\nstride=16\n\n"
    "[yolo]\nmask=0\nanchors=10,10\nnum=1\nclasses=1\nrandom=10\n"
)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (
            NET + "[convolutional]\nfilters=18\n[yolo]\nnum=1000000000000\nclasses=1\n",
            "mine.cfg:9: [yolo] num=1000000000000: expected an integer >= 1 and <= 1000",
        ),
        (
            "[net]\nwidth=" + "4" * 300 + "\nheight=416\nchannels=3\n[convolutional]\n",
            "mine.cfg:2: [net] width=4444444444444444444444444444444444444444... "
            "(300 characters): expected an integer >= 1 and <= 65536",
        ),
        (NET + "[convolutional]\nfilters=1e400\n", "mine.cfg:7: [convolutional] filters=1e400"),
        (
            NET + "learning_rate=nan\n[convolutional]\n",
            "mine.cfg:6: [net] learning_rate=nan: not a finite number; expected a number >= 0",
        ),
        (NET + "learning_rate=inf\n[convolutional]\n", "learning_rate=inf: not a finite number"),
        (
            NET + "[convolutional]\nfilters=1\n" + "[upsample]\nstride=2\n" * 1100,
            "mine.cfg:20: [upsample] (layer 7) output 53248x53248x1 is too large",
        ),
        (
            NET + "[convolutional]\nfilters=1\n" + "[route]\nlayers=-1,-1\n" * 1100,
            "[route] (layer 14) output 416x416x16384 is too large",
        ),
    ],
)
def test_hostile_uploads_are_422_and_store_nothing(
    client: TestClient, auth: dict[str, str], cfg: str, message: str
) -> None:
    before = client.get("/v1/models", headers=auth).json()["count"]
    response = client.post("/v1/models", json={"name": "mine", "cfg": cfg}, headers=auth)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]
    assert client.get("/v1/models", headers=auth).json()["count"] == before


@pytest.fixture
def grows(client: TestClient, auth: dict[str, str]) -> int:
    """The id of the uploaded cfg ``GROWS``, which fits at its own size only."""
    response = client.post("/v1/models", json={"name": "grows", "cfg": GROWS}, headers=auth)
    assert response.status_code == 201, response.text
    model_id: int = response.json()["id"]
    return model_id


def test_a_layer_table_too_large_at_the_size_asked_is_422(
    client: TestClient, auth: dict[str, str], grows: int
) -> None:
    response = client.get(f"/v1/models/{grows}/layers?size=4096", headers=auth)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "grows.cfg:9: [upsample] (layer 1) output 65536x65536x6 is too large" in detail


@pytest.mark.parametrize(
    "train",
    [{"width": 4096, "height": 4096}, {"multiscale": True}],
    ids=["size", "multiscale"],
)
def test_a_job_whose_layers_are_too_large_at_its_size_is_422(
    client: TestClient,
    auth: dict[str, str],
    settings: Settings,
    grows: int,
    train: dict[str, Any],
) -> None:
    dataset = ready_dataset(settings, "alice", num_train=2, num_val=1)
    spec = {"model": grows, "dataset_id": dataset, "train": train}
    response = client.post("/v1/jobs", json=spec, headers=auth)
    assert response.status_code == 422, response.text
    assert "[upsample] (layer 1) output" in response.text
    assert "is too large" in response.text
    assert client.get("/v1/jobs", headers=auth).json()["count"] == 0
