"""The web dashboard at ``/`` and its files at ``/static/...``, shipped in ``api.dashboard``.

The page is a client of the public ``/v1`` API like any other: it holds no privilege, signs in
with an API key the user gives it, and sends that key as ``Authorization: Bearer``. Not part of
the OpenAPI schema.
"""

from functools import cache

from fastapi import APIRouter, Request, Response
from fastapi.staticfiles import StaticFiles

from api.routes import OneHopRoute

router = APIRouter(route_class=OneHopRoute, include_in_schema=False)

# The page holds an API key: only this origin's scripts may run, and only this origin is
# called. uPlot sizes its elements with inline styles.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


@cache
def _files() -> StaticFiles:
    # Made on first use: importing this module reads no file.
    return StaticFiles(packages=[("api.dashboard", "static")])


@router.api_route("/", methods=["GET", "HEAD"])
async def dashboard(request: Request) -> Response:
    """The dashboard's single page (it routes by the URL's fragment)."""
    page = await _files().get_response("index.html", request.scope)
    page.headers.update(PAGE_HEADERS)
    return page


@router.get("/static/{path:path}")
async def dashboard_file(path: str, request: Request) -> Response:
    """A script, style or vendored file of the dashboard; 404 for anything else."""
    answer = await _files().get_response(path, request.scope)
    answer.headers.update({"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})
    return answer
