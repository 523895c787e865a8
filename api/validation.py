"""Request input no route can use, refused at the edge for every route: bodies over their size
limit (413), and values JSON, UTF-8 or PostgreSQL cannot carry back or store (422): NUL
characters, lone UTF-16 surrogates, non-finite numbers and integers beyond 64 bits.

:class:`RequestGuard` is the one place these are checked, before FastAPI parses or validates
anything, so a refusal never echoes the input and no route needs its own check.
"""

import math
import re
from collections.abc import Iterator
from json import loads
from typing import Any
from urllib.parse import parse_qsl

from fastapi import HTTPException, status
from fastapi.params import Form
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.core.settings import Settings

# What no text field can hold: NUL (PostgreSQL text refuses it) and lone surrogates (not
# Unicode: UTF-8 cannot encode them, so neither the database nor a JSON answer can).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
INT64 = range(-(2**63), 2**63)


def problem(loc: list[str | int], kind: str, msg: str) -> dict[str, Any]:
    """One entry of a 422's ``detail`` list, in FastAPI's shape."""
    return {"type": kind, "loc": loc, "msg": msg}


def text_problem(loc: list[str | int], text: str) -> dict[str, Any] | None:
    """Why ``text`` cannot be stored (NUL or a lone surrogate), or None."""
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return problem(loc, "string_nul", "contains a NUL character (\\u0000); remove it")
    return problem(
        loc, "string_unicode",
        "contains a lone UTF-16 surrogate (a \\ud800-\\udfff escape without its pair), "
        "which is not Unicode; send the character itself or a complete surrogate pair",
    )  # fmt: skip


def _number_problem(loc: list[str | int], value: float | int) -> dict[str, Any] | None:
    if isinstance(value, float) and not math.isfinite(value):
        return problem(
            loc, "finite_number",
            "NaN, Infinity and numbers beyond 1.8e308 are not finite 64-bit numbers; send a "
            "finite number",
        )  # fmt: skip
    if isinstance(value, int) and not isinstance(value, bool) and value not in INT64:
        return problem(
            loc, "int_too_large",
            "integer outside the 64-bit range -2**63..2**63-1; no field takes one that large",
        )  # fmt: skip
    return None


def _walk(document: Any) -> Iterator[dict[str, Any]]:
    # Iterative: a body may nest as deeply as the JSON parser allows.
    stack: list[tuple[Any, list[str | int]]] = [(document, ["body"])]
    while stack:
        value, loc = stack.pop()
        if isinstance(value, str):
            found = text_problem(loc, value)
        elif isinstance(value, dict):
            bad_keys = [p for k in value if (p := text_problem(loc, k))]
            yield from bad_keys
            found = None
            # Below a bad key, a problem's loc would quote it: one problem per key is enough.
            stack.extend((v, [*loc, k]) for k, v in value.items() if not _UNSTORABLE.search(k))
        elif isinstance(value, list):
            found = None
            stack.extend((v, [*loc, i]) for i, v in enumerate(value))
        else:
            found = _number_problem(loc, value)
        if found is not None:
            yield found


def json_body_problems(body: bytes) -> list[dict[str, Any]]:
    """What in a JSON body (``body``) cannot be stored or answered, each with its ``loc``;
    empty for a body that is fine, and for one that is not JSON (FastAPI answers that)."""
    try:
        document = loads(body)
    except (ValueError, RecursionError):
        return []
    return list(_walk(document))


def _url_problems(scope: Scope) -> list[dict[str, Any]]:
    problems = []
    if found := text_problem(["path"], scope["path"]):
        problems.append(found)
    for name, value in parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True):
        loc: list[str | int] = ["query", name] if text_problem([], name) is None else ["query"]
        if found := text_problem(loc, name + value):
            problems.append(found)
    return problems


def _takes_form(route: object) -> bool:
    """Whether ``route`` reads a form (a multipart upload) rather than a JSON body, by the
    test FastAPI parses bodies by."""
    return isinstance(route, APIRoute) and isinstance(
        getattr(route.body_field, "field_info", None), Form
    )


def _too_large(limit: int, upload: bool) -> HTTPException:
    if upload:
        return HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"the request body is larger than the upload limit of {limit} bytes; upload a "
            "smaller zip (drop unused images, or re-encode them as JPEG)",
        )
    return HTTPException(
        status.HTTP_413_CONTENT_TOO_LARGE,
        f"the request body is larger than the limit of {limit} bytes for a request that is not "
        "an upload (AETRAIN_MAX_JSON_BYTES); send a smaller body",
    )


def _is_json(headers: Headers) -> bool:
    # The content types FastAPI parses as JSON.
    media = headers.get("content-type", "").split(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class _GuardedBody:
    """A ``receive`` that counts the body against its route's limit and, for JSON, checks
    the whole body before handing over its last part. The limit is chosen at the first read,
    once routing has found the route: uploads ``max_upload_bytes``, any other body
    ``max_json_bytes``."""

    def __init__(self, scope: Scope, receive: Receive, settings: Settings) -> None:
        self.scope = scope
        self.receive = receive
        self.settings = settings
        self.limit: int | None = None
        self.upload = False
        self.received = 0
        self.json_parts: list[bytes] | None = None

    def _start(self) -> int:
        self.upload = _takes_form(self.scope.get("route"))
        limit = self.settings.max_upload_bytes if self.upload else self.settings.max_json_bytes
        headers = Headers(scope=self.scope)
        declared = headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > limit:
            raise _too_large(limit, self.upload)
        self.json_parts = [] if _is_json(headers) else None
        return limit

    async def __call__(self) -> Message:
        if self.limit is None:
            self.limit = self._start()
        message = await self.receive()
        if message["type"] != "http.request":
            return message
        part = message.get("body", b"")
        self.received += len(part)
        if self.received > self.limit:
            raise _too_large(self.limit, self.upload)
        if self.json_parts is not None:
            self.json_parts.append(part)
            if not message.get("more_body", False):
                problems = json_body_problems(b"".join(self.json_parts))
                self.json_parts = None
                if problems:
                    raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, problems)
        return message


class RequestGuard:
    """ASGI middleware refusing what no route can use (see the module): NUL in the path or
    query at once, bodies while they are read (the ``HTTPException`` raised from ``receive``
    is answered by the app's handler)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problems = _url_problems(scope)
        if problems:
            refusal = JSONResponse({"detail": problems}, status.HTTP_422_UNPROCESSABLE_CONTENT)
            await refusal(scope, receive, send)
            return
        await self.app(scope, _GuardedBody(scope, receive, self.settings), send)
