"""What a handler sees: `TaskContext` (the task, a logger, progress, cancellation) and the
exceptions it may raise."""

from __future__ import annotations

import logging
import threading
import traceback
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MAX_MESSAGE = 10_000  # the hub refuses longer log messages
MAX_BUFFERED_LINES = 5_000  # per task, while the hub is unreachable; the oldest go first
MAX_BATCH_BYTES = 256_000  # of log text per request
_LEVELS = {logging.DEBUG: "DEBUG", logging.INFO: "INFO", logging.WARNING: "WARN", logging.ERROR: "ERROR"}

local_log = logging.getLogger("taskhub_unit.task")


class NonRetryableError(Exception):
    """Raise from a handler when trying again cannot help (bad input, missing file): the attempt
    fails with `retryable: false`, so the hub does not schedule a retry."""


class TaskFailed(Exception):
    """Raise from a handler to fail the attempt with exactly this `error` text (the default names
    the exception's type); `retryable=False` as NonRetryableError. Used by handlers that describe
    the failure of the code they run themselves (taskhub_unit.django_tasks)."""

    def __init__(self, error: str, *, retryable: bool = True) -> None:
        super().__init__(error)
        self.error = error
        self.retryable = retryable


class TaskCancelled(Exception):
    """Raised by `TaskContext.raise_if_cancelled()`; the agent reports nothing for the attempt."""


def _level_name(level: int) -> str:
    for threshold in (logging.ERROR, logging.WARNING, logging.INFO):
        if level >= threshold:
            return _LEVELS[threshold]
    return "DEBUG"


class TaskLogger:
    """Logger-like (`debug/info/warning/error/exception`, %-style args). Lines are buffered and
    sent to the task's logs in batches by the agent (in `POST /tasks/reports` items); each is also
    logged locally on the `taskhub_unit.task` logger at DEBUG."""

    def __init__(self, task_id: int, attempt: int) -> None:
        self.task_id = task_id
        self.attempt = attempt
        self._lines: deque[dict[str, str]] = deque()
        self._lock = threading.Lock()
        self.dropped = 0

    def log(self, level: int, msg: object, *args: object, exc_info: bool = False) -> None:
        text = str(msg) % args if args else str(msg)
        if exc_info:
            text = f"{text}\n{traceback.format_exc().rstrip()}"
        if len(text) > MAX_MESSAGE:
            text = text[: MAX_MESSAGE - 20] + " ...[truncated]"
        local_log.debug("task %s attempt %s: %s", self.task_id, self.attempt, text)
        entry = {"level": _level_name(level), "message": text, "timestamp": datetime.now(UTC).isoformat()}
        with self._lock:
            if len(self._lines) >= MAX_BUFFERED_LINES:
                self._lines.popleft()
                self.dropped += 1
            self._lines.append(entry)

    def debug(self, msg: object, *args: object) -> None:
        self.log(logging.DEBUG, msg, *args)

    def info(self, msg: object, *args: object) -> None:
        self.log(logging.INFO, msg, *args)

    def warning(self, msg: object, *args: object) -> None:
        self.log(logging.WARNING, msg, *args)

    warn = warning

    def error(self, msg: object, *args: object) -> None:
        self.log(logging.ERROR, msg, *args)

    def exception(self, msg: object, *args: object) -> None:
        self.log(logging.ERROR, msg, *args, exc_info=True)

    # --- for the agent ---
    def take(self, limit: int, max_bytes: int = MAX_BATCH_BYTES) -> list[dict[str, str]]:
        """Remove and return up to `limit` buffered lines (oldest first) and about `max_bytes`
        of text at most (the hub refuses request bodies over 1 MiB by default)."""
        with self._lock:
            if self.dropped:
                note = f"{self.dropped} log line(s) dropped while the hub was unreachable"
                self._lines.appendleft({"level": "WARN", "message": note, "timestamp": datetime.now(UTC).isoformat()})
                self.dropped = 0
            taken: list[dict[str, str]] = []
            size = 0
            while self._lines and len(taken) < limit:
                size += len(self._lines[0]["message"].encode("utf-8")) + 100
                if taken and size > max_bytes:
                    break
                taken.append(self._lines.popleft())
            return taken

    def put_back(self, lines: list[dict[str, str]]) -> None:
        """Return lines a failed send took, in front, keeping the buffer bounded."""
        with self._lock:
            self._lines.extendleft(reversed(lines))
            while len(self._lines) > MAX_BUFFERED_LINES:
                self._lines.pop()
                self.dropped += 1

    def pending(self) -> int:
        with self._lock:
            return len(self._lines) + (1 if self.dropped else 0)

    def clear(self) -> None:
        with self._lock:
            self._lines.clear()
            self.dropped = 0


class TaskContext:
    """Passed to the handler: `handler(ctx) -> result` (anything JSON can encode).

    - `ctx.task`: the claimed task as the hub sent it (`id, name, taskType, priority, config,
      attempt, timeoutSeconds, traceparent`); shortcuts `ctx.id`, `ctx.config`, `ctx.attempt`,
      `ctx.traceparent`.
    - `ctx.log` (also `ctx.logger`): lines reach the task's execution logs.
    - `ctx.progress(n)`: 0-100, sent to the hub (throttled).
    - `ctx.cancelled` / `ctx.sleep(s)` / `ctx.raise_if_cancelled()`: the hub cancelled or paused
      the task, the attempt was taken away, it timed out, or the unit is shutting down; stop soon.
      Whatever the handler returns after that is not reported (except on a timeout, which is
      reported as a retryable failure).
    """

    def __init__(
        self,
        task: dict[str, Any],
        *,
        unit_id: str = "",
        data_dir: Path | None = None,
        on_progress: Callable[[], None] | None = None,
    ) -> None:
        self.task = task
        self.unit_id = unit_id
        self.data_dir = data_dir or Path.cwd()
        self.logger = TaskLogger(self.id, self.attempt)
        self._progress = 0
        self._cancel = threading.Event()
        self.cancel_command: str | None = None
        self.cancel_reason: str | None = None
        self._on_progress = on_progress

    @property
    def id(self) -> int:
        return int(self.task["id"])

    @property
    def attempt(self) -> int:
        return int(self.task["attempt"])

    @property
    def name(self) -> str:
        return str(self.task.get("name", ""))

    @property
    def config(self) -> dict[str, Any]:
        config = self.task.get("config")
        return config if isinstance(config, dict) else {}

    @property
    def log(self) -> TaskLogger:
        """The task's logger (`ctx.log.info("read %d rows", n)`): lines reach its execution logs."""
        return self.logger

    @property
    def traceparent(self) -> str | None:
        """The W3C trace context the task was created with (the claim's `traceparent`), if any;
        the unit sends it back as the `traceparent` header of this attempt's reports."""
        value = self.task.get("traceparent")
        return value if isinstance(value, str) and value else None

    @property
    def timeout_seconds(self) -> float | None:
        value = self.task.get("timeoutSeconds")
        return float(value) if value else None

    def progress(self, percent: float) -> None:
        """Report progress, 0-100 (clamped; never goes down)."""
        value = max(0, min(100, int(percent)))
        if value > self._progress:
            self._progress = value
            if self._on_progress is not None:
                self._on_progress()

    @property
    def current_progress(self) -> int:
        return self._progress

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def sleep(self, seconds: float) -> bool:
        """Sleep, waking early on cancellation. Returns True if the task was cancelled."""
        return self._cancel.wait(max(seconds, 0.0))

    def raise_if_cancelled(self) -> None:
        if self._cancel.is_set():
            raise TaskCancelled(self.cancel_reason or "cancelled")

    def _stop(self, command: str, reason: str) -> None:
        """The runtime's, not the handler's: tell the handler to stop (first reason wins)."""
        if not self._cancel.is_set():
            self.cancel_command = command
            self.cancel_reason = reason
            self._cancel.set()
