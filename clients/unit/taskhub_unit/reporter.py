"""The reporter thread: ships each live attempt's log lines, progress and final report.

Each tick gathers what every live attempt has to say into one `POST /tasks/reports` request (split
when it would pass the hub's item count or body size). An attempt's item carries its pending log
lines with its outcome (`complete`/`fail`, or `progress` while it runs or while more lines wait)
and the hub applies the two together or not at all, so log lines always land before the final
report. Items are answered one by one: a stale or unknown attempt is dropped, the others are
reported. A transient failure of the request (hub unreachable, 429, 5xx) keeps everything and backs
off the whole batch with jitter; a result is kept (and its attempt stays in heartbeats) until the
hub accepts or refuses it.

A hub without the batch endpoint (404/405) gets the older per-attempt requests
(`/tasks/{id}/logs|progress|complete|fail`) for the life of the process: every call a single try,
each attempt backing off on its own, so one slow task never holds up the others.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from taskhub_unit.client import ApiError, Backoff, HubClient, HubUnavailable
from taskhub_unit.runs import Run, RunTable

log = logging.getLogger("taskhub_unit.agent")

LOG_BATCH = 500  # the hub's limit of log lines per request (and per batch item)
MAX_BATCHES_PER_TICK = 10
MAX_RESULT_BYTES = 262_144  # the hub refuses larger results
REPORTS_PATH = "/tasks/reports"
# The hub's TASK_BATCH_MAX default. A hub set lower answers 400 to a full batch; its items are then
# sent one per request, which still works.
REPORTS_MAX_ITEMS = 100
# Of JSON body per batch request, well under the hub's API_MAX_BODY_BYTES (1 MiB by default). An
# item larger on its own (a big result in escaped non-ASCII, say) goes alone.
REPORTS_MAX_BYTES = 786_432
MAX_ERROR_CHARS = 10_000  # the hub refuses longer `error` texts
_ITEM_STATUS = {"stale_attempt": 409, "conflict": 409, "not_found": 404}  # what the single endpoint answers


@dataclass(eq=False)
class Item:
    """One attempt's entry in a batch: the request body's item and the log lines it took."""

    run: Run
    body: dict[str, Any]
    lines: list[dict[str, str]]
    size: int  # bytes of `body` as JSON, as sent
    full: bool = False  # the lines were cut at one item's share: more wait

    @property
    def outcome(self) -> str:
        return str(self.body["outcome"])


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
        self.batch = True  # False once the hub answered 404/405 to POST /tasks/reports (an older hub)
        self._stop = threading.Event()
        self._flushing = threading.Lock()  # one flush at a time: the thread, or a final one at exit
        self._thread: threading.Thread | None = None
        self._batch_failures = 0
        self._batch_retry_at = 0.0

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
        """One pass over the live attempts. After `stop`, a last pass ignores the back-off."""
        with self._flushing:
            if self.batch:
                self._flush_batched()
            if not self.batch:  # also when the hub just told us it has no batch endpoint
                self._flush_each()

    # --- batched: POST /tasks/reports ----------------------------------------------------------

    def _flush_batched(self) -> None:
        final = self._stop.is_set()
        if not final and time.monotonic() < self._batch_retry_at:
            return
        token = self.client.token
        more: set[Run] | None = None  # after the first round: the attempts with lines still waiting
        for _ in range(MAX_BATCHES_PER_TICK):
            now = time.monotonic()
            items = []
            for run in self.runs.live():
                if run.dead or (not final and now < run.next_report_at) or (more is not None and run not in more):
                    continue
                item = self._item(run)
                if item is not None:
                    items.append(item)
            if not items:
                return
            more = self._send(items, token)
            if not more:
                return

    def _item(self, run: Run) -> Item | None:
        """What this attempt has to say, taking its next log lines; None if nothing."""
        logger = run.ctx.logger
        if run.outcome is not None and run.outcome[0] == "complete":
            problem = result_problem(run.outcome[1].get("result"))
            if problem:  # the hub would refuse the whole request (400): fail the attempt instead
                logger.error(problem)
                run.outcome = ("fail", {"attempt": run.ctx.attempt, "error": problem, "retryable": False})
        lines = logger.take(LOG_BATCH)
        full = bool(lines) and logger.pending() > 0
        body: dict[str, Any] = {"taskId": run.ctx.id, "attempt": run.ctx.attempt}
        if run.outcome is not None and not logger.pending():
            what, report = run.outcome
            body["outcome"] = what
            if what == "complete":
                body["result"] = report.get("result")
            else:
                body["error"] = str(report.get("error") or "failed")[:MAX_ERROR_CHARS]
                body["retryable"] = bool(report.get("retryable", True))
        elif lines or run.ctx.current_progress > run.sent_progress:
            # The hub has no logs-only outcome: lines while the attempt runs, or ahead of a result
            # that waits for them, go with its current progress.
            body |= {"outcome": "progress", "progress": run.ctx.current_progress}
        else:
            return None
        if lines:
            body["logs"] = lines
        item = Item(run, body, lines, _json_size(body), full)
        if lines and item.outcome != "progress" and item.size > REPORTS_MAX_BYTES:
            # The result and the lines do not fit one request: the lines first, the result next round.
            body = {**_without(body, "result", "error", "retryable"), "outcome": "progress"}
            body["progress"] = run.ctx.current_progress
            item = Item(run, body, lines, _json_size(body), full)
        return item

    def _send(self, items: list[Item], token: str | None) -> set[Run]:
        """Send the items (in as many requests as the limits need) and apply the answers.
        Returns the attempts that have more to say at once (lines beyond one item's share)."""
        more: set[Run] = set()
        queue = deque(_chunks(items))
        while queue:
            chunk = queue.popleft()
            try:
                reply = self.client.post(
                    REPORTS_PATH,
                    {"reports": [item.body for item in chunk]},
                    token=token,
                    max_attempts=1,
                    headers=trace_headers(chunk[0].run),  # one trace context per request (_chunks)
                )
                answers = reply.get("items") if isinstance(reply, dict) else None
                if not isinstance(answers, list) or len(answers) != len(chunk):
                    raise HubUnavailable(f"POST {REPORTS_PATH}: an answer that does not match the request")
            except HubUnavailable as exc:
                self._keep([chunk, *queue], exc)
                return set()
            except ApiError as exc:
                if exc.status in (404, 405):
                    self._put_back([chunk, *queue])
                    self.batch = False
                    log.info("the hub has no POST %s (HTTP %d): reporting attempt by attempt", REPORTS_PATH, exc.status)
                    return set()
                if exc.status == 401:
                    self._put_back([chunk, *queue])
                    self.on_unit_unknown(token)  # our token died: the control loop registers again
                    self._batch_retry_at = time.monotonic() + self.backoff.delay(0)
                    return set()
                if len(chunk) > 1:
                    # Some item the hub will not take (or a hub with a lower TASK_BATCH_MAX): send
                    # each alone, so only that item is refused.
                    queue.extendleft(reversed([[item] for item in chunk]))
                    continue
                self._item_refused(chunk[0], exc, token)
                continue
            self._batch_failures = 0
            resend: list[Item] = []
            for item, answer in zip(chunk, answers, strict=True):
                again = self._answered(item, answer if isinstance(answer, dict) else {}, token)
                if again is not None:
                    resend.append(again)
                elif item.outcome == "progress" and not item.run.dead and (item.full or item.run.outcome is not None):
                    more.add(item.run)  # more lines, or a result waiting behind these: next round
            queue.extend(_chunks(resend))
        return more

    def _answered(self, item: Item, answer: dict[str, Any], token: str | None) -> Item | None:
        """Apply one item's answer. Returns the item to send again without its lines, if the hub
        refused them for the task's log cap."""
        run = item.run
        error = answer.get("error")
        if error:
            if not isinstance(error, dict):
                error = {"message": str(error)}
            code = str(error.get("code") or "error")
            details = error.get("details")
            exc = ApiError(
                _ITEM_STATUS.get(code, 400),
                code,
                str(error.get("message") or ""),
                details if isinstance(details, dict) else None,
            )
            if item.lines and code == "conflict" and "log cap" in exc.message:
                # The lines cannot be stored; the work goes on.
                log.warning("%s: hub refused %d log line(s): %s", run.label, len(item.lines), exc.message)
                body = _without(item.body, "logs")
                if body["outcome"] == "progress" and body["progress"] <= run.sent_progress:
                    return None
                return Item(run, body, [], _json_size(body))
            self._refused(run, exc, token)
            return None
        run.report_failures = 0
        if item.outcome == "progress":
            run.sent_progress = max(run.sent_progress, int(item.body["progress"]))
            return None
        self.runs.reported(run, item.outcome)
        self._log_reported(run, item.outcome, item.body, accepted=bool(answer.get("accepted", True)))
        return None

    def _item_refused(self, item: Item, exc: ApiError, token: str | None) -> None:
        """The whole request of this one item was refused (400/413, say)."""
        if item.lines:
            # As the per-attempt path does with refused lines: drop them; the outcome goes next tick.
            log.warning("%s: hub refused %d log line(s): %s", item.run.label, len(item.lines), exc.message)
            return
        if item.outcome == "progress":
            log.warning("%s: hub refused a progress report: %s", item.run.label, exc.message)
            item.run.sent_progress = max(item.run.sent_progress, int(item.body["progress"]))
            return
        self._refused(item.run, exc, token)

    def _put_back(self, chunks: Iterable[list[Item]]) -> None:
        for chunk in chunks:
            for item in chunk:
                item.run.ctx.logger.put_back(item.lines)

    def _keep(self, chunks: list[list[Item]], exc: HubUnavailable) -> None:
        """The request failed on the way: keep everything, back off the whole batch."""
        self._put_back(chunks)
        self._batch_failures += 1
        delay = self.backoff.delay(self._batch_failures - 1)
        self._batch_retry_at = time.monotonic() + delay
        if self._batch_failures == 1 or self._batch_failures % 10 == 0:
            count = sum(len(chunk) for chunk in chunks)
            log.warning("hub unreachable (%s); keeping %d report(s), retry in %.1fs", exc, count, delay)

    # --- per attempt: POST /tasks/{id}/logs|progress|complete|fail (hubs without /tasks/reports) -----

    def _flush_each(self) -> None:
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
        self._log_reported(run, what, body, accepted=not isinstance(reply, dict) or bool(reply.get("accepted", True)))

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
        return self.client.post(
            f"/tasks/{run.ctx.id}/{what}", body, token=token, max_attempts=1, headers=trace_headers(run)
        )

    # --- shared ----------------------------------------------------------------------------------

    def _log_reported(self, run: Run, what: str, body: dict[str, Any], *, accepted: bool) -> None:
        said = "accepted" if accepted else "already recorded"
        took = "" if run.duration is None else f" in {run.duration:.2f}s"
        if what == "complete":
            log.info("%s: completed%s (%s)", run.label, took, said)
        else:
            retry = "retryable" if body.get("retryable") else "not retryable"
            log.info("%s: failed%s, %s (%s): %s", run.label, took, retry, said, str(body.get("error", ""))[:200])

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


def trace_headers(run: Run) -> dict[str, str]:
    """The `traceparent` header of a report about this attempt: the task's trace context, if any."""
    traceparent = run.ctx.traceparent
    return {"traceparent": traceparent} if traceparent else {}


def _chunks(items: list[Item]) -> Iterator[list[Item]]:
    """Requests of at most REPORTS_MAX_ITEMS items and about REPORTS_MAX_BYTES, one item per task,
    and one trace context per request: a request's `traceparent` header is that of all its items."""
    by_trace: dict[str | None, list[Item]] = {}
    for item in items:
        by_trace.setdefault(item.run.ctx.traceparent, []).append(item)
    for group in by_trace.values():
        yield from _sized_chunks(group)


def _sized_chunks(items: list[Item]) -> Iterator[list[Item]]:
    chunk: list[Item] = []
    size = 0
    tasks: set[int] = set()
    for item in items:
        task_id = item.run.ctx.id
        if chunk and (len(chunk) >= REPORTS_MAX_ITEMS or size + item.size > REPORTS_MAX_BYTES or task_id in tasks):
            yield chunk
            chunk, size, tasks = [], 0, set()
        chunk.append(item)
        size += item.size + 2  # ", " between items
        tasks.add(task_id)
    if chunk:
        yield chunk


def _json_size(body: dict[str, Any]) -> int:
    # As `requests` encodes it: ASCII-only, so non-ASCII text counts as its \u escapes.
    return len(json.dumps(body, allow_nan=False))


def _without(body: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in keys}


def result_problem(result: object) -> str | None:
    """Why the hub would refuse this result, or None if it is fine."""
    try:
        size = len(json.dumps(result, ensure_ascii=False, allow_nan=False).encode("utf-8"))
    except (TypeError, ValueError) as exc:
        return f"the handler's result is not JSON: {exc}"
    if size > MAX_RESULT_BYTES:
        return f"the handler's result is {size} bytes as JSON; the hub takes at most {MAX_RESULT_BYTES}"
    return None
