"""Webhooks against a real HTTP receiver on loopback: signed, retried, recorded, private to
their tenant; a receiver that hangs holds up neither other deliveries nor training."""

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.core import jobstore
from api.core.db import make_engine, make_session_factory
from api.core.db.models import JobState
from api.core.settings import Settings
from api.main import create_app
from tests.api.routes.test_deletes import MODEL, NOBODY, _dataset, _job

DOCS = Path(__file__).parents[3] / "docs" / "webhooks.md"
# Test speed: a round every 0.1 s, retries 0.1, 0.4, 1.6 s after failures, 0.5 s to answer;
# and the receivers are on loopback.
FAST: dict[str, Any] = {
    "webhook_interval_s": 0.1,
    "webhook_backoff_s": 0.1,
    "webhook_timeout_s": 0.5,
    "webhook_allow_private": True,
}


def documented_verify() -> Callable[..., bool]:
    """``verify`` of docs/webhooks.md's Python example, so the tests check what users run."""
    code = re.search(r"```python\n(.*?)```", DOCS.read_text(), re.DOTALL)
    assert code is not None, "docs/webhooks.md has no Python example"
    namespace: dict[str, Any] = {}
    exec(code.group(1), namespace)
    verify: Callable[..., bool] = namespace["verify"]
    return verify


class Receiver:
    """An HTTP server on loopback recording each POST (headers, body). It answers with the
    next of ``answers`` (then 200); an answer of None hangs until the receiver stops."""

    def __init__(self, answers: list[int | None] | None = None) -> None:
        self.answers = list(answers or [])
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.stopping = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers.items()), body))
                answer = receiver.answers.pop(0) if receiver.answers else 200
                if answer is None:
                    receiver.stopping.wait(30)
                    return
                self.send_response(answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def events(self) -> list[str]:
        return [json.loads(body)["event"] for _, body in self.requests]


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    """Makes receivers (``answers`` as :class:`Receiver`), stopped after the test."""
    started: list[Receiver] = []

    def start(answers: list[int | None] | None = None) -> Receiver:
        started.append(Receiver(answers))
        return started[-1]

    yield start
    for receiver in started:
        receiver.stop()


@pytest.fixture
def fast_client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings.model_copy(update=FAST))) as client:
        yield client


def deliveries(client: TestClient, auth: dict[str, str], **query: int) -> list[dict[str, Any]]:
    page = client.get("/v1/webhooks/deliveries", params=query, headers=auth)
    assert page.status_code == 200, page.text
    data: list[dict[str, Any]] = page.json()["data"]
    return data


def wait_for(condition: Callable[[], Any], timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return result


BAD_URLS = [
    "ftp://example.com/hook", "example.com/hook", "http://", "https://exa mple.com/",
    "http://example.com:99999/", "javascript:alert(1)", "http://" + "a" * 2000 + ".com/", 42,
]  # fmt: skip


def test_a_webhook_that_is_no_http_url_is_refused_with_what_to_fix(
    client: TestClient, auth: dict[str, str]
) -> None:
    for url in BAD_URLS:
        job = {"model": MODEL, "dataset_id": 1, "webhook": url}
        comparison = {"base": job | {"webhook": None}, "arms": [{"name": "a"}, {"name": "b"}]}
        for path, body, where in (
            ("/v1/jobs", job, ["body", "webhook"]),
            ("/v1/comparisons", comparison | {"webhook": url}, ["body", "webhook"]),
            ("/v1/comparisons", comparison | {"base": job}, ["body", "base", "webhook"]),
        ):
            refused = client.post(path, json=body, headers=auth)
            assert refused.status_code == 422, (url, refused.text)
            [error] = refused.json()["detail"]
            assert error["loc"] == where, (url, error)
    assert deliveries(client, auth) == []


def test_deliveries_are_signed_retried_after_500s_and_private_to_their_tenant(
    fast_client: TestClient,
    auth: dict[str, str],
    other_auth: dict[str, str],
    receivers: Callable[..., Receiver],
) -> None:
    client, verify = fast_client, documented_verify()
    receiver = receivers([500, 500])
    dataset_id = _dataset(client, auth)
    job_id = _job(client, auth, model=MODEL, dataset_id=dataset_id, webhook=receiver.url)

    [queued] = wait_for(
        lambda: [d for d in deliveries(client, auth, job_id=job_id) if d["state"] == "delivered"]
    )
    assert queued["event"] == "job.queued" and queued["attempts"] == 3
    assert queued["last_status_code"] == 200 and queued["last_error"] is None
    assert queued["next_attempt_at"] is None and queued["delivered_at"] is not None
    secret = client.get("/v1/webhooks/secret", headers=auth).json()["secret"]
    assert len(receiver.requests) == 3
    for headers, body in receiver.requests:
        assert verify(secret, headers, body)
        assert headers["X-Aetrain-Event"] == "job.queued"
        assert headers["X-Aetrain-Delivery"] == str(queued["id"])
    assert len({body for _, body in receiver.requests}) == 1  # the same body, retried
    sent = json.loads(receiver.requests[0][1])
    assert sent["id"] == queued["id"] and sent["job"]["id"] == job_id
    assert sent["job"]["state"] == "queued"
    # A replayed request fails the documented check once older than its tolerance.
    assert not verify(secret, receiver.requests[0][0], receiver.requests[0][1], tolerance_s=-1)
    assert not verify(secret, receiver.requests[0][0], receiver.requests[0][1] + b" ")

    rotated = client.post("/v1/webhooks/secret/rotate", headers=auth).json()["secret"]
    assert rotated != secret
    assert client.get("/v1/webhooks/secret", headers=auth).json()["secret"] == rotated
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth).status_code == 200
    wait_for(lambda: len(receiver.requests) == 4)
    headers, body = receiver.requests[3]
    assert json.loads(body)["event"] == "job.cancelled"
    assert verify(rotated, headers, body) and not verify(secret, headers, body)

    # The other tenant sees none of them, and has a secret of its own.
    assert deliveries(client, other_auth) == []
    assert deliveries(client, other_auth, job_id=job_id) == []
    theirs = client.get("/v1/webhooks/secret", headers=other_auth).json()["secret"]
    assert theirs not in (secret, rotated)
    events = [d["event"] for d in deliveries(client, auth, job_id=job_id)]
    assert events == ["job.cancelled", "job.queued"]


def test_a_hanging_receiver_times_out_and_is_retried_without_holding_up_others(
    settings: Settings, auth: dict[str, str], receivers: Callable[..., Receiver]
) -> None:
    # A timeout long enough to see the other call go out while the first one hangs.
    slow = settings.model_copy(update={**FAST, "webhook_timeout_s": 3.0})
    hanging, answering = receivers([None, None]), receivers()
    with TestClient(create_app(slow)) as client:
        dataset_id = _dataset(client, auth)
        stuck = _job(client, auth, model=MODEL, dataset_id=dataset_id, webhook=hanging.url)
        wait_for(lambda: hanging.requests)
        fine = _job(client, auth, model=MODEL, dataset_id=dataset_id, webhook=answering.url)
        wait_for(lambda: deliveries(client, auth, job_id=fine)[0]["state"] == "delivered")
        [waiting] = deliveries(client, auth, job_id=stuck)
        assert waiting["attempts"] == 1 and waiting["last_error"] is None  # still in flight
        [retried] = wait_for(
            lambda: [d for d in deliveries(client, auth, job_id=stuck) if d["attempts"] >= 2]
        )
    assert retried["state"] == "pending" and len(hanging.requests) >= 2
    assert retried["last_error"] == "no answer within 3 s"
    assert retried["last_status_code"] is None


def test_a_receiver_on_a_private_address_is_not_called_unless_allowed(
    settings: Settings, auth: dict[str, str], receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers()
    public_only = settings.model_copy(update={**FAST, "webhook_allow_private": False})
    with TestClient(create_app(public_only)) as client:
        dataset_id = _dataset(client, auth)
        job_id = _job(client, auth, model=MODEL, dataset_id=dataset_id, webhook=receiver.url)
        [refused] = wait_for(
            lambda: [d for d in deliveries(client, auth, job_id=job_id) if d["state"] == "failed"]
        )
    assert refused["attempts"] == 1 and refused["last_status_code"] is None
    assert refused["last_error"] == (
        "not sent: 127.0.0.1 resolves to 127.0.0.1, not a public address "
        "(AETRAIN_WEBHOOK_ALLOW_PRIVATE=true allows such receivers)"
    )
    assert receiver.requests == []


def test_a_comparison_calls_its_webhook_when_it_starts_and_when_every_job_ended(
    fast_client: TestClient,
    auth: dict[str, str],
    settings: Settings,
    receivers: Callable[..., Receiver],
) -> None:
    client, receiver = fast_client, receivers()
    dataset_id = _dataset(client, auth)
    body = {
        "base": {"model": MODEL, "dataset_id": dataset_id, "queue": NOBODY},
        "arms": [{"name": "baseline"}, {"name": "ae", "ae": {"layers": {"stride": 16}}}],
        "seeds": [0], "webhook": receiver.url,
    }  # fmt: skip
    created = client.post("/v1/comparisons", json=body, headers=auth)
    assert created.status_code == 201, created.text
    comparison_id = created.json()["id"]
    first, second = (job["id"] for job in created.json()["jobs"])
    engine = make_engine(settings.resolved_database_url())
    sessions = make_session_factory(engine)
    with sessions() as session:  # as workers would
        assert jobstore.claim_job(session, first, "w1")
        assert jobstore.claim_job(session, second, "w2")  # running already: not sent again
        assert jobstore.finish_job(session, first, JobState.succeeded, worker="w1")
    wait_for(lambda: receiver.events() == ["comparison.running"])
    time.sleep(0.5)  # rounds enough to send a second event, were there one
    assert receiver.events() == ["comparison.running"]
    with sessions() as session:
        assert jobstore.finish_job(session, second, JobState.cancelled, worker="w2")
    engine.dispose()
    wait_for(lambda: len(receiver.events()) == 2)
    finished = json.loads(receiver.requests[1][1])
    assert finished["event"] == "comparison.finished"
    assert finished["comparison"]["id"] == comparison_id
    assert finished["comparison"]["jobs"] == {"succeeded": 1, "cancelled": 1}
    recorded = deliveries(client, auth, comparison_id=comparison_id)
    assert [d["event"] for d in recorded] == ["comparison.finished", "comparison.running"]
