"""drf-spectacular: every operation documents the error shape for the statuses it can return."""

from __future__ import annotations

import re
from typing import Any, Literal

from drf_spectacular.extensions import (
    OpenApiAuthenticationExtension,
    OpenApiSerializerExtension,
    OpenApiSerializerFieldExtension,
)
from drf_spectacular.openapi import AutoSchema as BaseAutoSchema
from drf_spectacular.plumbing import ResolvedComponent
from drf_spectacular.settings import spectacular_settings
from rest_framework import serializers

from taskhub.api.errors import ErrorSerializer
from taskhub.api.serializers.fields import DATETIME_PATTERN, BoundedDateTimeField
from taskhub.api.serializers.tasks import LogWriteSerializer

NO_NUL = r"^[^\u0000]*$"
NOT_BLANK = r"^[^\u0000]*[^\s\u0000][^\u0000]*$"
_PORT = r"(:([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?"
HTTP_URL = r"^https?://[A-Za-z0-9._~-]*[A-Za-z0-9]" + _PORT + r"([/?#][^\s\u0000]*)?$"  # blank: its own branch


# Operation ids (what generated clients name their functions) say what each call does. They are
# made here, and only here, from the method and the path below SCHEMA_PATH_PREFIX (see
# `operation_id`), so a new endpoint gets one too; this table names those the rule reads badly for.
OPERATION_IDS = {
    ("GET", ""): "getApiIndex",
    ("POST", "execution-units/register"): "registerExecutionUnit",
    ("POST", "execution-units/{}/claim"): "claimTasks",
    ("POST", "execution-units/{}/heartbeat"): "sendHeartbeat",
    ("POST", "tasks/batch"): "createTasks",
    ("POST", "tasks/reports"): "sendReports",
    ("GET", "tasks/{}/logs"): "listTaskLogs",
    ("POST", "tasks/{}/logs"): "writeTaskLogs",
    ("POST", "tasks/{}/progress"): "reportTaskProgress",
    ("PUT", "tasks/{}/status"): "changeTaskStatus",
    ("GET", "webhooks/{}/deliveries"): "listWebhookDeliveries",
}
_ITEM_VERBS = {"GET": "get", "PATCH": "update", "PUT": "replace", "DELETE": "delete", "POST": "create"}


def _pascal(word: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[-_]", word) if part)


def _singular(word: str) -> str:
    return word[:-1] if word.endswith("s") and not word.endswith("ss") else word


def operation_id(method: str, path: str) -> str:
    """`listTasks`, `createTask`, `getTask`, `updateTask`, `deleteTask` for a collection and its
    items; `completeTask` (POST /tasks/{id}/complete), `getTaskHistory` (GET /tasks/{id}/history),
    `redriveTasks` (POST /tasks/redrive), `getTaskStats` (GET /tasks/stats) below them."""
    shape = re.sub(r"\{[^}]*\}", "{}", path.strip("/"))
    if (method, shape) in OPERATION_IDS:
        return OPERATION_IDS[method, shape]
    parts = shape.split("/") if shape else []
    verb = _ITEM_VERBS.get(method, method.lower())
    if not parts:
        return f"{verb}Index"
    plural, noun = _pascal(parts[0]), _pascal(_singular(parts[0]))
    rest = parts[1:]
    if not rest:
        return {"GET": f"list{plural}", "POST": f"create{noun}"}.get(method, f"{verb}{plural}")
    if rest == ["{}"]:
        return f"{verb}{noun}"
    if len(rest) == 2 and rest[0] == "{}" and rest[1] != "{}":
        word = rest[1]
        return f"{_camel(word)}{noun}" if method == "POST" else f"{_set(verb, method)}{noun}{_pascal(word)}"
    if len(rest) == 1:
        word = rest[0]
        return f"{_camel(word)}{plural}" if method == "POST" else f"{_set(verb, method)}{noun}{_pascal(word)}"
    return verb + "".join(_pascal(part) for part in parts if part != "{}")


def _camel(word: str) -> str:
    pascal = _pascal(word)
    return pascal[:1].lower() + pascal[1:]


def _set(verb: str, method: str) -> str:
    return "set" if method in ("PUT", "PATCH") else verb


class AutoSchema(BaseAutoSchema):
    def get_operation_id(self) -> str:
        prefix = spectacular_settings.SCHEMA_PATH_PREFIX or ""
        path = self.path[len(prefix) :] if prefix and self.path.startswith(prefix) else self.path
        return operation_id(self.method, path)

    def _map_serializer(self, serializer: Any, direction: Any, bypass_extensions: bool = False) -> dict[str, Any]:
        schema: dict[str, Any] = super()._map_serializer(serializer, direction, bypass_extensions)
        if direction == "request" and self.method == "PATCH" and schema.get("type") == "object":
            # PATCH bodies name at least one field, and only fields the resource has (the update
            # serializers refuse "nothing to update" and unknown or read-only fields with a 400).
            schema["minProperties"] = 1
            schema["additionalProperties"] = False
        return schema

    def _get_request_body(self, direction: str = "request") -> Any:
        body = super()._get_request_body(direction)
        if body is not None and (self.method == "PATCH" or self._request_serializer_is(LogWriteSerializer)):
            # An empty PATCH is refused ("Nothing to update"); log lines need `entries` or `message`.
            body["required"] = True
        return body

    def _request_serializer_is(self, kind: type) -> bool:
        serializer = self.get_request_serializer()
        return (serializer if isinstance(serializer, type) else type(serializer)) is kind

    def _map_serializer_field(self, field: Any, direction: Any, bypass_extensions: bool = False) -> dict[str, Any]:
        schema: dict[str, Any] = super()._map_serializer_field(field, direction, bypass_extensions)
        if (
            direction == "request"
            and type(field) is serializers.CharField
            and schema.get("type") == "string"
            and "pattern" not in schema
        ):
            # What DRF's CharField takes: no NUL character, and (unless blank is allowed) something
            # left after trimming whitespace.
            schema["pattern"] = NO_NUL if field.allow_blank or not field.trim_whitespace else NOT_BLANK
        if direction == "request" and isinstance(field, BoundedDateTimeField):
            schema["pattern"] = DATETIME_PATTERN  # the year as written: 1970 to 2199
        return schema

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


class LogWriteScheme(OpenApiSerializerExtension):
    """Log lines: a batch (`entries`, 1-500) or one line (`message`), exactly one of the two: a
    `oneOf` of two whole objects (components LogEntriesWrite, LogLineWrite), each requiring its
    own key and refusing the other's, so a body with both matches neither, as the server says.
    (Branches that only list `required` keys make generators such as openapi-python-client write
    broken code.)"""

    target_class = "taskhub.api.serializers.tasks.LogWriteSerializer"
    BRANCHES = {
        "LogEntriesWrite": ("entries", "message", ("attempt", "entries")),
        "LogLineWrite": ("message", "entries", ("attempt", "level", "message", "timestamp")),
    }

    def map_serializer(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        schema: dict[str, Any] = auto_schema._map_basic_serializer(self.target, direction)
        if direction != "request":
            return schema
        properties = schema["properties"]
        properties["entries"] |= {"minItems": 1, "maxItems": 500}
        branches = []
        for name, (required, other, fields) in self.BRANCHES.items():
            branch = {
                "type": "object",
                "properties": {field: properties[field] for field in fields},
                "required": [required],
                # Without it a line with `entries: []` (or any non-array) would match LogLineWrite.
                "not": {"required": [other]},
            }
            component = ResolvedComponent(name=name, type=ResolvedComponent.SCHEMA, object=name, schema=branch)
            auto_schema.registry.register_on_missing(component)
            branches.append(component.ref)
        return {"oneOf": branches}


class TaskCreateScheme(OpenApiSerializerExtension):
    """A task to create (POST /tasks, each item of POST /tasks/batch): `uniqueFor` only with
    `uniqueKey`, stated as "not (uniqueFor and not uniqueKey)" (OpenAPI 3.0 has no
    dependentRequired), which generators read past."""

    target_class = "taskhub.api.serializers.tasks.TaskCreateSerializer"
    match_subclasses = True

    def map_serializer(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        schema: dict[str, Any] = auto_schema._map_basic_serializer(self.target, direction)
        if direction == "request":
            schema["not"] = {"required": ["uniqueFor"], "not": {"required": ["uniqueKey"]}}
        return schema


class ReportScheme(OpenApiSerializerExtension):
    """A report of POST /tasks/reports: what it needs follows its `outcome` (`error` for fail,
    `progress` for progress), so a `oneOf` of three whole objects (ReportComplete, ReportFail,
    ReportProgress) with `outcome` as the discriminator; the server refuses the same bodies."""

    target_class = "taskhub.api.serializers.tasks.ReportSerializer"
    NEEDS = {"complete": (), "fail": ("error",), "progress": ("progress",)}

    def map_serializer(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        schema: dict[str, Any] = auto_schema._map_basic_serializer(self.target, direction)
        if direction != "request":
            return schema
        assert set(self.NEEDS) == set(schema["properties"]["outcome"]["enum"]), "an outcome without a branch"
        branches, mapping = [], {}
        for outcome, needs in self.NEEDS.items():
            name = f"Report{outcome.capitalize()}"
            branch = {
                **schema,
                "properties": schema["properties"] | {"outcome": {"type": "string", "enum": [outcome]}},
                "required": [*schema["required"], *needs],
            }
            component = ResolvedComponent(name=name, type=ResolvedComponent.SCHEMA, object=name, schema=branch)
            auto_schema.registry.register_on_missing(component)
            branches.append(component.ref)
            mapping[outcome] = component.ref["$ref"]
        return {"oneOf": branches, "discriminator": {"propertyName": "outcome", "mapping": mapping}}


class EndpointFieldScheme(OpenApiSerializerFieldExtension):
    """An execution unit's endpoint: an http(s) URL with a host and a valid port (or blank)."""

    target_class = "taskhub.api.serializers.units.EndpointField"

    def map_serializer_field(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        return {"type": "string", "maxLength": 500, "pattern": HTTP_URL}


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


class BulkActionScheme(OpenApiSerializerExtension):
    """A bulk action: `priority` with `reprioritize`, and only with it."""

    target_class = "taskhub.api.serializers.queues.BulkActionSerializer"

    def map_serializer(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        schema: dict[str, Any] = auto_schema._map_basic_serializer(self.target, direction)
        if direction == "request":
            # Patterns, not enums: the enum post-processing would turn any `action` enum into the
            # whole BulkActionActionEnum component.
            others = "|".join(a for a in schema["properties"]["action"]["enum"] if a != "reprioritize")
            schema["oneOf"] = [
                {"properties": {"action": {"pattern": "^reprioritize$"}}, "required": ["priority"]},
                {"properties": {"action": {"pattern": f"^({others})$"}}, "not": {"required": ["priority"]}},
            ]
        return schema


class BulkFilterScheme(OpenApiSerializerExtension):
    """A bulk action's filter names only the list's filters (an unknown one is a 400)."""

    target_class = "taskhub.api.serializers.queues.BulkFilterSerializer"

    def map_serializer(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        schema: dict[str, Any] = auto_schema._map_basic_serializer(self.target, direction)
        if direction == "request":
            schema["additionalProperties"] = False
        return schema
