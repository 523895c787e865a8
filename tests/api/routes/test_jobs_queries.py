"""Job endpoints that need no worker: model references and metric paging on stored rows."""

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from ae_model.cfg import bundled_cfg_path
from api.core import jobstore as job_ops
from api.core.db import Tenant, make_engine, make_session_factory
from api.core.db.models import Job, Metric
from api.core.settings import Settings
from api.main import create_app
from api.schemas.jobs import MetricsPage
from tests.api.conftest import ready_dataset, running_job


def _session(settings: Settings) -> Session:
    return make_session_factory(make_engine(settings.resolved_database_url()))()


def test_an_uploaded_models_ref_string_names_the_same_model(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    cfg = bundled_cfg_path("yolov3-tiny-small").read_text()
    uploaded = client.post("/v1/models", json={"name": "tiny", "cfg": cfg}, headers=auth)
    assert uploaded.status_code == 201, uploaded.text
    ref = uploaded.json()["ref"]
    assert isinstance(ref, str) and ref.isdigit()
    dataset_id = ready_dataset(settings, "alice")
    job = client.post("/v1/jobs", json={"model": ref, "dataset_id": dataset_id}, headers=auth)
    assert job.status_code == 201, job.text
    # Stored as the id, so the worker looks up the upload rather than a bundled cfg named "1".
    assert job.json()["spec"]["model"] == int(ref)


def test_a_metrics_page_never_splits_a_step(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    with _session(settings) as session:
        tenant = session.scalars(select(Tenant.id).where(Tenant.name == "alice")).one()
        job = Job(tenant_id=tenant, spec={})
        session.add(job)
        session.flush()
        per_step = {1: 3, 2: 80, 3: 3}  # step 2: an evaluation with one AP per class
        session.add_all(
            Metric(job_id=job.id, key=f"k{i:03d}", step=step, epoch=step / 4, value=float(i))
            for step, n in per_step.items()
            for i in range(n)
        )
        session.commit()
        job_id = job.id
    steps_seen, since, pages = [], -1, 0
    while since is not None:
        page = client.get(
            f"/v1/jobs/{job_id}/metrics?limit=50&since_step={since}", headers=auth
        ).json()
        MetricsPage.model_validate(page)  # the documented schema, exactly
        steps = [m["step"] for m in page["data"]]
        assert steps and page["count"] == len(steps)
        assert all(m["at"].endswith("Z") and m["epoch"] == m["step"] / 4 for m in page["data"])
        steps_seen += steps
        since, pages = page["next_since_step"], pages + 1
    assert pages == 3
    assert [steps_seen.count(step) for step in per_step] == list(per_step.values())


def test_a_tenant_has_a_limit_on_jobs_queued_or_running(
    settings: Settings, auth: dict[str, str], other_auth: dict[str, str]
) -> None:
    ids = {name: ready_dataset(settings, name) for name in ("alice", "mallory")}
    limited = settings.model_copy(update={"max_active_jobs": 2})
    with TestClient(create_app(limited)) as client:  # no worker: jobs stay queued

        def submit(headers: dict[str, str], tenant: str) -> Any:
            body = {"model": "yolov3-tiny-small", "dataset_id": ids[tenant]}
            return client.post("/v1/jobs", json=body, headers=headers)

        first, _ = submit(auth, "alice"), submit(auth, "alice")
        refused = submit(auth, "alice")
        assert refused.status_code == 429
        assert "2 jobs queued or running and may have 2 at once" in refused.json()["detail"]
        comparison = {"base": {"model": "yolov3-tiny-small", "dataset_id": ids["alice"]},
                      "arms": [{"name": "a"}, {"name": "b"}], "seeds": [0]}  # fmt: skip
        assert client.post("/v1/comparisons", json=comparison, headers=auth).status_code == 429
        # The limit is per tenant, and a cancelled job frees its place.
        assert submit(other_auth, "mallory").status_code == 201
        client.post(f"/v1/jobs/{first.json()['id']}/cancel", headers=auth)
        assert submit(auth, "alice").status_code == 201


def test_epochs_or_max_batches(client: TestClient, auth: dict[str, str]) -> None:
    body = {"model": "yolov3-tiny-small", "dataset_id": 1, "train": {"epochs": 2, "max_batches": 5}}
    both = client.post("/v1/jobs", json=body, headers=auth)
    assert both.status_code == 422 and "give max_batches or epochs, not both" in both.text
    body["train"] = {"epochs": 0}
    assert "greater than 0" in client.post("/v1/jobs", json=body, headers=auth).text


def test_a_training_size_the_cfg_cannot_take_is_422_not_500(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    # Four 2x2 maxpools then an unpadded 3x3 convolution: fine at 64 px, impossible at 32.
    text = "[net]\nwidth=64\nheight=64\nchannels=3\n\n" + "[maxpool]\nsize=2\nstride=2\n\n" * 4
    text += "[convolutional]\nfilters=8\nsize=3\nstride=1\npad=0\n"
    model = client.post("/v1/models", json={"name": "small", "cfg": text}, headers=auth).json()
    dataset_id = ready_dataset(settings, "alice")
    body = {"model": model["id"], "dataset_id": dataset_id,
            "ae": {"layers": {"stride": 16}}, "train": {"width": 32, "height": 32}}  # fmt: skip
    for url, payload in (
        ("/v1/jobs", body),
        ("/v1/comparisons", {"base": body, "arms": [{"name": "a"}, {"name": "b", "ae": None}]}),
    ):
        response = client.post(url, json=payload, headers=auth)
        assert response.status_code == 422, response.text
        assert "at 32x32: small.cfg:" in response.text and "too small for size=3" in response.text
    assert client.get("/v1/jobs", headers=auth).json()["count"] == 0


def test_a_finished_jobs_pages_are_kept_and_a_running_jobs_are_not(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str], settings: Settings
) -> None:
    job_id = running_job(settings, [("loss", s) for s in (1, 2, 3)])
    url = f"/v1/jobs/{job_id}/metrics?limit=50"

    def steps() -> list[int]:
        return [m["step"] for m in client.get(url, headers=auth).json()["data"]]

    def execute(statement: Any) -> None:
        with _session(settings) as session:
            session.execute(statement)
            session.commit()

    cache = client.app.state.metrics_pages  # type: ignore[attr-defined]
    assert steps() == [1, 2, 3] and cache.size == 0
    execute(delete(Metric).where(Metric.step > 1))  # what a rollback does to a running job
    assert steps() == [1]  # built afresh
    execute(update(Job).where(Job.id == job_id).values(state="succeeded"))
    assert steps() == [1] and cache.size > 0
    # Kept: a row that turned up under a finished job (none does) would not show.
    execute(insert(Metric).values(job_id=job_id, key="loss", step=9, value=1.0))
    assert steps() == [1]
    assert client.get(url, headers=other_auth).status_code == 404  # still another's job


def test_a_running_jobs_pages_before_its_last_checkpoint_are_kept(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    # 30 steps of 3 keys; checkpoint at step 20. A 50-row page from the start holds steps 1..16
    # and ends because of step 17: settled. The page after it runs to the newest rows: not.
    rows = [(k, s) for s in range(1, 31) for k in "abc"]
    job_id = running_job(settings, rows, checkpoint_at=20)

    def page(since: int) -> dict[str, Any]:
        url = f"/v1/jobs/{job_id}/metrics?limit=50&since_step={since}"
        response = client.get(url, headers=auth)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def add_row(step: int) -> None:  # no worker does this to a settled step; it shows keeping
        with _session(settings) as session:
            session.execute(insert(Metric).values(job_id=job_id, key="d", step=step, value=2.0))
            session.commit()

    first = page(-1)
    assert (first["count"], first["next_since_step"]) == (48, 16)
    add_row(3)
    assert page(-1) == first  # kept
    tail = page(16)
    assert tail["next_since_step"] is None and tail["count"] == 42
    add_row(25)
    assert page(16)["count"] == 43  # built afresh: steps after the checkpoint may still change


def test_a_running_jobs_full_pages_are_kept_until_it_rolls_back(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    # 30 steps of 3 keys, no checkpoint. A 50-row page from the start holds steps 1..16 and
    # ends because step 17 is stored; the page after it runs to the newest rows.
    rows = [(k, s) for s in range(1, 31) for k in "abc"]
    steady = running_job(settings, rows, nan_rollbacks=0)
    rolling = running_job(settings, rows, nan_rollbacks=1)

    def page(job_id: int, since: int = -1) -> dict[str, Any]:
        url = f"/v1/jobs/{job_id}/metrics?limit=50&since_step={since}"
        response = client.get(url, headers=auth)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    first = {job_id: page(job_id) for job_id in (steady, rolling)}
    assert {(p["count"], p["next_since_step"]) for p in first.values()} == {(48, 16)}
    assert {page(job_id, 16)["count"] for job_id in (steady, rolling)} == {42}
    with _session(settings) as session:
        # No worker deletes rows but through a rollback; deleting them shows what is kept.
        session.execute(delete(Metric).where(Metric.step.between(2, 3)))
        session.commit()
    assert page(steady) == first[steady] and page(rolling) == first[rolling]
    with _session(settings) as session:
        job_ops.delete_metrics_after(session, rolling, 5)  # a rollback to step 5
        session.commit()
    assert page(steady) == first[steady]  # can never roll back: kept for good
    assert [m["step"] for m in page(rolling)["data"]] == [1, 1, 1, 4, 4, 4, 5, 5, 5]
    assert page(rolling, 16)["count"] == 0 and page(steady, 16)["count"] == 42  # built afresh


def test_a_running_jobs_newest_page_is_sent_again_for_a_moment_while_it_runs(
    settings: Settings, auth: dict[str, str]
) -> None:
    job_id = running_job(settings, [("loss", s) for s in (1, 2, 3)])
    url = f"/v1/jobs/{job_id}/metrics?limit=50"
    # A long moment, so the test does not race the clock.
    with TestClient(create_app(settings.model_copy(update={"live_page_s": 60.0}))) as client:

        def steps() -> list[int]:
            return [m["step"] for m in client.get(url, headers=auth).json()["data"]]

        assert steps() == [1, 2, 3]
        with _session(settings) as session:
            session.execute(insert(Metric).values(job_id=job_id, key="loss", step=4, value=1.0))
            session.commit()
        assert steps() == [1, 2, 3]  # the page of a moment ago
        with _session(settings) as session:
            session.execute(update(Job).where(Job.id == job_id).values(state="succeeded"))
            session.commit()
        assert steps() == [1, 2, 3, 4]  # finished: every row, at once


def test_a_non_finite_metric_is_null_in_a_page(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    job_id = running_job(settings, [])
    with _session(settings) as session:
        # Workers leave non-finite values out (SQLite cannot store NaN); any that got in
        # still make valid JSON.
        values = {1: float("inf"), 2: float("-inf"), 3: 0.25}
        session.add_all(
            Metric(job_id=job_id, key="loss", step=s, value=v) for s, v in values.items()
        )
        session.commit()
    page = client.get(f"/v1/jobs/{job_id}/metrics", headers=auth)
    assert page.status_code == 200, page.text
    assert [m["value"] for m in page.json()["data"]] == [None, None, 0.25]
    assert all(m["at"].endswith("Z") for m in page.json()["data"])
