"""Recovers jobs whose worker died, and queued jobs whose task the broker lost: a loop in the
API process (see api.core.jobstore.reap_stale_jobs and api.core.jobstore.resend_lost_tasks).

Several API replicas may each run it; the conditional updates recover a job once.
"""

import asyncio
import logging
from datetime import timedelta
from typing import Any

from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session, sessionmaker

from api.core import jobstore as job_ops
from api.core.broker import send_train_task, waiting_tasks
from api.core.comparison_rounds import advance_waiting_comparisons
from api.core.db.models import Job
from api.core.settings import Settings

log = logging.getLogger(__name__)


def reap_once(
    sessions: sessionmaker[Session], celery: Any, settings: Settings
) -> tuple[list[int], list[int]]:
    """One round: re-queue (or fail) stale running jobs, send again the tasks the broker lost
    of jobs still queued, then step the comparisons whose jobs have all ended
    (api.core.comparison_rounds). Returns the ids of the jobs re-queued and re-sent."""

    def send(job: Job) -> None:
        send_train_task(celery, job.id, job.queue)

    with sessions() as session:
        requeued = job_ops.reap_stale_jobs(
            session, timedelta(seconds=settings.stale_after_s), send=send
        )
        resent = job_ops.resend_lost_tasks(
            session,
            timedelta(seconds=settings.requeue_queued_after_s),
            waiting_in_broker=lambda queue: waiting_tasks(celery, queue),
            send=send,
        )
        # Comparisons whose last job ended outside a worker (cancelled, failed above).
        advance_waiting_comparisons(session, settings, send)
    return requeued, resent


async def reap_forever(sessions: sessionmaker[Session], celery: Any, settings: Settings) -> None:
    """Run :func:`reap_once` every ``reaper_interval_s`` until cancelled; errors (database or
    broker down) are logged and the next round tries again."""
    while True:
        await asyncio.sleep(settings.reaper_interval_s)
        try:
            requeued, resent = await run_in_threadpool(reap_once, sessions, celery, settings)
        except Exception:
            log.exception(
                "reaping stale jobs failed; next try in %.0f s", settings.reaper_interval_s
            )
            continue
        if requeued:
            log.warning("re-queued jobs whose worker died: %s", requeued)
        if resent:
            log.warning("sent again the tasks the broker lost of queued jobs: %s", resent)
