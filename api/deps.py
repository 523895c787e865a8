"""Shared request dependencies: the database session, the caller's tenant, and the slots and
threads of heavy requests (``api.heavy``)."""

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

import anyio
from fastapi import Depends, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from api.auth import VerifiedKeys, hash_key, tenant_for_key
from api.core.settings import Settings
from api.heavy import HEAVY_THREADS, RETRY_AFTER_S, HeavyWork, TenantBusy

bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer aet_...`")


# The dependencies that only read app.state are coroutines: FastAPI runs a plain function
# dependency in its thread pool, a thread hop per request (about a tenth of a submission's
# CPU) for an attribute read.
async def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_session(request: Request) -> AsyncIterator[Session]:
    factory: sessionmaker[Session] = request.app.state.session_factory
    session = factory()  # no connection until its first query
    try:
        yield session
    finally:
        # Closing does I/O (a rollback, the connection back to the pool) only when a
        # transaction is open; a request answered from memory closes here, without a thread.
        if session.in_transaction():
            await run_in_threadpool(session.close)
        else:
            session.close()


# Requests holding a database session at once, per API process; each may hold one pooled
# connection until its route has returned. Further requests wait for a turn in the event loop,
# not in a worker thread. Without the limit, threads blocked on an exhausted connection pool
# filled FastAPI's thread pool while the requests holding the connections waited for a thread
# to finish in, and under load requests stalled until the pool's 30 s timeout answered 500
# (bench/bench_api_load.py with 200 clients).
# Four: route code is CPU-bound Python, so more threads at once than that only contend for
# the GIL (with 10, a 2-core machine served 11% fewer uncached pages per second).
DB_SESSIONS = 4
# SSE streams poll the database with short sessions of their own, this many at once.
STREAM_POLLS = 4
# Submissions look a key not remembered up with a short session in a thread, this many at
# once per API process; their jobs are checked and stored by the job writer
# (api.services.job_writer), which they wait for holding neither.
SUBMIT_TURNS = 4
# Metric pages not kept are built on a connection of their own in a thread, this many at once
# per API process (api.metric_pages.metrics_page).
PAGE_TURNS = 4
# What the pool must hold so no checkout waits: request sessions, stream polls, heavy
# requests' short sessions (api.heavy), submissions' key lookups, metric pages, the job writer,
# the reaper, the webhook dispatcher (api.webhooks).
POOL_SIZE = DB_SESSIONS + STREAM_POLLS + HEAVY_THREADS + SUBMIT_TURNS + PAGE_TURNS + 3

SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
# Closed when the route returns, before the response is sent: a streamed response (SSE, a
# checkpoint download) holds no connection and no turn while it streams. Opening it and
# checking a remembered key take no worker thread, so a request answered from memory (a kept
# metrics page) runs on the event loop alone.
SessionDep = Annotated[Session, Depends(get_session, scope="function", max_concurrency=DB_SESSIONS)]


async def get_sessions(request: Request) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = request.app.state.session_factory
    return factory


# For heavy routes: short sessions opened around the database steps only, so the CPU and disk
# work between them holds no connection and no turn (api.heavy).
SessionsDep = Annotated[sessionmaker[Session], Depends(get_sessions)]
CredentialsDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def _short_lookup(factory: sessionmaker[Session], key: str) -> int | None:
    with factory() as session:
        return tenant_for_key(session, key)


def _short_tenant(turns: str) -> Callable[[Request, CredentialsDep], Awaitable[int]]:
    """A dependency: the caller's tenant for a route that opens short sessions of its own, a
    key not remembered being looked up in a short read-only session in one of the turns
    ``app.state.<turns>``."""

    async def caller(request: Request, credentials: CredentialsDep) -> int:
        state = request.app.state
        return await _tenant_id(
            request,
            credentials,
            lambda key: _short_lookup(state.read_sessions, key),
            limiter=getattr(state, turns),
        )

    return caller


async def get_tenant_id(request: Request, session: SessionDep, credentials: CredentialsDep) -> int:
    return await _tenant_id(request, credentials, lambda key: tenant_for_key(session, key))


async def _tenant_id(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None,
    lookup: Callable[[str], int | None],
    limiter: anyio.CapacityLimiter | None = None,
) -> int:
    """The tenant of the request's key: remembered, or ``lookup(key)`` in a thread (holding
    one of ``limiter``'s tokens)."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing API key: send `Authorization: Bearer <key>` (create one with "
            "`aetrain keys create`)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    verified: VerifiedKeys = request.app.state.verified_keys
    digest = hash_key(credentials.credentials)
    tenant_id = verified.get(digest)
    if tenant_id is None:
        tenant_id = await anyio.to_thread.run_sync(lookup, credentials.credentials, limiter=limiter)
        if tenant_id is not None:
            verified.put(digest, tenant_id)
    if tenant_id is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "unknown or revoked API key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return tenant_id


TenantDep = Annotated[int, Depends(get_tenant_id)]
# A submission's tenant (SUBMIT_TURNS) and a metric page reader's (PAGE_TURNS).
SubmitterDep = Annotated[int, Depends(_short_tenant("submit_turns"))]
PageReaderDep = Annotated[int, Depends(_short_tenant("page_turns"))]


async def get_heavy_tenant(
    request: Request, sessions: SessionsDep, credentials: CredentialsDep
) -> AsyncIterator[int]:
    """The caller's tenant, holding one of its heavy slots until the route returns; 429 with
    ``Retry-After`` while the tenant has AETRAIN_MAX_HEAVY_PER_TENANT heavy requests running."""
    tenant_id = await _tenant_id(request, credentials, lambda key: _short_lookup(sessions, key))
    heavy = await get_heavy(request)
    try:
        with heavy.slot(tenant_id):
            yield tenant_id
    except TenantBusy:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"this tenant already has {heavy.per_tenant} heavy requests (dataset or cfg "
            "uploads, dataset generations, comparison plots) running on this server; wait "
            "for one to finish and retry (the limit is AETRAIN_MAX_HEAVY_PER_TENANT)",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        ) from None


async def get_heavy(request: Request) -> HeavyWork:
    heavy: HeavyWork = request.app.state.heavy
    return heavy


# A heavy route's tenant, and the threads the route runs its work in (``HeavyDep.run``).
HeavyTenantDep = Annotated[int, Depends(get_heavy_tenant, scope="function")]
HeavyDep = Annotated[HeavyWork, Depends(get_heavy)]
