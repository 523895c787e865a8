"""Metric pages built on a growing page's settled rows are the pages built afresh."""

import random
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import insert

from api.core.db import Tenant, make_engine, make_session_factory
from api.core.db.models import Job, Metric
from api.core.settings import Settings
from api.metric_pages import SettledRows, build_page
from api.schemas.jobs import MetricsPage
from tests.api.conftest import running_job

KEYS = ("a", "b", "c", "d")


def _expected(rows: list[tuple[str, int]], keys: str | None, since: int, limit: int) -> Any:
    """The page by definition: whole steps in (step, key) order, at most ``limit`` rows
    unless the first step alone has more; ``next_since_step`` None on the last page."""
    wanted = [(s, k) for k, s in rows if s > since and (keys is None or k in keys.split(","))]
    wanted.sort()
    page = wanted
    if len(wanted) > limit:
        cut = wanted[limit][0]
        page = [r for r in wanted[:limit] if r[0] < cut] or [r for r in wanted if r[0] == cut]
    last = page[-1][0] if page and len(page) < len(wanted) else None
    return [(s, k) for s, k in page], last


def test_a_growing_page_on_its_settled_rows_is_the_page_built_afresh(settings: Settings) -> None:
    sessions = make_session_factory(make_engine(settings.resolved_database_url()))
    with sessions() as session:
        tenant = Tenant(name="t")
        session.add(tenant)
        session.flush()
        job = Job(tenant_id=tenant.id, spec={}, state="running")
        session.add(job)
        session.commit()
        job_id = job.id
    rng = random.Random(0)
    stored: list[tuple[str, int]] = []
    # Pages as dashboards ask for them: from the start or later, all keys or some, limits
    # small enough that pages fill up and a step can be larger than a page; the last as of a
    # job that may roll back, whose rows settle only before its checkpoint.
    pages: list[tuple[str | None, int, int, bool]] = [
        (None, -1, 50, False), (None, 10, 50, False), ("a,c", -1, 50, False),
        (None, -1, 7, False), ("d", 3, 50, False), (None, -1, 200, True),
    ]  # fmt: skip
    settled: dict[tuple[str | None, int, int, bool], SettledRows | None] = dict.fromkeys(pages)
    step = 0
    used_settled = 0
    for _ in range(60):
        # A worker's flush: rows for the newest step's keys not yet stored (an evaluation
        # after the step's training rows), then whole new steps; never an older step.
        new = [(k, step) for k in KEYS if (k, step) not in stored and rng.random() < 0.3]
        for _ in range(rng.randint(0, 3)):
            step += 1
            new += [(k, step) for k in rng.sample(KEYS, rng.randint(1, 4))]
        if step >= 20 and not any(k.startswith("val/") for k, _ in stored):
            new += [(f"val/AP_class/{c}", step) for c in range(60)]  # a step beyond a page
        stored += new
        if new:
            with sessions() as session:
                session.execute(
                    insert(Metric), [{"job_id": job_id, "key": k, "step": s, "value": 0.5}
                                     for k, s in new]
                )  # fmt: skip
                session.commit()
        checkpoint = step // 10 * 10  # one every 10 steps
        for keys, since, limit, may_roll_back in pages:
            before = checkpoint if may_roll_back else None
            with sessions() as session:
                connection = session.connection()
                fresh, fresh_boundary, _ = build_page(connection, job_id, keys, since, limit)
                kept = settled[(keys, since, limit, may_roll_back)]
                body, boundary, settled_now = build_page(
                    connection, job_id, keys, since, limit, kept, before
                )
            assert body == fresh and boundary == fresh_boundary
            page = MetricsPage.model_validate_json(body)
            expected, next_step = _expected(stored, keys, since, limit)
            # Keys within a step in the database's collation; steps in order.
            assert sorted((m.step, m.key) for m in page.data) == expected
            assert [m.step for m in page.data] == sorted(m.step for m in page.data)
            assert page.next_since_step == next_step and page.count == len(expected)
            if boundary is None:  # what job_metrics_page keeps while the page grows
                settled[(keys, since, limit, may_roll_back)] = settled_now
                if before is not None and settled_now is not None:
                    assert settled_now.last_step < before
                used_settled += kept is not None
    assert step > 40 and used_settled > 100


def test_only_pages_of_jobs_that_cannot_roll_back_keep_settled_rows(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    sessions = make_session_factory(make_engine(settings.resolved_database_url()))
    growing = client.app.state.settled_rows  # type: ignore[attr-defined]
    keys = [f"k{i:02d}" for i in range(20)]  # 20 rows a step: 80 settled after 5 steps
    for nan_rollbacks in (1, 0):
        job_id = running_job(settings, [], nan_rollbacks=nan_rollbacks)
        for step in range(1, 6):
            with sessions() as session:
                session.execute(
                    insert(Metric), [{"job_id": job_id, "key": k, "step": step, "value": 1.0}
                                     for k in keys]
                )  # fmt: skip
                session.commit()
            page = client.get(f"/v1/jobs/{job_id}/metrics", headers=auth).json()
            assert [m["step"] for m in page["data"]] == [
                s for s in range(1, step + 1) for _ in keys
            ]
        assert (growing.size > 0) == (nan_rollbacks == 0)
