"""Response bodies that can no longer change, kept in memory up to a size in bytes.

A finished job's metric history is final, and so are a running job's steps before its latest
checkpoint; dashboards and comparisons fetch the same pages of them again and again, and each
API process builds such a page once (``api.routes.jobs``). With ``AETRAIN_LIVE_PAGE_S``
set, the newest page of a running job is kept for that moment only.
"""

import threading
import time
from collections import OrderedDict
from collections.abc import Hashable


class BodyCache:
    """Least recently used bodies by key, at most ``max_bytes`` in all; a body may be kept for
    a while only (``ttl_s``). Thread-safe: sync routes run in FastAPI's thread pool."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        # key -> (body, monotonic time it expires at, or None: kept until dropped for room)
        self._bodies: OrderedDict[Hashable, tuple[bytes, float | None]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> bytes | None:
        with self._lock:
            kept = self._bodies.get(key)
            if kept is None:
                return None
            body, expires = kept
            if expires is not None and time.monotonic() >= expires:
                del self._bodies[key]
                self.size -= len(body)
                return None
            self._bodies.move_to_end(key)
            return body

    def put(self, key: Hashable, body: bytes, ttl_s: float | None = None) -> None:
        """Keep ``body`` (for ``ttl_s`` seconds at most, when given), dropping the least
        recently used bodies to make room; a body larger than the whole cache is not kept."""
        if len(body) > self.max_bytes:
            return
        expires = None if ttl_s is None else time.monotonic() + ttl_s
        with self._lock:
            old = self._bodies.pop(key, None)
            if old is not None:
                self.size -= len(old[0])
            while self._bodies and self.size + len(body) > self.max_bytes:
                _, (dropped, _) = self._bodies.popitem(last=False)
                self.size -= len(dropped)
            self._bodies[key] = (body, expires)
            self.size += len(body)
