"""Heavy requests (api.heavy) on PostgreSQL and SQLite: a tenant's burst is refused past its
limit with 429 and ``Retry-After``, while another tenant's requests go on."""

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.services import datasets

GENERATE = {"kind": "shapes", "train": 2, "val": 1, "size": 64, "seed": 0, "min_scale": 0.15}


def generate(client: TestClient, auth: dict[str, str], name: str) -> Any:
    return client.post("/v1/datasets/generate", json={**GENERATE, "name": name}, headers=auth)


def test_a_tenants_third_heavy_request_is_429_while_another_tenant_goes_on(
    client: TestClient,
    auth: dict[str, str],
    other_auth: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Renders that wait for the test: alice's two hold her two slots (the default limit).
    entered = threading.Semaphore(0)
    release = threading.Event()
    real_generate = datasets.generate_dataset

    def held_generate(*args: Any, **kwargs: Any) -> Any:
        entered.release()
        assert release.wait(60)
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(datasets, "generate_dataset", held_generate)
    with ThreadPoolExecutor(3) as pool:
        alices = [pool.submit(generate, client, auth, f"a{i}") for i in range(2)]
        for _ in alices:
            assert entered.acquire(timeout=60)

        refused = generate(client, auth, "a2")
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["Retry-After"]) > 0
        assert "AETRAIN_MAX_HEAVY_PER_TENANT" in refused.json()["detail"]
        # Alice's slots are full, not mallory's: her request is taken, and her light ones answer.
        mallorys = pool.submit(generate, client, other_auth, "m0")
        listed = client.get("/v1/jobs?limit=1", headers=other_auth)
        assert listed.status_code == 200, listed.text
        release.set()
        assert [f.result().status_code for f in alices] == [201, 201]
        assert mallorys.result().status_code == 201, mallorys.result().text
    # The slots are given back when the requests end.
    assert generate(client, auth, "a3").status_code == 201


def test_a_slot_is_given_back_when_the_work_fails(
    client: TestClient, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_generate(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("the generator refuses")

    with monkeypatch.context() as patch:
        patch.setattr(datasets, "generate_dataset", failing_generate)
        for _ in range(3):
            failed = generate(client, auth, "x")
            assert failed.status_code == 422 and failed.json()["detail"] == "the generator refuses"
    assert generate(client, auth, "ok").status_code == 201
