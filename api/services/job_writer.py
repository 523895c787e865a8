"""Checking and storing submitted jobs and sending their tasks in groups: one thread per API
process.

A submission's body, validated, is handed to the writer, which takes every submission handed
over meanwhile and, in one transaction, reads their datasets (one query) and their tenants'
active jobs (one more), checks each (``jobs.submitted_row``, then the tenant's limit counting
the group's earlier jobs), stores those that pass (one INSERT of the jobs, one of their
events: ``jobstore.add_queued_jobs``) and then sends their tasks. Under load the cost of a
transaction (its round trips, its commit, the database's flush of its log) is shared by the
group instead of paid per job; alone, a job is written at once, as before. The request waits
on the event loop, holding no thread and no database connection (bench/bench_api_load.py,
docs/benchmarks.md).

Each job is as safe as when written by its own request: nothing is answered 201 before its
transaction committed; a broker that cannot be reached fails the group's jobs with the reason
and answers 503 (``jobs.enqueue``); a database error answers each request of the group as
that error (503 for an unreachable database), except values the database refuses (one
row's), which fail their own request only; a check's refusal (or its failure) answers its
own request only; a request given up before its group is written (its client went away)
writes nothing.
"""

import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from sqlalchemy import bindparam, func, select
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from api.core.db.models import Dataset, Job
from api.core.job_spec import JobCreate
from api.core.jobstore import add_queued_jobs
from api.core.settings import Settings
from api.services.errors import Unavailable
from api.services.jobs import ACTIVE_STATES, enqueue, refuse_over_limit, submitted_row

# The most jobs one transaction stores: bounds a transaction's size and the wait of the
# group's first request when many arrive at once.
MAX_GROUP = 64

# Built once: building a statement cost more than running it.
_DATASETS = select(Dataset).where(Dataset.id.in_(bindparam("ids", expanding=True)))
_ACTIVE_BY_TENANT = (
    select(Job.tenant_id, func.count())
    .where(Job.tenant_id.in_(bindparam("tenants", expanding=True)))
    .where(Job.state.in_(ACTIVE_STATES))
    .group_by(Job.tenant_id)
)


@dataclass
class _Submission:
    tenant_id: int
    body: JobCreate
    done: Future[Job] = field(default_factory=Future)


class JobWriter:
    """Stores queued jobs and sends their tasks from one thread, in groups (module doc)."""

    def __init__(self, sessions: sessionmaker[Session], celery: Celery, settings: Settings) -> None:
        self._sessions = sessions
        self._celery = celery
        self._settings = settings
        self._waiting: queue.SimpleQueue[_Submission | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="job-writer", daemon=True)
        self._thread.start()

    def submit(self, tenant_id: int, body: JobCreate) -> Future[Job]:
        """The tenant's job of ``body`` checked, stored and its task sent, when done: the job
        as inserted, or what refused it (a check's refusal, ``OverLimit``, ``Unavailable``,
        a database error)."""
        submission = _Submission(tenant_id, body)
        self._waiting.put(submission)
        if not self._thread.is_alive():
            self._refuse_waiting()
        return submission.done

    def stop(self) -> None:
        """Write what was handed over, then stop the thread; what is handed over after that
        answers Unavailable."""
        self._waiting.put(None)
        self._thread.join()
        self._refuse_waiting()

    def _refuse_waiting(self) -> None:
        while True:
            try:
                late = self._waiting.get_nowait()
            except queue.Empty:
                return
            if late is not None and late.done.set_running_or_notify_cancel():
                late.done.set_exception(Unavailable("the server is stopping; submit it again"))

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._waiting.get()
            if first is None:
                return
            group = [first]
            while len(group) < MAX_GROUP:
                try:
                    more = self._waiting.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                group.append(more)
            self._write([s for s in group if s.done.set_running_or_notify_cancel()])

    def _write(self, group: list[_Submission]) -> None:
        try:
            with self._sessions() as session:
                checked = self._checked(session, group)
                admitted = [submission for submission, _ in checked]
                if not admitted:
                    return
                jobs = add_queued_jobs(session, [row for _, row in checked])
                session.commit()
                enqueue(self._celery, session, jobs)
        except (DataError, IntegrityError) as error:
            unanswered = [submission for submission in group if not submission.done.done()]
            if len(unanswered) < 2:
                _answer_all(unanswered, error)
                return
            # Values the database refused fail their own request only: each written alone.
            for submission in unanswered:
                self._write([submission])
        except BaseException as error:  # each request answers its group's error
            _answer_all(group, error)
            if not isinstance(error, Exception):
                raise
        else:
            for submission, job in zip(admitted, jobs, strict=True):
                submission.done.set_result(job)

    def _checked(
        self, session: Session, group: list[_Submission]
    ) -> list[tuple[_Submission, tuple[dict[str, Any], list[str]]]]:
        """The submissions of ``group`` that pass their checks and keep their tenant within
        its limit of active jobs, counted with the group's earlier ones, each with its job's
        row (``jobs.submitted_row``); the others answer their refusal. A database error fails
        the group (raised)."""
        datasets = session.scalars(_DATASETS, {"ids": list({s.body.dataset_id for s in group})})
        of_id = {dataset.id: dataset for dataset in datasets}
        tenants = list({s.tenant_id for s in group})
        counted = session.execute(_ACTIVE_BY_TENANT, {"tenants": tenants})
        active = {tenant_id: count for tenant_id, count in counted}
        admitted = []
        for submission in group:
            tenant_id, body = submission.tenant_id, submission.body
            dataset = of_id.get(body.dataset_id)
            try:
                row = submitted_row(
                    session, tenant_id, self._settings, body,
                    dataset if dataset is not None and dataset.tenant_id == tenant_id else None,
                )  # fmt: skip
                refuse_over_limit(active.get(tenant_id, 0), self._settings, 1)
            except SQLAlchemyError:
                raise
            except Exception as refusal:  # answered as the route would have answered it
                submission.done.set_exception(refusal)
                continue
            active[tenant_id] = active.get(tenant_id, 0) + 1
            admitted.append((submission, row))
        return admitted


def _answer_all(group: list[_Submission], error: BaseException) -> None:
    for submission in group:
        if not submission.done.done():  # not refused by its check before the error
            submission.done.set_exception(error)
