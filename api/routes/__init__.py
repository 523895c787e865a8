"""The HTTP edge: a router per resource, each route parsing a request, calling a service
(``api.services``) and returning a schema (``api.schemas``); and the one place a service's
refusal becomes an HTTP status."""

from fastapi import Request, status
from fastapi.responses import JSONResponse

from api.services.errors import (
    Conflict,
    Invalid,
    NotFound,
    OverLimit,
    ServiceError,
    Unavailable,
)

SERVICE_ERROR_STATUS: dict[type[ServiceError], int] = {
    NotFound: status.HTTP_404_NOT_FOUND,
    Conflict: status.HTTP_409_CONFLICT,
    Invalid: status.HTTP_422_UNPROCESSABLE_CONTENT,
    OverLimit: status.HTTP_429_TOO_MANY_REQUESTS,
    Unavailable: status.HTTP_503_SERVICE_UNAVAILABLE,
}


async def service_error_response(request: Request, error: Exception) -> JSONResponse:
    """The answer to a ``ServiceError`` of any kind (the app's handler for the class)."""
    assert isinstance(error, ServiceError)
    code = next(SERVICE_ERROR_STATUS[k] for k in type(error).__mro__ if k in SERVICE_ERROR_STATUS)
    return JSONResponse({"detail": error.detail}, status_code=code)
