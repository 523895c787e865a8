"""Heavy requests: dataset upload and generation, cfg upload, comparison plots. Their CPU and
disk work runs in a few threads of its own and holds no database turn, and each tenant has a
few at once.

A light request (``GET /v1/jobs``) needs a database turn (``api.deps.DB_SESSIONS``) and a
thread of FastAPI's pool; when heavy work held them, four renders of one tenant made another
tenant's one-row listing wait 77 s (issue 17, class 9).
"""

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import anyio.to_thread
from anyio import CapacityLimiter

# Heavy work in flight per API process: on a 2-core machine more only contend for the GIL
# and the disk, and the rest of FastAPI's thread pool stays free for light requests.
HEAVY_THREADS = 2
# Seconds a refused heavy request is told to wait: about one small render or upload.
RETRY_AFTER_S = 5

T = TypeVar("T")


class TenantBusy(Exception):
    """The tenant already has its limit of heavy requests running in this process."""


class HeavyWork:
    """Per-tenant slots for heavy requests and the threads their work runs in."""

    def __init__(self, per_tenant: int, threads: int = HEAVY_THREADS) -> None:
        self.per_tenant = per_tenant
        # Touched only by the event loop (the dependency taking a slot is async), so no lock.
        self._running: Counter[int] = Counter()
        self._threads = CapacityLimiter(threads)

    @contextmanager
    def slot(self, tenant_id: int) -> Iterator[None]:
        """Hold one of the tenant's slots; TenantBusy when all are taken."""
        if self._running[tenant_id] >= self.per_tenant:
            raise TenantBusy
        self._running[tenant_id] += 1
        try:
            yield
        finally:
            self._running[tenant_id] -= 1
            if not self._running[tenant_id]:
                del self._running[tenant_id]

    async def run(self, work: Callable[[], T]) -> T:
        """``work()`` in one of the heavy threads, waiting for one to be free."""
        return await anyio.to_thread.run_sync(work, limiter=self._threads)
