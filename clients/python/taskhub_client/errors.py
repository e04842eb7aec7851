"""Exceptions: the hub's one error shape (`statusCode`, `code`, `message`, `details`) as classes.

try:
    client.submit("x", "DATA_PROCESSING", priority=5000)
except ValidationError as exc:
    exc.fields  # {"priority": ["Ensure this value is less than or equal to 1000."]}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

    from taskhub_client.models import Task


class TaskhubError(Exception):
    """Base of every error of this SDK. For a hub's answer: its HTTP status, `code`, `message`
    and `details`; `status_code` is None when no answer came (HubUnavailable, WaitTimeout)."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str = "error",
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(f"HTTP {status_code} {code}: {message}" if status_code else message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details: Mapping[str, Any] = details or {}


class ValidationError(TaskhubError):
    """400: bad input. `fields` maps each offending field (`tasks[3].priority`) to its messages."""

    @property
    def fields(self) -> Mapping[str, list[str]]:
        fields = self.details.get("fields")
        return fields if isinstance(fields, dict) else {}


class AuthenticationError(TaskhubError):
    """401: no key, or a key the hub does not know (revoked, mistyped)."""


class PermissionDenied(TaskhubError):
    """403: the key lacks the scope for this call."""


class NotFound(TaskhubError):
    """404: no such task among the caller's (another client's tasks are not found either)."""


class Conflict(TaskhubError):
    """409: the task's state does not allow it, or an idempotency key was reused with another body."""

    @property
    def allowed_targets(self) -> tuple[str, ...] | None:
        """For a refused status change: the states the task may go to now (empty when terminal)."""
        allowed = self.details.get("allowedTargets")
        return tuple(allowed) if isinstance(allowed, list) else None

    @property
    def current_status(self) -> str | None:
        value = self.details.get("currentStatus")
        return value if isinstance(value, str) else None


class PayloadTooLarge(TaskhubError):
    """413: the request body is over the hub's API_MAX_BODY_BYTES (`details["limitBytes"]`)."""


class Throttled(TaskhubError):
    """429: over the key's rate; `retry_after` is the hub's Retry-After in seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerError(TaskhubError):
    """5xx: the hub (or a proxy in front of it) failed; 503 with code `service_unavailable` is the
    hub saying its database is unreachable and nothing was changed."""


class HubUnavailable(TaskhubError):
    """No answer: the connection failed or timed out. After a request was sent, whether the hub
    acted on it is unknown (the SDK retries only calls that are safe to repeat)."""


class WaitTimeout(TaskhubError, TimeoutError):
    """`wait()` gave up before the task was done; `task` is the last state seen."""

    def __init__(self, message: str, *, task: Task) -> None:
        super().__init__(message, code="wait_timeout")
        self.task = task


_BY_STATUS: dict[int, type[TaskhubError]] = {
    400: ValidationError,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    429: Throttled,
}


def retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds (the hub sends seconds; an HTTP date is not used by it)."""
    raw = response.headers.get("Retry-After")
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        return None
    return value if value is not None and value >= 0 else None


def error_from_response(response: httpx.Response) -> TaskhubError:
    """The exception for a non-2xx answer. Bodies not in the hub's shape (a proxy's HTML page)
    still give the right class, with the start of the text as the message."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "message" in body:
        code = str(body.get("code") or "error")
        message = str(body["message"])
        details = body.get("details") if isinstance(body.get("details"), dict) else None
    else:
        code, message, details = "error", (response.text or response.reason_phrase)[:200], None
    status = response.status_code
    kind = _BY_STATUS.get(status) or (ServerError if status >= 500 else TaskhubError)
    kwargs: dict[str, Any] = {"status_code": status, "code": code, "details": details}
    if kind is Throttled:
        return Throttled(message, retry_after=retry_after(response), **kwargs)
    return kind(message, **kwargs)
