"""The tenant's webhook signing secret and its deliveries (docs/webhooks.md)."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from api.schemas.common import UtcDatetime


class WebhookSecretPublic(BaseModel):
    """The key every webhook body of the tenant is signed with (HMAC-SHA256)."""

    model_config = ConfigDict(from_attributes=True)

    secret: str = Field(description="Hex; verify X-Aetrain-Signature with it.")
    created_at: UtcDatetime = Field(description="When it was made or last rotated.")


class WebhookDeliveryPublic(BaseModel):
    """One webhook call and where it stands."""

    model_config = ConfigDict(from_attributes=True)

    id: int = Field(description="Also the body's id and the X-Aetrain-Delivery header.")
    event: str = Field(description="job.queued, job.running, ..., comparison.finished.")
    url: str
    job_id: int | None
    comparison_id: int | None
    state: str = Field(
        description="pending (to send, or retried after a failed attempt), delivered (the "
        "receiver answered 2xx) or failed (every attempt failed)."
    )
    attempts: int = Field(description="Attempts made so far.")
    next_attempt_at: UtcDatetime | None = Field(description="While pending: when it is sent.")
    last_status_code: int | None = Field(description="The last attempt's HTTP status.")
    last_error: str | None = Field(description="Why the last attempt failed, if it did.")
    payload: dict[str, Any] = Field(description="The body sent, less its id.")
    created_at: UtcDatetime
    delivered_at: UtcDatetime | None
