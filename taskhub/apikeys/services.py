from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import Case, F, Value, When
from django.utils import timezone

from taskhub.apikeys.models import ALL_SCOPES, DEFAULT_POOL, POOL_PATTERN, ApiKey
from taskhub.apikeys.tokens import digest, new_api_key
from taskhub.base.errors import InvalidInput

LAST_USED_RESOLUTION = timedelta(seconds=60)


def parse_scopes(raw: str | Iterable[str]) -> list[str]:
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    scopes = sorted({s.strip() for s in items if s.strip()})
    unknown = [s for s in scopes if s not in ALL_SCOPES]
    if unknown:
        raise InvalidInput("scopes", f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(ALL_SCOPES)}")
    if not scopes:
        raise InvalidInput("scopes", "at least one scope is required")
    return scopes


def parse_pool(raw: str | None) -> str:
    pool = (raw or DEFAULT_POOL).strip()
    if not re.match(POOL_PATTERN, pool):
        raise InvalidInput("pool", "must be 1-64 letters, digits and _ . : -")
    return pool


@transaction.atomic
def api_key_create(
    *, name: str, scopes: str | Iterable[str], created_by: Any = None, pool: str | None = None
) -> tuple[ApiKey, str]:
    """Create a key; returns (row, plaintext key). The plaintext is never stored. `pool`: its
    execution pool (default: the one pool of a single-tenant hub)."""
    name = name.strip()
    if not name or len(name) > 100:
        raise InvalidInput("name", "must be 1-100 characters")
    if ApiKey.objects.filter(name=name).exists():
        raise InvalidInput("name", f"an API key named {name!r} already exists")
    secret = new_api_key()
    key = ApiKey.objects.create(
        name=name,
        prefix=secret[:12],
        key_hash=digest(secret),
        scopes=parse_scopes(scopes),
        created_by=created_by,
        pool=parse_pool(pool),
    )
    return key, secret


def charge_log_entries(key_id: int, count: int, quota: int) -> bool:
    """Count `count` more log lines against the key, unless that passes `quota`: one guarded
    UPDATE of the key row (its lock, held to the commit, makes concurrent charges exact).
    False: refused, nothing changed."""
    if count <= 0:
        return True
    return bool(
        ApiKey.objects.filter(pk=key_id, log_entries__lte=quota - count).update(log_entries=F("log_entries") + count)
    )


def refund_log_entries(counts: dict[int, int]) -> None:
    """Log lines deleted (retention, a deleted task): no longer counted against their keys."""
    for key_id, count in counts.items():
        if count > 0:
            ApiKey.objects.filter(pk=key_id).update(
                log_entries=Case(When(log_entries__gte=count, then=F("log_entries") - count), default=Value(0))
            )


def api_key_revoke(key: ApiKey) -> None:
    ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())


def api_key_touch(key: ApiKey) -> None:
    """Record use, at most once a minute per key (no write on every request)."""
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
