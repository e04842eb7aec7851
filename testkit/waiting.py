"""The one bounded wait: for something another thread or process does, which no clock of ours
can make happen sooner. Time the code under test reads is injected or frozen instead."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class TimedOut(AssertionError):
    """What was waited for did not happen in time (an AssertionError: a failed test says so)."""


def wait_for(
    condition: Callable[[], Any], timeout: float = 5.0, what: str = "condition", interval: float = 0.05
) -> Any:
    """The first true value `condition()` returns, polled every `interval` seconds of real time;
    TimedOut after `timeout` seconds. The condition may raise to give up at once (a process that
    exited, say)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimedOut(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
