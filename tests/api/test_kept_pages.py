"""Metric pages answered before routing (api.kept_pages) are the route's answers: the same
page key for every query the route accepts and none for a query it refuses, the same bytes and
headers, kept or built afresh for a running job, and a revoked key refused within
AETRAIN_KEY_CACHE_S."""

import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text, update

from api.core.db import ApiKey, Tenant, make_engine, make_session_factory
from api.core.db.models import Job, Metric, utcnow
from api.core.settings import Settings
from api.kept_pages import page_key
from api.main import create_app
from tests.api.conftest import running_job

# Queries as clients may write them: plain, with escapes, with values the route's validation
# reads in other ways (leading zeros, signs, decimals, blanks), repeated names, unknown names.
QUERIES = [
    "", "limit=50", "since_step=3", "since_step=-1&limit=60", "keys=loss", "keys=loss,lr",
    "keys=loss%2Clr", "keys=", "keys=a+b", "keys=+loss", "limit=050", "limit=+50", "since_step=3.0",
    "since_step=%203", "since_step=-0", "limit=50&limit=60", "keys=a&keys=b", "other=1",
    "limit=50&other=x&since_step=2", "since_step=", "LIMIT=60", "keys=%ff", "since_step=1e1",
    # Plain, at and beyond the route's bounds.
    "limit=49", "limit=10000", "limit=10001", "since_step=-2", "since_step=2147483647",
    "since_step=2147483648", "since_step=9999999999999999999", "limit=-50",
]  # fmt: skip


def _finish(settings: Settings, job_id: int) -> None:
    engine = make_engine(settings.resolved_database_url())
    with make_session_factory(engine)() as session:
        session.execute(update(Job).where(Job.id == job_id).values(state="succeeded"))
        session.commit()
    engine.dispose()


def test_the_shortcut_reads_every_query_as_the_route_does_or_leaves_it_to_the_route(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    job_id = running_job(settings, [(k, s) for s in range(1, 40) for k in ("loss", "lr", "a")])
    _finish(settings, job_id)
    pages = client.app.state.metrics_pages  # type: ignore[attr-defined]
    engine = make_engine(settings.resolved_database_url())
    with make_session_factory(engine)() as session:
        tenant_id = session.scalars(select(Tenant.id).where(Tenant.name == "alice")).one()
    engine.dispose()
    read = 0
    for query in QUERIES:
        pages.drop(lambda _: True)
        response = client.get(f"/v1/jobs/{job_id}/metrics?{query}", headers=auth)
        # The route kept the page it answered, under the key it read the query as; a 422
        # keeps nothing.
        assert (pages.size > 0) == (response.status_code == 200), (query, response.text)
        shortcut = page_key(tenant_id, job_id, query.encode())
        if shortcut is not None:
            assert pages.get(shortcut) == response.content, query
            read += 1
    assert read >= len(QUERIES) // 2  # the plain queries are the shortcut's


def test_a_kept_page_from_the_shortcut_is_the_routes_answer(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str], settings: Settings
) -> None:
    job_id = running_job(settings, [(k, s) for s in range(1, 300) for k in ("loss", "lr")])
    _finish(settings, job_id)
    url = f"/v1/jobs/{job_id}/metrics?limit=100&since_step=7"
    built = client.get(url, headers=auth)  # the route builds and keeps it
    again = client.get(url, headers=auth)  # the key is remembered and the page kept
    assert built.status_code == again.status_code == 200
    assert again.headers.items() == built.headers.items()
    assert again.content == built.content and built.json()["count"] == 100
    # Another tenant's key, a key no one issued, none: what the route answers.
    assert client.get(url, headers=other_auth).status_code == 404
    assert client.get(url, headers={"Authorization": "Bearer aet_nobody"}).status_code == 401
    assert client.get(url).status_code == 401
    basic = {"Authorization": auth["Authorization"].replace("Bearer", "Basic")}
    assert client.get(url, headers=basic).status_code == 401
    lower = {"Authorization": auth["Authorization"].replace("Bearer", "bearer")}
    assert client.get(url, headers=lower).content == built.content
    assert client.get(f"{url}&keys=a%00", headers=auth).status_code == 422
    assert client.delete(f"/v1/jobs/{job_id}", headers=auth).status_code == 204
    assert client.get(url, headers=auth).status_code == 404


def test_a_running_jobs_page_from_the_shortcut_is_the_routes_answer_of_the_moment(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str], settings: Settings
) -> None:
    job_id = running_job(settings, [(k, s) for s in range(1, 100) for k in ("loss", "lr")])
    plain = f"/v1/jobs/{job_id}/metrics?since_step=-1&limit=1000"
    # The same page key in a form the shortcut leaves to the route (a leading zero).
    routed = f"/v1/jobs/{job_id}/metrics?since_step=-1&limit=01000"
    assert client.get("/v1/jobs", headers=auth).status_code == 200  # the key is remembered
    for step in (100, 101):
        first = client.get(plain, headers=auth)
        by_route = client.get(routed, headers=auth)
        assert first.status_code == by_route.status_code == 200
        assert first.headers.items() == by_route.headers.items()
        assert first.content == by_route.content
        assert first.json()["count"] == 2 * (step - 1)  # every row stored so far
        engine = make_engine(settings.resolved_database_url())
        with make_session_factory(engine)() as session:
            session.add(Metric(job_id=job_id, key="loss", step=step, value=2.0))
            session.add(Metric(job_id=job_id, key="lr", step=step, value=2.0))
            session.commit()
        engine.dispose()
    # Another tenant's remembered key: the route's 404, not an error of the shortcut's own.
    assert client.get("/v1/jobs", headers=other_auth).status_code == 200
    denied = client.get(plain, headers=other_auth)
    assert denied.status_code == 404
    assert denied.json() == client.get(routed, headers=other_auth).json()


_OTHER_BACKENDS = text(
    "SELECT pid FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
)


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_page_whose_connection_a_restart_broke_is_the_routes_answer(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    job_id = running_job(settings, [(k, s) for s in range(1, 100) for k in ("loss", "lr")])
    url = f"/v1/jobs/{job_id}/metrics"
    assert client.get("/v1/jobs", headers=auth).status_code == 200  # the key is remembered
    first = client.get(url, headers=auth)  # built before routing; its connection stays pooled
    assert first.status_code == 200
    # What a database restart does to them: every connection of the app's closed by the server.
    engine = make_engine(settings.resolved_database_url())
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        pids = connection.scalars(_OTHER_BACKENDS).all()
        for pid in pids:
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        deadline = time.monotonic() + 10
        while set(connection.scalars(_OTHER_BACKENDS).all()) & set(pids):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    engine.dispose()
    assert len(pids) >= 2  # the pages' connection and the key lookup's
    for _ in range(2):  # the route's answer, then the shortcut's on a new connection
        again = client.get(url, headers=auth)
        assert again.status_code == 200, again.text
        assert again.content == first.content


@pytest.mark.parametrize("key_cache_s", [0.0, 0.5])
def test_a_revoked_key_gets_no_kept_page_after_the_key_cache_time(
    settings: Settings, auth: dict[str, str], key_cache_s: float
) -> None:
    job_id = running_job(settings, [("loss", s) for s in range(1, 20)])
    _finish(settings, job_id)
    url = f"/v1/jobs/{job_id}/metrics"
    settings = settings.model_copy(update={"key_cache_s": key_cache_s})
    engine = make_engine(settings.resolved_database_url())
    with TestClient(create_app(settings)) as client:
        for _ in range(2):  # built, then kept
            assert client.get(url, headers=auth).status_code == 200
        with make_session_factory(engine)() as session:
            session.execute(update(ApiKey).values(revoked_at=utcnow()))
            session.commit()
        deadline = time.monotonic() + key_cache_s
        while True:
            started = time.monotonic()
            if client.get(url, headers=auth).status_code == 401:
                break
            assert started < deadline, "a revoked key still got a kept page"
            time.sleep(0.05)
        assert client.get(url, headers=auth).status_code == 401
    engine.dispose()
