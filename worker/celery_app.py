"""The worker's Celery app: the configuration of ``api.core.broker``, plus the task modules.

Built on first use, not at import: ``celery -A worker.celery_app`` looks up the attribute
``app``, which this module's ``__getattr__`` builds from the environment's settings. The
worker's parent process never imports torch (tasks import it inside their bodies), so each
child process, forked per task, is the first to touch CUDA.
"""

from functools import cache

from celery import Celery

from api.core.broker import create_celery
from api.core.settings import Settings, get_settings

TASK_MODULES = ["worker.tasks"]


def create_worker_app(settings: Settings | None = None) -> Celery:
    """The worker's app for ``settings`` (the environment's when ``None``), with its tasks."""
    return create_celery(settings or get_settings(), include=TASK_MODULES)


@cache
def _app() -> Celery:
    return create_worker_app()


def __getattr__(name: str) -> Celery:
    # PEP 562: `app` exists once something asks for it (Celery's -A), built once per process.
    if name == "app":
        return _app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
