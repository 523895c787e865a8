"""A real API server (uvicorn, PostgreSQL) under many requests at once: database sessions are
handed out in turns (api.deps), so no request stalls on an exhausted connection pool; SSE
streams hold no session while they stream; timestamps come out in UTC whatever PostgreSQL's
time zone. And the per-process memory of verified API keys (api.auth.VerifiedKeys)."""

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text, update
from sqlalchemy.engine import make_url

from api.auth import VerifiedKeys, create_tenant_with_key
from api.client import free_port, wait_until_serving
from api.core.db import ApiKey, make_engine, make_session_factory
from api.core.db.models import Job, Metric, utcnow
from api.core.settings import Settings
from api.deps import DB_SESSIONS
from api.main import create_app
from api.migrate import upgrade


@pytest.fixture
def served(postgres_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """``aetrain serve`` on a database whose time zone is not UTC, with one running job of
    200 metric rows."""
    upgrade(postgres_url)
    name = make_url(postgres_url).database
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"ALTER DATABASE \"{name}\" SET timezone TO 'Asia/Tokyo'"))
    admin.dispose()
    engine = make_engine(postgres_url)
    with make_session_factory(engine)() as session:
        issued = create_tenant_with_key(session, "alice")
        job = Job(tenant_id=issued.tenant_id, spec={}, state="running")
        session.add(job)
        session.flush()
        now = utcnow()
        session.add_all(
            Metric(job_id=job.id, key=f"k{k}", step=s, value=0.5, at=now)
            for s in range(1, 41)
            for k in range(5)
        )
        session.commit()
        job_id = job.id
    engine.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AETRAIN_")}
    # Every page built from the database, none sent again from a moment ago.
    env.update(
        AETRAIN_HOME=str(tmp_path / "home"), DATABASE_URL=postgres_url, AETRAIN_LIVE_PAGE_S="0"
    )
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--no-embedded-worker"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(base, proc, tmp_path / "serve.log", 60)
        yield {
            "base": base,
            "headers": {"Authorization": f"Bearer {issued.key}"},
            "job": job_id,
            "log": tmp_path / "serve.log",
        }
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_many_requests_at_once_are_all_answered(served: dict[str, Any]) -> None:
    # Far more requests than pooled connections and worker threads, each reading the database
    # (a running job's pages are built per request). Before sessions were handed out in turns,
    # threads waiting for a connection filled the thread pool while the requests holding the
    # connections waited for a thread, and everything stalled until the pool's 30 s timeout.
    count = 150

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=count)
        async with httpx.AsyncClient(
            base_url=served["base"], headers=served["headers"], limits=limits, timeout=20
        ) as client:
            url = f"/v1/jobs/{served['job']}/metrics"
            return await asyncio.gather(*(client.get(url) for _ in range(count)))

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * count, served["log"].read_text()[-3000:]
    assert all(r.json()["count"] == 200 for r in responses)


def test_sse_streams_hold_no_database_turn(served: dict[str, Any]) -> None:
    # More open streams than database turns: a plain request still gets one at once.
    async def main() -> float:
        async with httpx.AsyncClient(
            base_url=served["base"], headers=served["headers"], timeout=20
        ) as client:
            streams = []
            for _ in range(DB_SESSIONS + 2):
                stream = client.stream("GET", f"/v1/jobs/{served['job']}/events")
                response = await stream.__aenter__()
                assert response.status_code == 200
                lines = response.aiter_lines()
                while (await anext(lines)) != "event: state":  # the stream is open
                    pass
                streams.append(stream)
            start = time.monotonic()
            job = await client.get(f"/v1/jobs/{served['job']}", timeout=5)
            took = time.monotonic() - start
            assert job.status_code == 200, job.text
            for stream in streams:
                await stream.__aexit__(None, None, None)
            return took

    assert asyncio.run(main()) < 5


def test_times_are_utc_whatever_the_database_time_zone(served: dict[str, Any]) -> None:
    page = httpx.get(
        f"{served['base']}/v1/jobs/{served['job']}/metrics", headers=served["headers"]
    ).json()
    stamp = page["data"][0]["at"]
    assert stamp.endswith("Z"), stamp
    assert abs(datetime.fromisoformat(stamp) - datetime.now(UTC)) < timedelta(minutes=5)


def test_verified_keys_expire_and_are_bounded() -> None:
    keys = VerifiedKeys(ttl_s=0.2, max_keys=2)
    keys.put("a", 1)
    assert keys.get("a") == 1 and keys.get("b") is None
    time.sleep(0.25)
    assert keys.get("a") is None  # expired
    for digest, tenant in (("a", 1), ("b", 2), ("c", 3)):
        keys.put(digest, tenant)
    assert (keys.get("a"), keys.get("b"), keys.get("c")) == (None, 2, 3)  # the oldest went
    off = VerifiedKeys(ttl_s=0)
    off.put("a", 1)
    assert off.get("a") is None


@pytest.mark.parametrize("key_cache_s", [0.0, 0.5])
def test_a_revoked_key_stops_working_within_the_key_cache_time(
    settings: Settings, key_cache_s: float
) -> None:
    settings = settings.model_copy(update={"key_cache_s": key_cache_s})
    engine = make_engine(settings.resolved_database_url())
    sessions = make_session_factory(engine)
    with sessions() as session:
        issued = create_tenant_with_key(session, "alice")
    headers = {"Authorization": f"Bearer {issued.key}"}
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/jobs", headers=headers).status_code == 200
        with sessions() as session:
            session.execute(update(ApiKey).values(revoked_at=utcnow()))
            session.commit()
        # The key was remembered before the revocation, so it is forgotten by this time: a
        # request that starts later must be refused (one that starts earlier may pass).
        deadline = time.monotonic() + key_cache_s
        while True:
            started = time.monotonic()
            if client.get("/v1/jobs", headers=headers).status_code == 401:
                break
            assert started < deadline, "a revoked key still worked after AETRAIN_KEY_CACHE_S"
            time.sleep(0.05)
        assert client.get("/v1/jobs", headers=headers).status_code == 401
    engine.dispose()
