"""HTTP to the hub: JSON in and out, bearer auth, retries with capped, jittered back-off.

Connection errors, timeouts, 408, 429 and 5xx are *transient*: the call is tried again after a
back-off (honouring `Retry-After`) until it succeeds, its attempt budget or deadline runs out, or
the stop event is set. Any other error status is the hub's answer and is raised as `ApiError` at
once. Secrets (the enroll key, the unit token) never appear in log lines or exception messages.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import requests

from taskhub_unit import __version__

log = logging.getLogger("taskhub_unit.client")

API_PREFIX = "/api/v1"


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off with "equal jitter": the n-th wait (n from 0) is drawn from
    [c/2, c] where c = min(cap, base * factor**n). Half fixed keeps waits growing; half random
    keeps a fleet of units that lost the hub together from coming back in lock-step."""

    base: float = 0.25
    cap: float = 10.0
    factor: float = 2.0

    def ceiling(self, attempt: int) -> float:
        # min() before the power would overflow for large attempt counts.
        if attempt > 64:
            return self.cap
        return min(self.cap, self.base * self.factor**attempt)

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        ceiling = self.ceiling(max(attempt, 0))
        return ceiling / 2 + rng() * ceiling / 2

    def capped(self, cap: float) -> Backoff:
        return Backoff(base=min(self.base, cap), cap=min(self.cap, cap), factor=self.factor)


class HubError(Exception):
    """Base of the errors a hub call can raise."""


class HubUnavailable(HubError):
    """The hub could not be reached (or kept answering 429/5xx) within the retry budget."""


class ApiError(HubError):
    """The hub answered with a non-retryable error (4xx other than 408/429)."""

    def __init__(self, status: int, code: str, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details: Mapping[str, Any] = details or {}

    @property
    def stale_attempt(self) -> bool:
        """409 on a report: the attempt is no longer live (fenced). The unit must drop it."""
        return self.status == 409 and (self.code == "stale_attempt" or self.details.get("command") == "abort")

    @property
    def unit_unknown(self) -> bool:
        """The unit token is no longer valid, or the unit was deleted: register again."""
        return self.status == 401 or (self.status == 404 and self.code == "not_found")

    @classmethod
    def from_response(cls, response: requests.Response) -> ApiError:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            details = body.get("details")
            return cls(
                response.status_code,
                str(body.get("code") or "error"),
                str(body.get("message") or response.reason or ""),
                details if isinstance(details, dict) else None,
            )
        return cls(response.status_code, "error", (response.text or response.reason or "")[:200])


def is_transient_status(status: int) -> bool:
    return status in (408, 429) or 500 <= status <= 599


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """`Retry-After` in seconds (the hub sends seconds; an HTTP date is ignored)."""
    raw = headers.get("Retry-After")
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if value >= 0 else None


class HubClient:
    """One hub, thread-safe: each thread gets its own `requests.Session` (connection pool)."""

    def __init__(
        self,
        server: str,
        *,
        timeout: float = 10.0,
        backoff: Backoff | None = None,
        stop: threading.Event | None = None,
        session_factory: Callable[[], Any] = requests.Session,
        rng: Callable[[], float] = random.random,
    ) -> None:
        server = server.rstrip("/")
        if server.endswith(API_PREFIX):
            server = server[: -len(API_PREFIX)]
        self.base_url = server + API_PREFIX
        self.timeout = timeout
        self.backoff = backoff or Backoff()
        self.stop = stop or threading.Event()
        self.token: str | None = None
        self._session_factory = session_factory
        self._local = threading.local()
        self._rng = rng

    def _session(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._session_factory()
            self._local.session = session
        return session

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        max_attempts: int | None = None,
        deadline: float | None = None,
        backoff: Backoff | None = None,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Send one call, retrying transient failures. `max_attempts` (None: unlimited) and
        `deadline` (a `time.monotonic()` value) bound the retries; so does the stop event.
        `timeout`: this call's own read timeout (a long-poll claim waits longer than others).
        `headers`: more of them (a task's `traceparent`). Returns the decoded JSON body (None for
        an empty one)."""
        url = self.base_url + path
        secret = token if token is not None else self.token
        headers = {**(headers or {}), "Accept": "application/json", "User-Agent": f"taskhub-unit/{__version__}"}
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
        policy = backoff or self.backoff
        attempt = 0
        while True:
            attempt += 1
            hint: float | None = None
            try:
                response = self._session().request(
                    method, url, json=body, headers=headers, timeout=timeout or self.timeout
                )
            except requests.RequestException as exc:
                problem = f"{type(exc).__name__}: cannot reach the hub"
            else:
                if response.status_code < 400:
                    try:
                        return response.json() if response.content else None
                    except ValueError:  # a proxy's page, say: not the hub's answer
                        problem = f"HTTP {response.status_code} with a body that is not JSON"
                elif not is_transient_status(response.status_code):
                    raise ApiError.from_response(response)
                else:
                    problem = f"HTTP {response.status_code}"
                    hint = retry_after_seconds(response.headers)
            wait = policy.delay(attempt - 1, self._rng)
            if hint is not None:
                wait = max(wait, min(hint, policy.cap))
            out_of_attempts = max_attempts is not None and attempt >= max_attempts
            past_deadline = deadline is not None and time.monotonic() + wait > deadline
            if out_of_attempts or past_deadline or self.stop.is_set():
                raise HubUnavailable(f"{method} {path}: {problem} (after {attempt} attempt(s))")
            # The first retry and every tenth are worth a warning; the rest would only be noise.
            level = logging.WARNING if attempt == 1 or attempt % 10 == 0 else logging.DEBUG
            log.log(level, "%s %s: %s; retry %d in %.2fs", method, path, problem, attempt, wait)
            if self.stop.wait(wait):
                raise HubUnavailable(f"{method} {path}: {problem} (stopping)")

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        return self.request("POST", path, {} if body is None else body, **kwargs)
