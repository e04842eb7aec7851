"""drf-spectacular: every operation documents the error shape for the statuses it can return."""

from __future__ import annotations

from typing import Any, Literal

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema as BaseAutoSchema

from taskhub.api.errors import ErrorSerializer


class AutoSchema(BaseAutoSchema):
    def _get_response_bodies(self, direction: Literal["request", "response"] = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        codes = ["400", "401", "403", "429"]
        if self.method in ("POST", "PUT", "PATCH"):
            codes.append("413")
        if "{" in self.path or self.method in ("PUT", "PATCH", "DELETE"):
            codes.append("404")
        if self.method in ("POST", "PUT", "PATCH", "DELETE"):
            codes.append("409")
        if getattr(self.view, "public", False):
            codes = [c for c in codes if c not in ("401", "403")]
        for code in codes:
            if code not in responses:
                responses[code] = self._get_response_for_code(ErrorSerializer, code)
        return responses


class BearerAuthScheme(OpenApiAuthenticationExtension):
    target_class = "taskhub.api.auth.BearerAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key (`thk_...`, from `manage.py create_api_key`) or a unit token "
            "(`thu_...`, returned once by register).",
        }


class OperatorSessionScheme(OpenApiAuthenticationExtension):
    target_class = "taskhub.api.auth.OperatorSessionAuthentication"
    name = "operatorSession"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "apiKey",
            "in": "cookie",
            "name": "sessionid",
            "description": "A staff user's admin session (browser use; CSRF token required).",
        }
