from __future__ import annotations

from typing import Any

from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle

from taskhub.api.principals import Principal
from taskhub.env import parse_rate

# Version 1 of these keys held DRF's lists of request timestamps; counters never read them.
COUNTER_VERSION = 2


def is_heartbeat(view: Any) -> bool:
    """The unit heartbeat endpoint: counted in its own bucket (see PrincipalRateThrottle)."""
    return getattr(view, "action", None) == "heartbeat"


class PrincipalRateThrottle(SimpleRateThrottle):
    """One bucket per API key, per unit, or per client IP; rates per kind from settings.
    Counters live in the cache (Redis in production); if Redis is down, throttling degrades open.

    A window counter: the first request of a bucket opens a window of the rate's period (the key's
    expiry), every request increments it, and requests beyond the rate's count within the window
    are refused until it expires (Retry-After: the seconds left). One round trip (INCR) per
    request and a constant-size key, where DRF's sliding window read and rewrote a pickled list of
    up to the rate's count of timestamps (6,000 at 6000/min) on every request.

    Heartbeats have a bucket of their own (`heartbeat`, API_THROTTLE_HEARTBEAT), apart from the
    unit's claims and reports: a unit throttled for its other traffic still heartbeats, so it is
    never failed over for being throttled. That bucket's window is shorter than
    UNIT_HEARTBEAT_TIMEOUT (settings refuse to start otherwise), so even a unit that passes it is
    heard again before the sweeper would take its tasks."""

    scope = "client"

    def allow_request(self, request: Request, view: Any) -> bool:
        principal = request.user
        kind = "anon"
        if isinstance(principal, Principal):
            kind = "unit" if principal.is_unit else "client"
            if principal.is_unit and is_heartbeat(view):
                kind = "heartbeat"
        self.scope = kind
        self.rate = self.get_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)
        if self.rate is None or self.num_requests is None:
            return True
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        count = self._count(self.key)
        if count is None or count <= self.num_requests:  # None: no counter store, degrade open
            return True
        return self.throttle_failure()

    def get_rate(self) -> str | None:
        if self.scope == "heartbeat" and "heartbeat" not in self.THROTTLE_RATES:  # rates set without it
            return self.THROTTLE_RATES.get("unit")
        return super().get_rate()

    def parse_rate(self, rate: str | None) -> tuple[int | None, int | None]:
        return parse_rate(rate)

    def _count(self, key: str) -> int | None:
        try:
            return self.cache.incr(key, version=COUNTER_VERSION)
        except ValueError:  # no window open: this request opens one (or loses the race to open it)
            if self.cache.add(key, 1, self.duration, version=COUNTER_VERSION):
                return 1
            try:
                return self.cache.incr(key, version=COUNTER_VERSION)
            except ValueError:
                return None

    def wait(self) -> float:
        ttl = getattr(self.cache, "ttl", None)  # django-redis has it; other caches: a whole period
        left = ttl(self.key, version=COUNTER_VERSION) if ttl is not None else None
        return float(left) if isinstance(left, int | float) and left > 0 else float(self.duration or 1)

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        principal = request.user
        ident = principal.throttle_ident if isinstance(principal, Principal) else self.get_ident(request)
        return f"throttle:{self.scope}:{ident}"
