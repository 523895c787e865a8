"""The Celery application, configured for long GPU training jobs.

The worker's parent process never imports torch (tasks import it inside their bodies), so each
child process, forked per task, is the first to touch CUDA.
"""

from celery import Celery
from kombu.exceptions import ChannelError

from api.core.settings import Settings, get_settings

DEFAULT_QUEUE = "cpu"
TRAIN_TASK = "aetrain.train_job"


def send_train_task(celery: Celery, job_id: int, queue: str) -> None:
    """Deliver job ``job_id`` to the workers of ``queue``, by task name (no torch import)."""
    celery.send_task(TRAIN_TASK, args=[job_id], queue=queue)


def waiting_tasks(celery: Celery, queue: str) -> int:
    """Messages waiting in ``queue`` on the broker, not counting those a worker has taken."""
    with celery.connection_for_read() as connection:
        try:
            declared = connection.default_channel.queue_declare(queue=queue, passive=True)
        except ChannelError:  # Redis keeps no empty queue: it does not exist
            return 0
        return int(declared.message_count)


def create_celery(settings: Settings | None = None) -> Celery:
    """A Celery app for ``settings`` (the environment's when ``None``)."""
    settings = settings or get_settings()
    transport_options: dict[str, object] = {"visibility_timeout": settings.visibility_timeout_s}
    if settings.embedded_broker:
        # kombu's filesystem transport: producers and consumers share one folder, no server.
        folder = settings.broker_dir
        for name in ("queue", "processed", "control"):
            (folder / name).mkdir(parents=True, exist_ok=True)
        transport_options.update(
            data_folder_in=str(folder / "queue"),
            data_folder_out=str(folder / "queue"),
            processed_folder=str(folder / "processed"),
            # Broadcast (control) messages too: the default is a "control" folder in the cwd.
            control_folder=str(folder / "control"),
            store_processed=False,
        )
    app = Celery("aetrain", broker=settings.resolved_broker_url(), include=["worker.tasks"])
    app.conf.update(
        result_backend=settings.result_backend,
        task_ignore_result=settings.result_backend is None,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_default_queue=DEFAULT_QUEUE,
        # One long job at a time per process; acks after the job so a crash re-delivers it
        # (the job row's conditional claim stops a duplicate from training twice).
        worker_prefetch_multiplier=1,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_max_tasks_per_child=1,
        broker_transport_options=transport_options,
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        visibility_timeout=settings.visibility_timeout_s,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


app = create_celery()
