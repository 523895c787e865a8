"""What every resource's schemas share: the page shape of lists, UTC times, names, row ids,
the liveness answer, and the responses documented on many routes."""

from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, Field

T = TypeVar("T")


def _as_utc(value: datetime) -> datetime:
    # Times are stored in UTC; SQLite hands them back without a zone.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
# Documented on every route that needs an API key.
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, unknown or revoked API key."}
}
# Documented on every route with a JSON body.
BAD_JSON: dict[int | str, dict[str, Any]] = {400: {"description": "The body is not valid JSON."}}
# Documented on every heavy route (api.heavy).
TENANT_BUSY: dict[int | str, dict[str, Any]] = {
    429: {
        "description": "The tenant already has AETRAIN_MAX_HEAVY_PER_TENANT heavy requests "
        "(uploads, generations, plots) running; retry after `Retry-After` seconds."
    }
}
# A name a person gave: printable, one line.
NAME_PATTERN = r"^[^\x00-\x1f\x7f]+$"
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=NAME_PATTERN)]


class Page(BaseModel, Generic[T]):
    """One page of a list, the shape of every list the API answers: ``data`` in the list's
    order and ``count``, the total over all pages."""

    data: list[T]
    count: int = Field(ge=0, description="Number of items over all pages.")


class HealthPublic(BaseModel):
    status: str
    version: str
