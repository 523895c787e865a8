"""Response bodies that can no longer change, kept in memory up to a size in bytes.

A finished job's metric history is final, and so are a running job's steps before its latest
checkpoint; dashboards and comparisons fetch the same pages of them again and again, and each
API process builds such a page once (``api.routes.jobs``).
"""

import threading
from collections import OrderedDict
from collections.abc import Hashable


class BodyCache:
    """Least recently used bodies by key, at most ``max_bytes`` in all. Thread-safe: sync
    routes run in FastAPI's thread pool."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._bodies: OrderedDict[Hashable, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> bytes | None:
        with self._lock:
            body = self._bodies.get(key)
            if body is not None:
                self._bodies.move_to_end(key)
            return body

    def put(self, key: Hashable, body: bytes) -> None:
        """Keep ``body``, dropping the least recently used bodies to make room; a body larger
        than the whole cache is not kept."""
        if len(body) > self.max_bytes:
            return
        with self._lock:
            old = self._bodies.pop(key, None)
            if old is not None:
                self.size -= len(old)
            while self._bodies and self.size + len(body) > self.max_bytes:
                _, dropped = self._bodies.popitem(last=False)
                self.size -= len(dropped)
            self._bodies[key] = body
            self.size += len(body)
