"""API keys: random secrets shown once, stored as SHA-256 hashes, checked in constant time;
listed and revoked by the operator (``aetrain keys``)."""

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from api.cache import MemoryCache
from api.core.db import ApiKey, Tenant
from api.core.db.models import utcnow

KEY_PREFIX = "aet_"
# The first characters of a key, stored in clear so a lookup needs no full-table scan.
LOOKUP_CHARS = 12


@dataclass(frozen=True)
class IssuedKey:
    tenant_id: int
    key: str


def hash_key(key: str) -> str:
    # Keys carry 256 random bits, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(key.encode()).hexdigest()


def create_tenant_with_key(session: Session, name: str) -> IssuedKey:
    """A new tenant (or the existing one of that name) and a fresh key for it."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(tenant_id=tenant.id, prefix=key[:LOOKUP_CHARS], key_hash=hash_key(key)))
    session.commit()
    return IssuedKey(tenant.id, key)


def tenant_for_key(session: Session, key: str) -> int | None:
    """The tenant id owning ``key``, or None; the hash comparison takes constant time."""
    if not key.startswith(KEY_PREFIX):
        return None
    digest = hash_key(key)
    candidates = session.scalars(
        select(ApiKey).where(ApiKey.prefix == key[:LOOKUP_CHARS], ApiKey.revoked_at.is_(None))
    ).all()
    found = None
    for candidate in candidates:
        if hmac.compare_digest(candidate.key_hash, digest):
            found = candidate.tenant_id
    return found


def list_keys(session: Session, tenant: str | None = None) -> list[ApiKey]:
    """Every key (of tenant ``tenant`` only, when given) with its tenant loaded, oldest first."""
    query = select(ApiKey).options(joinedload(ApiKey.tenant)).order_by(ApiKey.id)
    if tenant is not None:
        query = query.join(Tenant).where(Tenant.name == tenant)
    return list(session.scalars(query))


def revoke_key(session: Session, prefix_or_id: str) -> ApiKey:
    """Revoke the one key whose id, or whose start (a prefix ``aetrain keys list`` shows, or
    the whole key), is ``prefix_or_id``; a key already revoked stays as it was. LookupError
    saying what to give instead when no key, or more than one, matches. API processes stop
    accepting it within ``AETRAIN_KEY_CACHE_S``."""
    query = select(ApiKey).options(joinedload(ApiKey.tenant))
    if prefix_or_id.isascii() and prefix_or_id.isdigit():
        query = query.where(ApiKey.id == int(prefix_or_id))
    elif prefix_or_id.startswith(KEY_PREFIX) and len(prefix_or_id) > LOOKUP_CHARS:
        query = query.where(ApiKey.key_hash == hash_key(prefix_or_id))  # the whole key
    elif prefix_or_id.startswith(KEY_PREFIX):
        query = query.where(ApiKey.prefix.startswith(prefix_or_id, autoescape=True))
    else:
        raise LookupError(
            f"{prefix_or_id!r} is neither a key id nor the start of a key ({KEY_PREFIX}...); "
            "see aetrain keys list"
        )
    found = session.scalars(query).all()
    if len(found) != 1:
        raise LookupError(
            f"{len(found)} keys match {prefix_or_id!r}; give one key's id or more of its "
            "characters (see aetrain keys list)"
        )
    key = found[0]
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.commit()
    return key


class VerifiedKeys:
    """Keys this API process found valid in the last ``ttl_s`` seconds, by their SHA-256
    digest (never the key itself), so a client polling many times a second costs one database
    lookup per ``ttl_s``. A key revoked in the database stops working within ``ttl_s``.
    Unknown keys are not kept: each of their tries is looked up. Thread-safe."""

    def __init__(self, ttl_s: float, max_keys: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self._tenants: MemoryCache[str, int] = MemoryCache(max_keys, lambda _: 1)

    def get(self, digest: str) -> int | None:
        return self._tenants.get(digest)

    def put(self, digest: str, tenant_id: int) -> None:
        if self.ttl_s > 0:
            self._tenants.put(digest, tenant_id, ttl_s=self.ttl_s)
