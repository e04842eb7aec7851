"""The attempts a unit holds, shared by the control loop, the reporter and the task threads.

An attempt is *live* from its claim until the hub accepts or refuses its final report: live
attempts are listed in every heartbeat (so the hub keeps them leased to us, even while a result
waits for a hub that is down) and count against capacity. An attempt is *dead* once the hub fenced
it (409, abort/cancel/pause command, re-registration) or the unit gave it back: it is never
reported again. A dead attempt whose handler still runs is a *zombie*: it still occupies a slot.

Every claimed attempt ends in exactly one count: `completed` or `failed` (the hub has its final
report), `dropped` (the hub took it away or refused it), `givenBack` (the drain grace period ran
out); what is still live when the process stops is unfinished. So the counts sum to `claimed`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from taskhub_unit.context import TaskContext

log = logging.getLogger("taskhub_unit.agent")

Key = tuple[int, int]  # (task id, attempt)


@dataclass(eq=False)
class Run:
    ctx: TaskContext
    started: float = field(default_factory=time.monotonic)  # on the run table's clock
    finished: float | None = None  # when the handler returned (same clock)
    outcome: tuple[str, dict[str, Any]] | None = None  # ("complete" | "fail", request body)
    ended: str | None = None  # the count this attempt ended in (see the module docstring)
    dead: bool = False
    timed_out: bool = False
    handler_done: bool = False
    sent_progress: int = 0
    report_failures: int = 0
    next_report_at: float = 0.0

    @property
    def key(self) -> Key:
        return (self.ctx.id, self.ctx.attempt)

    @property
    def label(self) -> str:
        return f"task {self.ctx.id} attempt {self.ctx.attempt}"

    @property
    def duration(self) -> float | None:
        """Seconds the handler ran, once it has returned."""
        return None if self.finished is None else max(self.finished - self.started, 0.0)


ENDINGS = ("completed", "failed", "dropped", "givenBack")


class RunTable:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        # Called once an attempt's final report needs keeping no longer (reported, or dropped):
        # the agent removes its spooled outcome (taskhub_unit.spool).
        self.on_final: Callable[[Run], None] = lambda run: None
        self.clock = clock
        self.lock = threading.RLock()
        self._live: dict[Key, Run] = {}
        self._zombies: set[Run] = set()
        self.changed = threading.Event()  # set when a slot frees up
        self.counts = dict.fromkeys(("claimed", *ENDINGS), 0)

    def snapshot(self) -> dict[str, int]:
        """The counts, and `running`: the attempts held now (unfinished, should the process stop)."""
        with self.lock:
            return {**self.counts, "running": len(self._live)}

    def _end(self, run: Run, ending: str) -> bool:
        """Count the attempt's ending, once (a report and a fence may race for the same attempt)."""
        if run.ended is not None:
            return False
        run.ended = ending
        self.counts[ending] += 1
        return True

    def add(self, run: Run) -> None:
        with self.lock:
            # A newer attempt of a task we still hold means the old one was taken away.
            for old in [r for r in self._live.values() if r.ctx.id == run.ctx.id and r.ctx.attempt < run.ctx.attempt]:
                self.drop(old, "abort", "a newer attempt of this task was claimed", source="local")
            self._live[run.key] = run
            self.counts["claimed"] += 1

    def live(self) -> list[Run]:
        with self.lock:
            return list(self._live.values())

    def get(self, task_id: int, attempt: int) -> Run | None:
        with self.lock:
            return self._live.get((task_id, attempt))

    def busy(self) -> int:
        with self.lock:
            return len(self._live) + len(self._zombies)

    def __len__(self) -> int:
        with self.lock:
            return len(self._live)

    def cancel_timed_out(self, now: float) -> None:
        """Ask the handlers of attempts past their `timeoutSeconds` (on this table's clock) to stop."""
        for run in self.live():
            limit = run.ctx.timeout_seconds
            if limit and run.outcome is None and not run.timed_out and now - run.started > limit:
                run.timed_out = True
                log.warning("%s: timed out after %gs; asking the handler to stop", run.label, limit)
                run.ctx._stop("timeout", f"timed out after {limit:g}s")

    def heartbeat_list(self) -> list[dict[str, int]]:
        with self.lock:
            return [
                {"id": r.ctx.id, "attempt": r.ctx.attempt, "progress": 100 if r.outcome else r.ctx.current_progress}
                for r in self._live.values()
            ]

    def drop(self, run: Run, command: str, reason: str, *, source: str = "hub", ending: str = "dropped") -> bool:
        """Fence an attempt: stop its handler, forget its logs, never report it again. `ending`:
        "givenBack" when the unit gives it back itself (the drain grace period is over)."""
        with self.lock:
            if run.dead or run.ended is not None:
                return False
            run.dead = True
            self._live.pop(run.key, None)
            if not run.handler_done:
                self._zombies.add(run)
            self._end(run, ending)
        run.ctx._stop(command, reason)
        run.ctx.logger.clear()
        self.on_final(run)
        if source == "refused":
            log.warning("%s: report refused by the hub (%s); dropping the attempt", run.label, reason)
        elif source == "hub":
            log.warning("%s: hub says %s (%s); stopping it, no further reports", run.label, command, reason)
        else:
            log.warning("%s: %s; stopping it", run.label, reason)
        self.changed.set()
        return True

    def handler_finished(self, run: Run, outcome: tuple[str, dict[str, Any]] | None) -> bool:
        """Record what the handler produced. Returns False if the attempt is dead already."""
        with self.lock:
            run.handler_done = True
            run.finished = self.clock()
            if run in self._zombies:
                self._zombies.discard(run)
                self.changed.set()
            if run.dead:
                return False
            run.outcome = outcome
            return True

    def reported(self, run: Run, what: str) -> None:
        """The hub has the final report: the slot is free."""
        with self.lock:
            if self._live.get(run.key) is run:
                del self._live[run.key]
            self._end(run, "completed" if what == "complete" else "failed")
        self.on_final(run)
        self.changed.set()
