"""The task broker as the API and the worker both see it: one Celery configuration, and the
producer's side (sending a job's task by name, counting the tasks a queue holds).

The producer app imports no task code: tasks are sent by name, so the API never loads the
worker's modules (nor torch). The worker builds its app from the same configuration
(``worker.celery_app``), adding its task modules.
"""

import functools
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from celery import Celery
from kombu.exceptions import ChannelError

from api.core.settings import Settings

DEFAULT_QUEUE = "cpu"
TRAIN_TASK = "aetrain.train_job"


def _broker_folders(settings: Settings) -> dict[str, Path]:
    """kombu's filesystem transport: producers and consumers share these folders, no server."""
    return {name: settings.broker_dir / name for name in ("queue", "processed", "control")}


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration of ``settings`` (``app.conf``), for long GPU jobs."""
    transport_options: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout_s}
    if settings.embedded_broker:
        folders = _broker_folders(settings)
        transport_options.update(
            data_folder_in=str(folders["queue"]),
            data_folder_out=str(folders["queue"]),
            processed_folder=str(folders["processed"]),
            # Broadcast (control) messages too: the default is a "control" folder in the cwd.
            control_folder=str(folders["control"]),
            store_processed=False,
        )
    return {
        "broker_url": settings.resolved_broker_url(),
        "result_backend": settings.result_backend,
        "task_ignore_result": settings.result_backend is None,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_default_queue": DEFAULT_QUEUE,
        # One long job at a time per process; acks after the job so a crash re-delivers it
        # (the job row's conditional claim stops a duplicate from training twice).
        "worker_prefetch_multiplier": 1,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_max_tasks_per_child": 1,
        "broker_transport_options": transport_options,
        "result_backend_transport_options": {"visibility_timeout": settings.visibility_timeout_s},
        "visibility_timeout": settings.visibility_timeout_s,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
    }


def create_celery(settings: Settings, include: Sequence[str] = ()) -> Celery:
    """A Celery app configured by :func:`celery_config`; with the embedded broker, its folders
    are made here. Without ``include`` it is a producer: it sends tasks by name and registers
    none. The worker passes its task modules in ``include``."""
    if settings.embedded_broker:
        for folder in _broker_folders(settings).values():
            folder.mkdir(parents=True, exist_ok=True)
    app = Celery("aetrain", include=list(include))
    app.conf.update(celery_config(settings))
    return app


class _MillisecondTicket:
    """Hands out sends one per millisecond of ``time.monotonic``.

    kombu's filesystem transport names a message ``<monotonic ms>_<uuid4>.<queue>.msg`` and a
    consumer takes the first name in sorted order, so messages sent in the same millisecond
    are taken in the order of their random uuids. Sends from this process that never share a
    millisecond are taken in the order they were sent (a comparison's jobs seed by seed).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1

    @staticmethod
    def _now_ms() -> int:
        return round(time.monotonic() * 1000)  # kombu's own rounding

    def send(self, deliver: Callable[[], object]) -> None:
        """Call ``deliver`` in a later millisecond than the previous send finished in."""
        with self._lock:
            while self._now_ms() <= self._last_ms:
                time.sleep(0.0002)
            deliver()
            self._last_ms = self._now_ms()


_filesystem_sends = _MillisecondTicket()


def send_train_task(celery: Celery, job_id: int, queue: str) -> None:
    """Deliver job ``job_id`` to the workers of ``queue``, by task name."""
    send_train_tasks(celery, [(job_id, queue)])


def send_train_tasks(celery: Celery, jobs: Sequence[tuple[int, str]]) -> None:
    """Deliver each job ``(id, queue)`` to the workers of its queue, by task name. Jobs sent
    one after another are taken by the workers in that order, on the file-system broker too.
    On Redis all go in one round trip (kombu's ``Producer.batch``, a pipeline); an error may
    leave some delivered (a job's claim trains it once, and only while it is queued)."""
    if str(celery.conf.broker_url).startswith("filesystem:"):
        for job_id, queue in jobs:
            _filesystem_sends.send(
                functools.partial(celery.send_task, TRAIN_TASK, args=[job_id], queue=queue)
            )
        return
    # Redis lists are first in, first out
    with celery.producer_or_acquire() as producer, producer.batch():
        for job_id, queue in jobs:
            celery.send_task(TRAIN_TASK, args=[job_id], queue=queue, producer=producer)


def waiting_tasks(celery: Celery, queue: str) -> int:
    """Messages waiting in ``queue`` on the broker, not counting those a worker has taken."""
    with celery.connection_for_read() as connection:
        try:
            declared = connection.default_channel.queue_declare(queue=queue, passive=True)
        except ChannelError:  # Redis keeps no empty queue: it does not exist
            return 0
        return int(declared.message_count)
