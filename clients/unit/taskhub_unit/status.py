"""What the unit says about itself: a one-line status every `--status-interval` seconds, and a
summary when it stops that counts every claimed attempt once (see `runs.py`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from taskhub_unit.runs import RunTable


class StatusLine:
    def __init__(
        self, runs: RunTable, *, interval: float, capacity: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.runs = runs
        self.interval = interval  # 0: no periodic line
        self.capacity = capacity
        self.clock = clock
        self.started = clock()
        self.next_at = self.started + interval if interval > 0 else math.inf
        self._window_start = self.started
        self._window_done = 0

    def tick(self, unit_status: str, now: float | None = None) -> str | None:
        """The status line, if one is due (at most one per interval, however late the call)."""
        now = self.clock() if now is None else now
        if now < self.next_at:
            return None
        counts = self.runs.snapshot()
        done = counts["completed"] + counts["failed"]
        window = max(now - self._window_start, 1e-9)
        rate = (done - self._window_done) * 60 / window
        self._window_start, self._window_done = now, done
        self.next_at = now + self.interval
        return (
            f"status: {counts['running']} running (capacity {self.capacity}), {counts['completed']} completed, "
            f"{counts['failed']} failed, {counts['dropped']} dropped; {rate:.1f} done/min over the last "
            f"{window:.0f}s; unit {unit_status}"
        )

    def summary(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        c = self.runs.snapshot()
        return (
            f"stopped after {now - self.started:.1f}s: {c['claimed']} claimed = {c['completed']} completed "
            f"+ {c['failed']} failed + {c['dropped']} dropped by the hub + {c['givenBack']} given back "
            f"+ {c['running']} unfinished"
        )
