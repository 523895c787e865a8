"""Celery tasks. Kept thin: the work lives in ae_model and the database helpers.

Shared tasks: they register with the app that imports this module (the worker's, by its
``include``), so importing it builds no app.
"""

import os
import socket
import sys
from typing import Any

from celery import shared_task

from api.core.broker import TRAIN_TASK
from api.core.db import make_engine, make_session_factory
from api.core.settings import get_settings


@shared_task(name="aetrain.ping")
def ping() -> dict[str, Any]:
    """Round trip through the broker; says which process answered and whether torch is loaded."""
    return {"pong": True, "pid": os.getpid(), "torch_imported": "torch" in sys.modules}


@shared_task(name=TRAIN_TASK, acks_late=True, reject_on_worker_lost=True)
def train_job(job_id: int) -> None:
    """Train job ``job_id``; a duplicate delivery of a job already claimed does nothing."""
    # Imported here, in the child process, so the worker's parent never loads torch or CUDA.
    from worker.training import run_job

    settings = get_settings()
    engine = make_engine(settings.resolved_database_url())
    try:
        worker = f"{socket.gethostname()}:{os.getpid()}"
        run_job(job_id, make_session_factory(engine), settings, worker)
    finally:
        engine.dispose()
