from __future__ import annotations

from typing import Any

from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle

from taskhub.api.principals import Principal


class PrincipalRateThrottle(SimpleRateThrottle):
    """One bucket per API key, per unit, or per client IP; rates per kind from settings.
    Counters live in the cache (Redis in production); if Redis is down, throttling degrades open."""

    scope = "client"

    def allow_request(self, request: Request, view: Any) -> bool:
        principal = request.user
        kind = "anon"
        if isinstance(principal, Principal):
            kind = "unit" if principal.is_unit else "client"
        self.scope = kind
        self.rate = self.get_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return super().allow_request(request, view)

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        principal = request.user
        ident = principal.throttle_ident if isinstance(principal, Principal) else self.get_ident(request)
        return f"throttle:{self.scope}:{ident}"
