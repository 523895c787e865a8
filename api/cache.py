"""Values kept in memory by an API process, the least recently used dropped first to stay
within a size, some for a while only.

- ``BodyCache``: response bodies, bounded in bytes. A finished job's metric history is final,
  and so are most of a running job's steps (``api.metric_pages``); dashboards and comparisons
  fetch the same pages of them again and again, and each API process builds such a page once.
  With ``AETRAIN_LIVE_PAGE_S`` set, the newest page of a running job is
  kept for that moment only.
- ``api.auth.VerifiedKeys``: API keys verified a moment ago, bounded in count.
"""

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class MemoryCache(Generic[K, V]):
    """Least recently used values by key, their sizes (``size_of``) at most ``max_size`` in
    all; a value may be kept for a while only (``ttl_s``). Thread-safe: sync routes run in
    FastAPI's thread pool."""

    def __init__(self, max_size: int, size_of: Callable[[V], int]) -> None:
        self.max_size = max_size
        self.size_of = size_of
        self.size = 0
        # key -> (value, monotonic time it expires at, or None: kept until dropped for room)
        self._values: OrderedDict[K, tuple[V, float | None]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            kept = self._values.get(key)
            if kept is None:
                return None
            value, expires = kept
            if expires is not None and time.monotonic() >= expires:
                del self._values[key]
                self.size -= self.size_of(value)
                return None
            self._values.move_to_end(key)
            return value

    def put(self, key: K, value: V, ttl_s: float | None = None) -> None:
        """Keep ``value`` (for ``ttl_s`` seconds at most, when given), dropping the least
        recently used values to make room; a value larger than the whole cache is not kept."""
        size = self.size_of(value)
        if size > self.max_size:
            return
        expires = None if ttl_s is None else time.monotonic() + ttl_s
        with self._lock:
            old = self._values.pop(key, None)
            if old is not None:
                self.size -= self.size_of(old[0])
            while self._values and self.size + size > self.max_size:
                _, (dropped, _) = self._values.popitem(last=False)
                self.size -= self.size_of(dropped)
            self._values[key] = (value, expires)
            self.size += size

    def drop(self, match: Callable[[K], bool]) -> None:
        """Forget every value whose key ``match``es (a deleted resource's)."""
        with self._lock:
            for key in [key for key in self._values if match(key)]:
                value, _ = self._values.pop(key)
                self.size -= self.size_of(value)


class BodyCache(MemoryCache[Hashable, bytes]):
    """Response bodies, at most ``max_bytes`` in all."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes, len)
