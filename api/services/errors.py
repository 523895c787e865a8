"""Why a service refuses a request; ``api.routes.SERVICE_ERROR_STATUS`` gives each reason its
HTTP status.

``detail`` becomes the answer's ``detail``: a message that says what to change, or FastAPI's
list of field errors (``{"loc", "msg", "type"}``), so clients parse one format for every 422.
"""

from typing import Any

Detail = str | list[dict[str, Any]]


class ServiceError(Exception):
    def __init__(self, detail: Detail) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(ServiceError):
    """No such resource of this tenant (another tenant's is private: it does not exist)."""


class Conflict(ServiceError):
    """The resource's state does not allow it (cancelling a job that already ended)."""


class Invalid(ServiceError):
    """The request's content cannot be used; the detail says what to change."""


class OverLimit(ServiceError):
    """The tenant's jobs queued or running would pass their limit."""


class OverQuota(ServiceError):
    """Storing what the request brings would pass the tenant's storage quota."""


class Unavailable(ServiceError):
    """A server the request needs (the task broker) is unreachable; try again."""


def invalid_field(loc: list[str | int], message: str) -> Invalid:
    """Invalid content of the body's field at ``loc``, in FastAPI's shape."""
    return Invalid([{"loc": ["body", *loc], "msg": message, "type": "value_error"}])
