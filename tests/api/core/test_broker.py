"""The file-system broker of the embedded default hands out jobs in the order they were sent."""

from pathlib import Path

from api.core.broker import create_celery, send_train_task
from api.core.settings import Settings


def test_filesystem_broker_delivers_jobs_in_the_order_they_were_sent(tmp_path: Path) -> None:
    # kombu names each message by the millisecond it was sent and then a random uuid, so a
    # burst of sends (a comparison's jobs) is read back shuffled unless each send gets its
    # own millisecond. Read here with kombu's own consumer, as a worker reads the folder.
    celery = create_celery(Settings(home=tmp_path / "home", broker_url=None))
    sent = list(range(1, 31))
    for job_id in sent:
        send_train_task(celery, job_id, "cpu")
    with celery.connection_for_read() as connection:
        queue = connection.SimpleQueue("cpu")
        received = []
        for _ in sent:
            message = queue.get(timeout=5)
            received.append(message.payload[0][0])  # Celery protocol 2: (args, kwargs, embed)
            message.ack()
        queue.close()
    assert received == sent
