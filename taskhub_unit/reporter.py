"""The reporter thread: ships each live attempt's log lines, progress and final report.

Every call is a single try; a transient failure reschedules that attempt's next report after a
jittered back-off, so one slow task never holds up the others and a result is kept (and the
attempt stays in heartbeats) until the hub accepts or refuses it. Log lines go out before the
final report, because the hub takes logs only for a live attempt.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

from taskhub_unit.client import ApiError, Backoff, HubClient, HubUnavailable
from taskhub_unit.runs import Run, RunTable

log = logging.getLogger("taskhub_unit.agent")

LOG_BATCH = 500  # the hub's limit per request
MAX_BATCHES_PER_TICK = 10
MAX_RESULT_BYTES = 262_144  # the hub refuses larger results


class Reporter:
    def __init__(
        self,
        client: HubClient,
        runs: RunTable,
        *,
        backoff: Backoff,
        interval: float = 0.5,
        on_unit_unknown: Callable[[str | None], None] = lambda token: None,
    ) -> None:
        self.client = client
        self.runs = runs
        self.backoff = backoff
        self.interval = interval
        self.on_unit_unknown = on_unit_unknown
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._flushing = threading.Lock()  # one flush at a time: the thread, or a final one at exit
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="reporter", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.wake.wait(self.interval)
            self.wake.clear()
            try:
                self.flush()
            except Exception:  # never let the reporter die: results would wait forever
                log.exception("reporter: unexpected error")

    def flush(self) -> None:
        """One pass over the live attempts."""
        with self._flushing:
            self._flush()

    def _flush(self) -> None:
        now = time.monotonic()
        for run in self.runs.live():
            if run.dead or now < run.next_report_at:
                continue
            token = self.client.token
            try:
                self._report(run, token)
                run.report_failures = 0
            except HubUnavailable as exc:
                run.report_failures += 1
                delay = self.backoff.delay(run.report_failures - 1)
                run.next_report_at = time.monotonic() + delay
                if run.report_failures == 1 or run.report_failures % 10 == 0:
                    log.warning("%s: hub unreachable (%s); keeping the report, retry in %.1fs", run.label, exc, delay)
            except ApiError as exc:
                self._refused(run, exc, token)

    def _report(self, run: Run, token: str | None) -> None:
        self._send_logs(run, token)
        if run.outcome is None:
            progress = run.ctx.current_progress
            if progress > run.sent_progress:
                self._post(run, "progress", {"attempt": run.ctx.attempt, "progress": progress}, token)
                run.sent_progress = progress
            return
        if run.ctx.logger.pending():
            return  # more lines than one tick sends: the result goes out next tick, after them
        what, body = run.outcome
        reply = self._post(run, what, body, token)
        self.runs.reported(run, what)
        accepted = "accepted" if not isinstance(reply, dict) or reply.get("accepted", True) else "already recorded"
        if what == "complete":
            log.info("%s: completed (%s)", run.label, accepted)
        else:
            retry = "retryable" if body.get("retryable") else "not retryable"
            log.info("%s: failed, %s (%s): %s", run.label, retry, accepted, str(body.get("error", ""))[:200])

    def _send_logs(self, run: Run, token: str | None) -> None:
        logger = run.ctx.logger
        for _ in range(MAX_BATCHES_PER_TICK):
            lines = logger.take(LOG_BATCH)
            if not lines:
                return
            try:
                self._post(run, "logs", {"attempt": run.ctx.attempt, "entries": lines}, token)
            except HubUnavailable:
                logger.put_back(lines)
                raise
            except ApiError as exc:
                if exc.stale_attempt or exc.unit_unknown or exc.status == 404:
                    raise
                # e.g. the task's log cap: the lines cannot be stored, the work goes on.
                log.warning("%s: hub refused %d log line(s): %s", run.label, len(lines), exc.message)

    def _post(self, run: Run, what: str, body: dict[str, object], token: str | None) -> object:
        if run.dead:
            raise ApiError(409, "stale_attempt", "attempt dropped locally", {"command": "abort"})
        return self.client.post(f"/tasks/{run.ctx.id}/{what}", body, token=token, max_attempts=1)

    def _refused(self, run: Run, exc: ApiError, token: str | None) -> None:
        if exc.stale_attempt or (exc.status == 404 and exc.code == "not_found"):
            self.runs.drop(run, "abort", exc.message, source="refused")
        elif exc.status == 401:
            self.on_unit_unknown(token)  # our token died: the control loop registers again
            run.next_report_at = time.monotonic() + self.backoff.delay(0)
        elif run.outcome is not None and run.outcome[0] == "complete" and exc.status in (400, 413):
            # The hub will not store this result (too large, say): fail the attempt instead.
            error = f"the hub refused the result: {exc.message}"
            run.outcome = ("fail", {"attempt": run.ctx.attempt, "error": error, "retryable": False})
        else:
            log.error("%s: hub refused the report (%s); dropping the attempt", run.label, exc)
            self.runs.drop(run, "abort", str(exc), source="refused")


def result_problem(result: object) -> str | None:
    """Why the hub would refuse this result, or None if it is fine."""
    try:
        size = len(json.dumps(result, ensure_ascii=False).encode("utf-8"))
    except (TypeError, ValueError) as exc:
        return f"the handler's result is not JSON: {exc}"
    if size > MAX_RESULT_BYTES:
        return f"the handler's result is {size} bytes as JSON; the hub takes at most {MAX_RESULT_BYTES}"
    return None
