"""Health endpoints on django-health-check: JSON, 200 healthy / 503 not. Public."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from health_check.views import HealthCheckView

from taskhub.api.errors import json_error

DATABASE = "health_check.checks.Database"
CACHE = "health_check.checks.Cache"


def _redis_check() -> tuple[str, dict[str, Any]]:
    from redis.asyncio import Redis

    return (
        "health_check.contrib.redis.Redis",
        {"client_factory": lambda: Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=2)},
    )


class JsonHealthView(HealthCheckView):
    component = "app"

    def http_method_not_allowed(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        """405 in the API's JSON error shape (Django's own is an empty text/html page)."""
        response = json_error(405, "method_not_allowed", f"Method {request.method} not allowed on {request.path}")
        response["Allow"] = ", ".join(self._allowed_methods())
        if self.view_is_async:

            async def respond() -> JsonResponse:
                return response

            return respond()
        return response

    async def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
        if not self.checks:
            return JsonResponse(
                {"status": "ok", "component": self.component, "checks": {}, "note": "not configured (embedded mode)"}
            )
        with self.get_executor() as executor:
            import asyncio

            results = await asyncio.gather(*(check.get_result(executor) for check in self.get_checks()))
        failed = any(r.error for r in results)
        body = {
            "status": "error" if failed else "ok",
            "component": self.component,
            "checks": {repr(r.check): ("ok" if not r.error else str(r.error)) for r in results},
        }
        return JsonResponse(body, status=503 if failed else 200)


def app_health() -> Any:
    checks: list[Any] = [DATABASE, CACHE]
    if settings.REDIS_URL:
        checks.append(_redis_check())
    return csrf_exempt(JsonHealthView.as_view(checks=checks, component="app"))


def database_health() -> Any:
    return csrf_exempt(JsonHealthView.as_view(checks=[DATABASE], component="database"))


def redis_health() -> Any:
    checks = [_redis_check()] if settings.REDIS_URL else []
    return csrf_exempt(JsonHealthView.as_view(checks=checks, component="redis"))
