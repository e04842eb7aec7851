"""The one bounded wait: for something another thread or process does, which no clock of ours
can make happen sooner. Time the code under test reads is injected or frozen instead."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class TimedOut(AssertionError):
    """What was waited for did not happen in time (an AssertionError: a failed test says so)."""


def wait_for(
    condition: Callable[[], Any], timeout: float = 5.0, what: str = "condition", interval: float = 0.25
) -> Any:
    """The first true value `condition()` returns, polled in real time: after 10 ms at first (a
    thread's quick step is seen while it lasts), then less and less often, up to every `interval`
    seconds (a long wait does not flood a server with polls). TimedOut after `timeout` seconds. The
    condition may raise to give up at once (a process that exited, say)."""
    deadline = time.monotonic() + timeout
    pause = min(0.01, interval)
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimedOut(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(pause)
        pause = min(pause * 1.5, interval)
