"""Requests no route can use, on PostgreSQL and SQLite: values JSON, UTF-8 or PostgreSQL cannot
carry back or store, integers beyond any id, bodies over their limit, and a database that
went away. Each is a 4xx (or 503) with well-formed JSON that does not echo the input; nothing
is stored, and the connection serves the next request."""

import http.client
import json
import threading
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.client import free_port
from api.core.db import make_engine, make_session_factory
from api.core.db.models import Job, Metric, Tenant
from api.core.settings import Settings
from api.main import create_app
from tests.ae_model.data.dataset_files import coco_files, zip_bytes
from tests.api.conftest import ready_dataset

JSON = {"content-type": "application/json"}
# Each a JSON value no request may carry, as it is written on the wire.
NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"]
UNSTORABLE = ['"\\ud800"', '"a\\udfffb"', '"\\u0000"', '"name\\u0000"']
TOO_LARGE = [str(2**63), str(-(2**63) - 1), str(2**70)]
HOSTILE = NON_FINITE + UNSTORABLE + TOO_LARGE
JOB = '{"model": "yolov3-tiny-small", "dataset_id": 1, %s}'
# (route, a body with one hostile value at %s, the loc of that value)
BODIES = [
    ("/v1/jobs", JOB % '"name": %s', ["body", "name"]),
    ("/v1/jobs", JOB % '"train": {"learning_rate": %s}', ["body", "train", "learning_rate"]),
    ("/v1/jobs", JOB % '"ae": {"layers": [20, %s]}', ["body", "ae", "layers", 1]),
    ("/v1/models", '{"name": "mine", "cfg": %s}', ["body", "cfg"]),
    ("/v1/datasets/generate", '{"kind": "digits", "train": 1, "val": 1, "name": %s}',
     ["body", "name"]),
    ("/v1/comparisons",
     '{"base": {"model": "yolov3-tiny-small", "dataset_id": 1}, "arms": [{"name": "a"},'
     ' {"name": "b", "train": {"momentum": %s}}]}', ["body", "arms", 1, "train", "momentum"]),
]  # fmt: skip


def strict_json(text: str) -> Any:
    """``text`` parsed as JSON any client can read: no NaN or Infinity, no lone surrogates."""
    text.encode("utf-8")

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in the answer")

    return json.loads(text, parse_constant=refuse)


def assert_refused(response: Any, status: int = 422) -> Any:
    """The answer's ``detail``, after checking it is ``status`` with well-formed JSON that
    quotes nothing of the request."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    detail = strict_json(response.text)["detail"]
    if isinstance(detail, list):
        assert all(set(entry) == {"type", "loc", "msg"} for entry in detail), detail
    return detail


def assert_nothing_stored(client: TestClient, auth: dict[str, str]) -> None:
    for url in ("/v1/jobs", "/v1/comparisons", "/v1/datasets"):
        assert client.get(url, headers=auth).json()["count"] == 0, url
    models = client.get("/v1/models", headers=auth).json()["data"]
    assert not [m for m in models if m["ref"].isdigit()]


@pytest.mark.parametrize(("url", "body", "loc"), BODIES)
def test_unstorable_json_values_are_422_naming_the_field(
    client: TestClient, auth: dict[str, str], url: str, body: str, loc: list[str | int]
) -> None:
    for value in HOSTILE:
        response = client.post(url, content=body % value, headers={**auth, **JSON})
        detail = assert_refused(response)
        assert [e["loc"] for e in detail] == [loc], (value, detail)
    assert_nothing_stored(client, auth)


def test_unstorable_object_keys_are_422(client: TestClient, auth: dict[str, str]) -> None:
    arms = '[{"name": "a"}, {"name": "b", "train": {"\\ud800": "\\u0000", "a\\u0000": 2}}]'
    body = '{"base": {"model": "yolov3-tiny-small", "dataset_id": 1}, "arms": ' + arms + "}"
    detail = assert_refused(client.post("/v1/comparisons", content=body, headers={**auth, **JSON}))
    assert {e["type"] for e in detail} == {"string_unicode", "string_nul"}
    assert_nothing_stored(client, auth)


def test_a_body_of_the_wrong_type_is_not_echoed(client: TestClient, auth: dict[str, str]) -> None:
    body = json.dumps(["x" * 1000] * 100)
    response = client.post("/v1/jobs", content=body, headers={**auth, **JSON})
    assert_refused(response)
    assert len(response.content) < 1000
    undecodable = client.post("/v1/models", content=b"\xff\xfe\x00", headers=auth)
    assert_refused(undecodable)


def test_ids_beyond_32_bits_name_nothing(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    dataset = ready_dataset(settings, "alice")
    for model in (2**31, 2**31 - 1, 2**62):
        job = {"model": model, "dataset_id": dataset}
        detail = assert_refused(client.post("/v1/jobs", json=job, headers=auth))
        assert detail[0]["msg"] == f"no uploaded model {model}; see GET /v1/models"
        comparison = {"base": job, "arms": [{"name": "a"}, {"name": "b"}]}
        assert_refused(client.post("/v1/comparisons", json=comparison, headers=auth))
    for url in ("/v1/jobs/%d", "/v1/datasets/%d", "/v1/comparisons/%d", "/v1/models/%d"):
        for number in (2**31, 2**70):
            assert_refused(client.get(url % number, headers=auth), 404)
    assert client.get("/v1/jobs", headers=auth).json()["count"] == 0


def _finished_job(settings: Settings, steps: int) -> tuple[int, list[int]]:
    """A succeeded job of alice's with a loss row per step, and the rows' ids."""
    engine = make_engine(settings.resolved_database_url())
    try:
        with make_session_factory(engine)() as session:
            tenant = session.scalars(select(Tenant.id).where(Tenant.name == "alice")).one()
            job = Job(tenant_id=tenant, spec={}, state="succeeded")
            session.add(job)
            session.flush()
            rows = [Metric(job_id=job.id, key="loss", step=s, value=1.0) for s in range(steps)]
            session.add_all(rows)
            session.commit()
            return job.id, [r.id for r in rows]
    finally:
        engine.dispose()


def test_nul_in_query_and_path_parameters_is_422(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    job_id, _ = _finished_job(settings, 2)
    for url in (f"/v1/jobs/{job_id}/metrics?keys=loss%00", "/v1/jobs?state=queued%00",
                f"/v1/jobs/{job_id}/metrics?keys=loss&since_step=1%00"):  # fmt: skip
        detail = assert_refused(client.get(url, headers=auth))
        assert detail[0]["loc"][0] == "query", detail
    for url in ("/v1/models/yolov3%00", f"/v1/jobs/{job_id}%00/log", "/v1/datasets/%00"):
        detail = assert_refused(client.get(url, headers=auth))
        assert detail[0]["loc"] == ["path"], detail
    assert client.get(f"/v1/jobs/{job_id}/metrics?keys=loss", headers=auth).status_code == 200


def test_last_event_id_is_a_bounded_integer(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    job_id, ids = _finished_job(settings, 3)
    url = f"/v1/jobs/{job_id}/events"
    for bad in (str(2**70), str(2**63), "-1", "abc", "1e3"):
        detail = assert_refused(client.get(url, headers={**auth, "Last-Event-ID": bad}))
        assert detail[0]["loc"] == ["header", "last-event-id"], detail
    resumed = client.get(url, headers={**auth, "Last-Event-ID": str(ids[0])})
    assert resumed.status_code == 200
    assert f"id: {ids[-1]}" in resumed.text and '"step":0' not in resumed.text
    everything = client.get(url, headers={**auth, "Last-Event-ID": str(2**63 - 1)})
    assert everything.status_code == 200 and "event: metrics" not in everything.text


def test_json_bodies_over_the_limit_are_413_while_they_arrive(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    settings.max_json_bytes = 1000
    body = json.dumps({"model": "yolov3-tiny-small", "dataset_id": 1, "name": "x" * 2000})
    declared = client.post("/v1/jobs", content=body, headers={**auth, **JSON})
    assert "AETRAIN_MAX_JSON_BYTES" in assert_refused(declared, 413)
    streamed = client.post(
        "/v1/models", content=iter([b"{"] + [b" " * 100] * 20 + [b"}"]), headers={**auth, **JSON}
    )
    assert_refused(streamed, 413)
    # The limit is of any body but an upload's, whatever its content type says.
    assert_refused(client.post("/v1/jobs", content=b" " * 1001, headers=auth), 413)
    upload = zip_bytes(coco_files())
    assert len(upload) > 1000
    files = {"file": ("data.zip", upload, "application/zip")}
    assert client.post("/v1/datasets", files=files, headers=auth).status_code == 201


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/models", "/v1/datasets"])
def test_an_unreachable_database_is_503_with_retry_after(
    client: TestClient, auth: dict[str, str], path: str
) -> None:
    app: Any = client.app
    working = app.state.session_factory
    closed = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none")
    app.state.session_factory = make_session_factory(closed)
    try:
        response = client.get(path, headers=auth)
        assert "database" in assert_refused(response, 503)
        assert int(response.headers["retry-after"]) > 0
    finally:
        app.state.session_factory = working
        closed.dispose()
    assert client.get(path, headers=auth).status_code == 200


@pytest.fixture
def server(settings: Settings) -> Iterator[tuple[str, int]]:
    """The app served by uvicorn on a free port, for what only a real connection shows."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), port=port, log_level="warning", timeout_graceful_shutdown=1
    )
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run)
    thread.start()
    try:
        while not running.started:
            assert thread.is_alive()
            thread.join(0.05)
        yield "127.0.0.1", port
    finally:
        running.should_exit = True
        thread.join(60)


def test_the_connection_serves_the_next_request_after_a_refusal(
    server: tuple[str, int], auth: dict[str, str]
) -> None:
    with closing(http.client.HTTPConnection(*server, timeout=10)) as connection:
        connection.connect()
        socket = connection.sock
        for value in HOSTILE:
            connection.request("POST", "/v1/jobs", JOB % f'"seed": {value}', {**auth, **JSON})
            refused = connection.getresponse()
            assert refused.status == 422
            strict_json(refused.read().decode())
            assert refused.getheader("connection") != "close"
        connection.request("GET", "/v1/jobs", headers=auth)
        assert connection.getresponse().status == 200
        assert connection.sock is socket


def test_an_oversized_body_is_refused_before_it_is_sent(
    server: tuple[str, int], auth: dict[str, str]
) -> None:
    for framing in ({"Content-Length": str(200 << 20)}, {"Transfer-Encoding": "chunked"}):
        with closing(http.client.HTTPConnection(*server, timeout=10)) as connection:
            _send_oversized(connection, {**auth, **JSON, **framing})
            refused = connection.getresponse()
            assert refused.status == 413
            detail = strict_json(refused.read().decode())["detail"]
            assert "AETRAIN_MAX_JSON_BYTES" in detail


def _send_oversized(connection: http.client.HTTPConnection, headers: dict[str, str]) -> None:
    # The headers, then less than the limit when the length is declared, and more than the
    # limit in chunks when it is not; never the whole body.
    connection.putrequest("POST", "/v1/jobs")
    for name, value in headers.items():
        connection.putheader(name, value)
    connection.endheaders()
    if "Content-Length" in headers:
        connection.send(b"[1")
        return
    chunk = b"[" + b" " * (1 << 20)
    for _ in range(5):
        connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
