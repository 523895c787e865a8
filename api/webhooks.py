"""Sends the webhook outbox (``api.core.webhooks``): a loop in the API process, beside the
reaper, that claims due deliveries, signs and POSTs them, and records each attempt.

Several API replicas may each run it: a delivery is claimed by a conditional UPDATE of its
attempt count (on PostgreSQL after ``FOR UPDATE SKIP LOCKED``), which pushes its next attempt
past the time a send can take, so one replica sends it; a replica that dies mid-send leaves
it to be sent again once that time has passed (receivers dedupe on ``X-Aetrain-Delivery``).
"""

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import anyio
import httpx
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from ae_model import __version__
from api.core.db.models import WebhookDelivery, utcnow
from api.core.settings import Settings
from api.services.webhooks import tenant_secret

log = logging.getLogger(__name__)

# Calls in flight at once, per API process.
MAX_IN_FLIGHT = 50


@dataclass(frozen=True)
class Outgoing:
    """A claimed delivery, ready to send: ``attempt`` is its number (1 for the first)."""

    id: int
    attempt: int
    url: str
    event: str
    body: bytes
    secret: str


@dataclass(frozen=True)
class Outcome:
    """What one attempt got: the receiver's status code, or why there is none; ``final``:
    not worth another attempt."""

    delivery: Outgoing
    status_code: int | None
    error: str | None
    final: bool = False

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """``v1=`` and the hex HMAC-SHA256 of ``{timestamp}.{body}`` under ``secret``."""
    message = str(timestamp).encode() + b"." + body
    return "v1=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def claim_due(sessions: sessionmaker[Session], settings: Settings, most: int) -> list[Outgoing]:
    """Claim up to ``most`` deliveries whose next attempt is due, each for one attempt: their
    next attempt moves past the time this one may take (a dead sender's claim expires)."""
    now = utcnow()
    lease = now + timedelta(seconds=2 * settings.webhook_timeout_s + 30)
    with sessions() as session:
        due = session.execute(
            select(WebhookDelivery.id, WebhookDelivery.attempts)
            .where(WebhookDelivery.state == "pending", WebhookDelivery.next_attempt_at <= now)
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(most)
            .with_for_update(skip_locked=True)  # PostgreSQL; SQLite writes one at a time
        ).all()
        claimed = [i for i, attempts in due if _claim(session, i, attempts, lease)]
        rows = session.scalars(select(WebhookDelivery).where(WebhookDelivery.id.in_(claimed))).all()
        tenants = {row.tenant_id for row in rows}
        secrets = {tenant: tenant_secret(session, tenant).secret for tenant in tenants}
        session.commit()
        return [
            Outgoing(
                id=row.id, attempt=row.attempts, url=row.url, event=row.event,
                body=_body(row), secret=secrets[row.tenant_id],
            )
            for row in rows
        ]  # fmt: skip


def _claim(session: Session, delivery_id: int, attempts: int, until: datetime) -> bool:
    """Take attempt ``attempts + 1`` of a delivery, unless another sender took it since its
    row was read; its next attempt moves to ``until``."""
    taken = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.attempts == attempts)
        .values(attempts=attempts + 1, next_attempt_at=until)
        .execution_options(synchronize_session=False)
    )
    return bool(taken.rowcount == 1)  # type: ignore[attr-defined]


def _body(row: WebhookDelivery) -> bytes:
    """The JSON body, the same bytes at every attempt; ``id`` lets a receiver dedupe."""
    return json.dumps({"id": row.id, **row.payload}, separators=(",", ":")).encode()


async def send(client: httpx.AsyncClient, delivery: Outgoing, timeout: float) -> Outcome:
    """POST ``delivery``, signed now; an answer not complete within ``timeout`` seconds
    counts as none. The response body is not read."""
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"aetrain/{__version__}",
        "X-Aetrain-Event": delivery.event,
        "X-Aetrain-Delivery": str(delivery.id),
        "X-Aetrain-Timestamp": str(timestamp),
        "X-Aetrain-Signature": signature(delivery.secret, timestamp, delivery.body),
    }
    try:
        async with asyncio.timeout(timeout):
            async with client.stream(
                "POST", delivery.url, content=delivery.body, headers=headers
            ) as response:
                status = response.status_code
    except TimeoutError:
        return Outcome(delivery, None, f"no answer within {timeout:g} s")
    except httpx.HTTPError as error:
        return Outcome(delivery, None, f"{type(error).__name__}: {error}")
    if 300 <= status < 400:
        return Outcome(delivery, status, f"answered {status}; redirects are not followed")
    return Outcome(delivery, status, None if status < 300 else f"answered {status}")


async def private_address(url: str) -> str | None:
    """Why ``url`` may not be called when only public receivers are allowed: the address
    its host resolves to now that is loopback, private, link-local or otherwise not global
    (a tenant must not make the service call its own network), or None. A host that does not
    resolve is left to the attempt, which reports it."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    loop = asyncio.get_running_loop()
    try:
        found = await loop.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except OSError:
        return None
    for *_, sockaddr in found:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])  # no IPv6 zone
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if not address.is_global:
            return (
                f"not sent: {parts.hostname} resolves to {address}, not a public address "
                "(AETRAIN_WEBHOOK_ALLOW_PRIVATE=true allows such receivers)"
            )
    return None


def record(sessions: sessionmaker[Session], settings: Settings, outcome: Outcome) -> None:
    """Store an attempt's outcome: delivered, failed for good after ``webhook_attempts``, or
    due again after ``webhook_backoff_s`` x 4^(attempt - 1)."""
    attempt, now = outcome.delivery.attempt, utcnow()
    values: dict[str, object] = {
        "last_status_code": outcome.status_code, "last_error": outcome.error,
    }  # fmt: skip
    if outcome.delivered:
        values |= {"state": "delivered", "delivered_at": now}
    elif outcome.final or attempt >= settings.webhook_attempts:
        values |= {"state": "failed"}
    else:
        wait = settings.webhook_backoff_s * 4 ** (attempt - 1)
        values |= {"next_attempt_at": now + timedelta(seconds=wait)}
    with sessions() as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == outcome.delivery.id, WebhookDelivery.attempts == attempt)
            .values(**values)
        )
        session.commit()


class Dispatcher:
    """Sends deliveries as they come due, each in a task of its own, so a receiver that hangs
    holds up only its own call (for ``webhook_timeout_s``), up to ``MAX_IN_FLIGHT`` at once.
    Its database work (claims, outcomes) runs in one thread at a time: one pooled connection
    (``api.deps.POOL_SIZE``)."""

    def __init__(
        self, sessions: sessionmaker[Session], settings: Settings, client: httpx.AsyncClient
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.client = client
        self.database = anyio.CapacityLimiter(1)
        self.in_flight: set[asyncio.Task[None]] = set()

    async def claim(self) -> None:
        """Claim the due deliveries there is room for, and start sending each."""
        room = MAX_IN_FLIGHT - len(self.in_flight)
        if room <= 0:
            return
        claimed = await anyio.to_thread.run_sync(
            claim_due, self.sessions, self.settings, room, limiter=self.database
        )
        for delivery in claimed:
            task = asyncio.create_task(self.deliver(delivery))
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)

    async def deliver(self, delivery: Outgoing) -> None:
        refused = None
        if not self.settings.webhook_allow_private:
            refused = await private_address(delivery.url)
        if refused is not None:
            outcome = Outcome(delivery, None, refused, final=True)
        else:
            outcome = await send(self.client, delivery, self.settings.webhook_timeout_s)
        if not outcome.delivered:
            log.info("webhook delivery %s to %s: %s", delivery.id, delivery.url, outcome.error)
        try:
            await anyio.to_thread.run_sync(
                record, self.sessions, self.settings, outcome, limiter=self.database
            )
        except Exception:  # the database down: the claim expires and the call is sent again
            log.exception("webhook delivery %s: its outcome could not be stored", delivery.id)

    async def stop(self) -> None:
        for task in self.in_flight:
            task.cancel()
        await asyncio.gather(*self.in_flight, return_exceptions=True)


async def deliver_forever(sessions: sessionmaker[Session], settings: Settings) -> None:
    """Claim and send due deliveries every ``webhook_interval_s`` until cancelled; errors
    (the database down) are logged and the next round tries again."""
    async with httpx.AsyncClient(follow_redirects=False) as client:
        dispatcher = Dispatcher(sessions, settings, client)
        try:
            while True:
                await asyncio.sleep(settings.webhook_interval_s)
                try:
                    await dispatcher.claim()
                except Exception:
                    log.exception(
                        "claiming webhook deliveries failed; next try in %.0f s",
                        settings.webhook_interval_s,
                    )
        finally:
            await dispatcher.stop()
