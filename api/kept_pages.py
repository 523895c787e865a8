"""Metric pages answered before routing: ``GET /v1/jobs/{id}/metrics`` asked with a key this
API process verified within ``AETRAIN_KEY_CACHE_S`` (``api.auth.VerifiedKeys``), its query in
plain form, is answered with the route's own :func:`api.metric_pages.metrics_page`: kept in
memory, or built.

A kept page reads nothing from the database, yet FastAPI's routing, dependency solving and
parameter validation took 0.2 ms of CPU for it, four fifths of its cost in the app; for a
running job's page, which is built each time, they were about half of its API CPU
(bench/bench_api_load.py --closed-loop, docs/benchmarks.md). :class:`KeptPages` answers with
the same bytes and headers the route sends, under the same key check and the same page key;
any request it cannot answer exactly so (another path, a key not remembered, a parameter not
in its plain form or out of the route's bounds, a name given twice, a job that is not the
tenant's, a database that fails) goes on to the app unchanged, which answers it as before,
errors included.
"""

import re
from urllib.parse import parse_qsl

from fastapi import HTTPException
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy.exc import SQLAlchemyError
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from api.auth import VerifiedKeys, hash_key
from api.core.db.models import MAX_ROW_ID
from api.metric_pages import (
    DEFAULT_PAGE_ROWS,
    DEFAULT_SINCE_STEP,
    MAX_PAGE_ROWS,
    MIN_PAGE_ROWS,
    MIN_SINCE_STEP,
    PageKey,
    metrics_page,
)

_PAGE_PATH = re.compile(r"/v1/jobs/([1-9][0-9]{0,18})/metrics")
# An integer as str(int) writes it: what the route's validation reads as that same integer.
_PLAIN_INT = re.compile(r"-?(?:0|[1-9][0-9]{0,18})")


def page_key(tenant_id: int, job_id: int, query_string: bytes) -> PageKey | None:
    """The page key the route would look up for this query (``keys``, ``since_step``,
    ``limit``; other names are ignored, as the route ignores them), or None when the query
    is not in the plain form this reads exactly as the route's validation does, or is one
    the route refuses."""
    keys, since_step, limit = None, DEFAULT_SINCE_STEP, DEFAULT_PAGE_ROWS
    seen = set()
    # Decoded as Starlette decodes a query string, so keys= reads the same.
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name in seen:
            return None
        seen.add(name)
        if name == "keys":
            keys = value
        elif name in ("since_step", "limit"):
            if not _PLAIN_INT.fullmatch(value):
                return None
            if name == "since_step":
                since_step = int(value)
            else:
                limit = int(value)
    if not (MIN_SINCE_STEP <= since_step <= MAX_ROW_ID and MIN_PAGE_ROWS <= limit <= MAX_PAGE_ROWS):
        return None
    return tenant_id, job_id, keys, since_step, limit


def remembered_tenant(scope: Scope, verified: VerifiedKeys) -> int | None:
    """The tenant of the request's bearer key if this process verified it within the key
    cache's time, else None (no key, another scheme, or a key to look up)."""
    for name, value in scope["headers"]:
        if name == b"authorization":  # the first, as Starlette's Headers.get takes
            scheme, credentials = get_authorization_scheme_param(value.decode("latin-1"))
            if scheme.lower() != "bearer" or not credentials:
                return None
            return verified.get(hash_key(credentials))
    return None


class KeptPages:
    """ASGI middleware answering metric pages before routing (see the module). Placed inside
    ``api.validation.RequestGuard``, so the URL has passed its checks."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _page_body(scope) if scope["type"] == "http" else None
        if body is None:
            await self.app(scope, receive, send)
            return
        # The response the route returns.
        await Response(body, media_type="application/json")(scope, receive, send)


async def _page_body(scope: Scope) -> bytes | None:
    if scope["method"] != "GET" or scope.get("root_path"):
        return None
    found = _PAGE_PATH.fullmatch(scope["path"])
    if found is None:
        return None
    state = scope["app"].state
    tenant_id = remembered_tenant(scope, state.verified_keys)
    if tenant_id is None:
        return None
    key = page_key(tenant_id, int(found.group(1)), scope["query_string"])
    if key is None:
        return None
    try:
        return await metrics_page(state, key, state.unpinged_reads)
    except (HTTPException, SQLAlchemyError):  # the route answers: its 404, its 503
        return None
