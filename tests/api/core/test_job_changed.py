"""A state change's webhook delivery is the same whether the job's row is handed over (a job
just inserted by ``jobstore.add_queued_jobs``) or read back."""

from typing import Any

from sqlalchemy import select

from api.core import jobstore
from api.core.db import Tenant, make_engine, make_session_factory
from api.core.db.models import Job, JobState, WebhookDelivery
from api.core.settings import Settings


def test_a_new_jobs_delivery_from_its_inserted_values_equals_the_read_back_one(
    settings: Settings,
) -> None:
    engine = make_engine(settings.resolved_database_url())
    with make_session_factory(engine)() as session:
        tenant = Tenant(name="t")
        session.add(tenant)
        session.flush()
        spec = {"name": "run", "webhook": "https://example.com/hook", "train": {}}
        payloads: list[dict[str, Any]] = []
        for handed_over in (True, False):
            if handed_over:  # as submissions add a job: its row built from what was inserted
                fields = {"tenant_id": tenant.id, "spec": spec, "queue": "cpu", "seed": 7}
                (job,) = jobstore.add_queued_jobs(session, [(fields, ["submitted"])])
            else:  # the row read back
                job = Job(tenant_id=tenant.id, spec=spec, queue="cpu", seed=7)
                session.add(job)
                session.flush()
                jobstore.add_transition(session, job.id, JobState.queued, "submitted")
            session.commit()
            delivery = session.scalars(
                select(WebhookDelivery).where(WebhookDelivery.job_id == job.id)
            ).one()
            payload = dict(delivery.payload)
            assert payload.pop("occurred_at")
            payload["job"] = {k: v for k, v in payload["job"].items() if k != "id"}
            payloads.append(payload)
    engine.dispose()
    assert payloads[0] == payloads[1]
    assert payloads[0]["job"]["name"] == "run" and payloads[0]["job"]["seed"] == 7
