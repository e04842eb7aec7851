"""The execution-unit runtime: register, heartbeat, claim, run handlers, obey the hub, drain.

Threads: the control loop (the caller's thread: registration, heartbeats, claims, timeouts,
draining, the status line), one reporter thread (logs, progress, results: see `reporter.py`) and
one thread per running attempt, and one claim thread for long-poll claims (`claim_wait`): the
hub holds such a claim until work for the unit's type arrives, and the control loop goes on
heartbeating meanwhile. A heartbeat lists the attempts the unit holds and the hub fails over any
leased task it does not list, except leases younger than its grace (units.services.list_grace):
a claim's reply still on its way is such a lease. Against a hub that refuses `waitSeconds` (400)
or ignores it (no `waitSeconds` echo), the unit polls every `poll_interval` instead.

Heartbeats come every `heartbeatIntervalSeconds` of the hub's replies; while the unit holds nothing,
is ONLINE and its long-poll claims really wait (the hub holds them: it hears the unit through
them, units.idle), every `idleHeartbeatIntervalSeconds` instead, when the hub offers it. The
moment one of those stops being so (a claim hands it a task, a drain, a queue that holds claims
back, a failed claim), the next heartbeat is due one normal interval after the last one.

The loop runs on an injectable clock (`Agent(clock=...)`, `time.monotonic` by default): claim and
heartbeat times, task durations and timeouts, the drain deadline and the status line. Network
retries and the reporter's back-off keep real time.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from queue import SimpleQueue
from typing import Any

from taskhub_unit.client import ApiError, Backoff, HubClient, HubUnavailable
from taskhub_unit.context import TaskContext
from taskhub_unit.execution import process_metadata, run_handler
from taskhub_unit.registration import (
    MAINTENANCE,
    DrainNotes,
    RegistrationRefused,
    UnitEvicted,
    UnitInUse,
    in_use,
    is_evicted,
    is_in_use,
)
from taskhub_unit.reporter import REPORTS_MAX_ITEMS, REPORTS_PATH, Reporter
from taskhub_unit.runs import Run, RunTable
from taskhub_unit.spool import Spool
from taskhub_unit.status import StatusLine

log = logging.getLogger("taskhub_unit.agent")

Handler = Callable[[TaskContext], Any]
CLAIM_DRAIN_WAIT = 2.0
OFFLINE = "OFFLINE"
CLAIM_HELD_AFTER = 1.0  # a long-poll claim unanswered this long is held by the hub (it hears us through it)
MAX_QUEUE_WAIT = 60.0  # the longest a paused or rate-limited queue makes the agent wait between claims
__all__ = ["Agent", "AgentConfig", "RegistrationRefused", "UnitInUse"]


@dataclass
class AgentConfig:
    server: str
    enroll_key: str
    unit_id: str
    unit_type: str
    capacity: int
    handler: Handler
    handler_name: str = ""
    unit_name: str = ""
    endpoint: str = ""
    data_dir: Path = field(default_factory=Path.cwd)
    poll_interval: float = 1.0
    claim_wait: float = 30.0  # long-poll claims: seconds the hub may hold one (0: poll every poll_interval)
    drain_timeout: float = 30.0
    flush_interval: float = 0.5
    request_timeout: float = 10.0
    retry_max: float = 10.0
    metadata: dict[str, Any] = field(default_factory=dict)
    replace: bool = False  # take the unit id over from a live process (first registration only)
    status_interval: float = 30.0  # seconds between status lines; 0: none
    spool: bool = False  # spool final outcomes under data_dir (taskhub_unit.spool); the CLI: --data-dir given


# Tests only (tests/test_agent_e2e.py, chaos crash-after-handler): seconds to wait between a
# handler's return and handing its outcome to the reporter, so a test can kill the process there.
_PAUSE_AFTER_HANDLER = float(os.environ.get("TASKHUB_UNIT_TEST_PAUSE_AFTER_HANDLER") or 0)


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        client: HubClient | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        instance_id: str | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        # This process, to the hub: it refuses a second live process under the same unit id. A
        # process that takes over the spool of a dead one is that unit's process again (run()).
        self.instance_id = instance_id or secrets.token_hex(8)
        self._instance_given = instance_id is not None
        self.spool = Spool(config.data_dir if config.spool else None, config.unit_id)
        self.backoff = Backoff(cap=config.retry_max)
        # Set on the first stop signal: calls stop retrying in place (the loops still go on).
        self.interrupt = threading.Event()
        self.client = client or HubClient(
            config.server, timeout=config.request_timeout, backoff=self.backoff, stop=self.interrupt
        )
        self.runs = RunTable(clock)
        self.runs.on_final = lambda run: self.spool.remove(run.ctx.id, run.ctx.attempt)
        self.status_line = StatusLine(self.runs, interval=config.status_interval, capacity=config.capacity, clock=clock)
        self.reporter = Reporter(
            self.client,
            self.runs,
            backoff=self.backoff,
            interval=config.flush_interval,
            on_unit_unknown=self._token_rejected,
        )
        self.status = "ONLINE"
        self.heartbeat_interval = 10.0
        self.idle_heartbeat_interval = 0.0  # offered by the hub's heartbeat reply (0: none)
        self._claims_wait = False  # the last long-poll claim was held by the hub (not refused, not held back)
        self._last_beat = 0.0  # when the last heartbeat was sent
        self._beat_idle = False  # the next heartbeat was scheduled at the idle interval
        self._draining = threading.Event()
        self._need_register = threading.Event()
        # Held while the token is checked against a rejection and while a registration installs the
        # new one: a 401 for the old token that races a registration must not ask for another.
        self._token_lock = threading.Lock()
        self._heartbeat_failures = 0
        self._claim_failures = 0
        self._queue_paused = False
        # The long-poll claim in flight: (its future, the free slots it asked for, when it began).
        self._claim_job: tuple[Future[Any], int, float] | None = None
        self._claimer: _Worker | None = None
        self._long_poll = config.claim_wait > 0  # off for good once the hub shows it lacks it
        self._registered = False  # once: later registrations never `replace`
        # Registrations in a row with no heartbeat or claim heard in between (a hub that accepts the
        # registration but not the unit's token, e.g. an id it cannot route): each waits longer.
        self._unheard_registrations = 0
        self._heard_since_register = True
        self.drain_notes = DrainNotes(config.unit_id)

    # --- lifecycle ---------------------------------------------------------------------------

    def request_drain(self) -> None:
        """Stop claiming; finish (or, after the grace period, give back) what runs; then exit."""
        self._draining.set()
        self.interrupt.set()
        self.runs.changed.set()

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    def run(self) -> int:
        """Run until drained. Returns the process exit code (0). Raises RegistrationRefused, and
        UnitInUse when another process holds the unit id or takes it over."""
        try:
            return self._run()
        finally:
            self.spool.close()

    def _run(self) -> int:
        if self.spool.open():
            last = self.spool.state(self.config.enroll_key)
            if last.get("instanceId") and not self._instance_given:
                self.instance_id = str(last["instanceId"])
            if not self._replay(last.get("token")):
                log.info("stopped before registering")
                return 0
        if not self._register():
            log.info("stopped before registering")
            return 0
        self.reporter.start()
        replaced: UnitInUse | None = None
        try:
            self._loop()
        except UnitInUse as exc:
            replaced = exc
            # The hub failed over what we held when the other process registered: report nothing more.
            for run in self.runs.live():
                self.runs.drop(run, "abort", "another process took over this unit", source="local")
        finally:
            self.reporter.stop(timeout=self.config.request_timeout + 1)
        log.info("%s", self.status_line.summary())
        if replaced is not None:
            raise replaced
        return 0

    def _loop(self) -> None:
        now = self.clock()
        next_heartbeat = now + self.heartbeat_interval
        next_claim = now
        drain_deadline: float | None = None
        drain_started = 0.0
        while True:
            now = self.clock()
            if self.draining:
                if drain_deadline is None:
                    drain_deadline = now + self.config.drain_timeout
                    drain_started = now
                    self._announce_drain()
                    log.info(
                        "draining: claiming nothing more; %d task(s) to finish within %.0fs",
                        len(self.runs),
                        self.config.drain_timeout,
                    )
                if self._claim_job is not None and self._claim_job[0].done():
                    self._claim_finished(now)  # what it got runs within the grace like the rest
                # A long-poll claim in flight ends when the hub sees the drain (announced above);
                # past CLAIM_DRAIN_WAIT we stop without it (what it may still get fails over).
                claim_done = self._claim_job is None or now >= drain_started + CLAIM_DRAIN_WAIT
                if not len(self.runs) and claim_done:
                    log.info("drained: every task finished and reported")
                    self._last_heartbeat()
                    return
                if now >= drain_deadline:
                    self._give_back()
                    return
            if self._need_register.is_set():
                if self.draining:
                    for run in self.runs.live():
                        self.runs.drop(run, "abort", "the hub no longer knows this unit", source="local")
                    return
                if not self._register():
                    return
            try:
                if self._beat_idle and not self._idle():
                    # Idle no more (a task, a drain, claims that no longer wait): the normal interval.
                    self._beat_idle = False
                    next_heartbeat = min(next_heartbeat, self._last_beat + self.heartbeat_interval)
                if now >= next_heartbeat:
                    next_heartbeat = self._heartbeat(now)
                self.runs.cancel_timed_out(now)
                if self._claim_job is not None and self._claim_job[0].done():
                    next_claim = self._claim_finished(now)
                if self._claim_job is None and self._can_claim() and now >= next_claim:
                    next_claim = self._start_long_poll(now) if self._long_poll else self._claim(now)
            except UnitInUse:
                raise
            except Exception:  # an answer we did not expect must not kill the unit and its tasks
                log.exception("control loop: unexpected error; carrying on")
                next_heartbeat = next_claim = self.clock() + self.backoff.delay(2)
            line = self.status_line.tick(self.status, now)
            if line:
                log.info("%s", line)
            can_claim = self._can_claim() and self._claim_job is None
            wake_at = min(next_heartbeat, next_claim if can_claim else now + 1.0, now + 1.0, self.status_line.next_at)
            if drain_deadline is not None:
                wake_at = min(wake_at, drain_deadline)
            self.runs.changed.wait(max(wake_at - self.clock(), 0.0))
            self.runs.changed.clear()

    # --- registration --------------------------------------------------------------------------

    def _metadata(self) -> dict[str, Any]:
        return process_metadata(self.config.metadata, self.config.handler_name, draining=self.draining)

    def _register(self) -> bool:
        """Register (again), retrying until the hub answers. A re-registration makes the hub
        fail over every attempt we held, so they are dropped here. False: stopped meanwhile."""
        cfg = self.config
        if self._registered and not self._heard_since_register:
            self._unheard_registrations += 1
            wait = self.backoff.delay(self._unheard_registrations)
            log.warning(
                "registering unit %s again although the hub heard nothing from it since the last registration "
                "(%d in a row); waiting %.1fs first",
                cfg.unit_id,
                self._unheard_registrations,
                wait,
            )
            if self.interrupt.wait(wait):
                return False
        replacing = cfg.replace and not self._registered
        body = {
            "id": cfg.unit_id,
            "unitType": cfg.unit_type,
            "unitName": cfg.unit_name or cfg.unit_id,
            "capacity": cfg.capacity,
            "endpoint": cfg.endpoint,
            "metadata": self._metadata(),
            "instanceId": self.instance_id,
            **({"replace": True} if replacing else {}),
        }
        try:
            # Retries in place until the hub answers, or a stop signal interrupts.
            reply = self.client.post("/execution-units/register", body, token=cfg.enroll_key)
        except HubUnavailable as exc:
            log.warning("registration interrupted: %s", exc)
            return False
        except ApiError as exc:
            if is_in_use(exc):
                raise in_use(exc, cfg.unit_id, self.instance_id, registered_before=self._registered) from None
            if is_evicted(exc):
                raise UnitEvicted(exc, cfg.unit_id) from None
            raise RegistrationRefused(f"the hub refused to register unit {cfg.unit_id}: {exc}") from None
        self._registered = True
        self._heard_since_register = False
        with self._token_lock:
            self.client.token = str(reply["token"])
            self._need_register.clear()
        self.spool.save_state(self.instance_id, self.client.token, self.config.enroll_key)
        if reply.get("clearedDrainAt"):
            log.info("cleared this unit's own drain from its last shutdown (drained at %s)", reply["clearedDrainAt"])
        self._apply_status(reply)
        for run in self.runs.live():
            self.runs.drop(run, "abort", "unit registered again, so the hub failed over its attempts", source="local")
        took_over = "; --replace: took the id over from any process holding it" if replacing else ""
        log.info(
            f"registered unit {cfg.unit_id} (type {cfg.unit_type}, capacity {cfg.capacity}, instance "
            f"{self.instance_id}{took_over}) with {self.client.base_url}: status {self.status}, heartbeat "
            f"every {self.heartbeat_interval:.1f}s"
        )
        return True

    def _heard(self) -> None:
        """The hub accepted a heartbeat or claim with our token: registering again is not a loop."""
        self._heard_since_register = True
        self._unheard_registrations = 0

    def _token_rejected(self, token: str | None) -> None:
        with self._token_lock:
            if token is None or token != self.client.token or self._need_register.is_set():
                return
            log.warning("the hub no longer knows this unit's token; registering again")
            self._need_register.set()
        self.runs.changed.set()

    def _apply_status(self, reply: dict[str, Any]) -> None:
        status = reply.get("status") or reply.get("unitStatus")
        if status == MAINTENANCE and "status" in reply:
            # Register and heartbeat replies say who drained it; a claim's does not.
            self.drain_notes.see(reply, draining=self.draining)
        if status and status != self.status:
            if self.status == MAINTENANCE and status != MAINTENANCE:
                log.info("unit is %s again: claiming", status)
                self.drain_notes.reset()
            self.status = str(status)
        interval = reply.get("heartbeatIntervalSeconds")
        if interval:
            self.heartbeat_interval = max(float(interval), 0.05)
        if "idleHeartbeatIntervalSeconds" in reply:  # heartbeat replies (claims' do not say)
            self.idle_heartbeat_interval = float(reply["idleHeartbeatIntervalSeconds"] or 0)

    def _idle(self) -> bool:
        """Whether the idle heartbeat interval applies now: the hub offered one, this unit holds
        nothing, is ONLINE and not draining, and its long-poll claims wait at the hub."""
        job = self._claim_job
        held = job is not None and self.clock() - job[2] >= CLAIM_HELD_AFTER
        return (
            self.idle_heartbeat_interval > self.heartbeat_interval
            and self._long_poll
            and (self._claims_wait or held)
            and self.status == "ONLINE"
            and not self.draining
            and not self._need_register.is_set()
            and not len(self.runs)
        )

    # --- heartbeat -----------------------------------------------------------------------------

    def _heartbeat(self, now: float) -> float:
        """Send one heartbeat (retrying within one interval); apply its commands. Returns when
        the next one is due."""
        token = self.client.token
        self._last_beat, self._beat_idle = now, False
        body = {
            "currentLoad": len(self.runs),
            "metadata": self._metadata(),
            "tasks": self.runs.heartbeat_list(),
            "instanceId": self.instance_id,
        }
        try:
            reply = self.client.post(
                f"/execution-units/{self.config.unit_id}/heartbeat",
                body,
                deadline=time.monotonic() + self.heartbeat_interval,  # the client's retries keep real time
                backoff=self.backoff.capped(self.heartbeat_interval / 2),
            )
        except HubUnavailable as exc:
            self._heartbeat_failures += 1
            if self._heartbeat_failures == 1 or self._heartbeat_failures % 10 == 0:
                log.warning("heartbeat failed (%s); still trying", exc)
            return self.clock() + self.backoff.capped(self.heartbeat_interval).delay(self._heartbeat_failures)
        except ApiError as exc:
            if is_in_use(exc):
                raise in_use(exc, self.config.unit_id, self.instance_id, registered_before=True) from None
            if exc.unit_unknown:
                self._token_rejected(token)
            else:
                log.error("heartbeat refused: %s", exc)
            return self.clock() + self.heartbeat_interval
        self._heard()
        if self._heartbeat_failures:
            log.info("heartbeat: the hub is back after %d failed attempt(s)", self._heartbeat_failures)
            self._heartbeat_failures = 0
        self._apply_status(reply)
        for command in reply.get("commands") or []:
            run = self.runs.get(int(command["taskId"]), int(command["attempt"]))
            if run is not None:
                self.runs.drop(run, str(command["command"]), str(command.get("reason", "")))
        lost = reply.get("failedOver") or []
        if lost:
            log.warning("the hub failed over %d task(s) this unit did not list: %s", len(lost), lost)
        self._beat_idle = self._idle()
        return now + (self.idle_heartbeat_interval if self._beat_idle else self.heartbeat_interval)

    # --- claims --------------------------------------------------------------------------------

    def _can_claim(self) -> bool:
        return (
            not self.draining
            and not self._need_register.is_set()
            and self.status not in (MAINTENANCE, OFFLINE)
            and self.runs.busy() < self.config.capacity
        )

    def _start_long_poll(self, now: float) -> float:
        """Send a long-poll claim from the claim thread; its end wakes the loop (`runs.changed`)."""
        wanted = min(self.config.capacity - self.runs.busy(), 100)
        body = {"max": wanted, "instanceId": self.instance_id, "waitSeconds": self.config.claim_wait}
        if self._claimer is None:
            self._claimer = _Worker("taskhub-claim")
        future = self._claimer.submit(
            self.client.post,
            f"/execution-units/{self.config.unit_id}/claim",
            body,
            max_attempts=1,
            timeout=self.config.claim_wait + self.config.request_timeout,
        )
        future.add_done_callback(lambda _: self.runs.changed.set())
        self._claim_job = (future, wanted, self.clock())
        return now

    def _claim_finished(self, now: float) -> float:
        """The long-poll claim came back: start what it got; returns when to claim next."""
        assert self._claim_job is not None
        future, wanted, began = self._claim_job
        self._claim_job = None
        self._claims_wait = False  # until this reply shows the hub held the claim
        poll = self.config.poll_interval * random.uniform(0.8, 1.2)
        try:
            reply = future.result()
        except ApiError as exc:
            if exc.status == 400 and "waitSeconds" in str(exc.details) + exc.message:
                log.warning("the hub does not take long-poll claims (waitSeconds): polling every %.1fs", poll)
                self._long_poll = False
                return now
            return self._claim_failed(exc, poll, self.client.token)
        except HubUnavailable as exc:
            return self._claim_failed(exc, poll, self.client.token)
        self._claim_failures = 0
        reply = reply or {}
        empty = not reply.get("items", reply.get("tasks"))
        # A hub that ignores waitSeconds answers an empty claim at once, with no echo: poll it instead.
        if "waitSeconds" not in reply and empty and self.clock() - began < self.config.claim_wait / 2:
            log.warning("the hub answered a long-poll claim at once: polling every %.1fs", poll)
            self._long_poll = False
        # Held by the hub (it hears us through it): it gave a wait and no queue setting held it back.
        self._claims_wait = float(reply.get("waitSeconds") or 0) > 0 and not reply.get("queue")
        at = self._claim_reply(reply, wanted, now, poll)
        # An empty long poll the hub ended early (it caps waits, or the unit was drained): never
        # claim again sooner than a poll would have.
        return max(at, began + poll) if empty else at

    def _claim_failed(self, exc: Exception, poll: float, token: str | None) -> float:
        if isinstance(exc, HubUnavailable):
            self._claim_failures += 1
            if self._claim_failures == 1:
                log.warning("claim failed (%s); backing off", exc)
            return self.clock() + max(poll, self.backoff.delay(self._claim_failures - 1))
        assert isinstance(exc, ApiError)
        if is_in_use(exc):
            raise in_use(exc, self.config.unit_id, self.instance_id, registered_before=True) from None
        if exc.unit_unknown:
            self._token_rejected(token)
        else:
            log.error("claim refused: %s", exc)
        return self.clock() + poll

    def _claim_reply(self, reply: dict[str, Any], wanted: int, now: float, poll: float) -> float:
        self._heard()
        self._apply_status(reply)
        tasks = reply.get("items", reply.get("tasks")) or []  # `tasks`: hubs before the rename
        for task in tasks:
            self._start(task)
        if tasks and len(tasks) == wanted:
            return now  # the queue may hold more: claim again as soon as a slot is free
        hold = self._queue_hold(reply, got=bool(tasks))
        if hold > 0:
            return self.clock() + max(poll, hold)
        # A claim the queue's settings held back comes back at once (the hub does not wait on it).
        if self._long_poll and not tasks and not self.draining and not reply.get("queue"):
            return self.clock()  # the wait is over: wait again at once
        return self.clock() + poll

    def _claim(self, now: float) -> float:
        """Claim up to the free capacity; start the tasks. Returns when to claim next."""
        free = self.config.capacity - self.runs.busy()
        wanted = min(free, 100)
        token = self.client.token
        poll = self.config.poll_interval * random.uniform(0.8, 1.2)
        try:
            # One try: a claim whose reply was lost is not repeated blindly; the hub fails those
            # leases over at our next heartbeat, which does not list them.
            body = {"max": wanted, "instanceId": self.instance_id}
            reply = self.client.post(f"/execution-units/{self.config.unit_id}/claim", body, max_attempts=1)
        except (HubUnavailable, ApiError) as exc:
            return self._claim_failed(exc, poll, token)
        self._claim_failures = 0
        return self._claim_reply(reply, wanted, now, poll)

    def _queue_hold(self, reply: dict[str, Any], *, got: bool) -> float:
        """How long the hub asked us to wait (its queue is paused or its rate limit is used up):
        claiming sooner would only spin. Capped, so a resume is seen within a minute."""
        queue = reply.get("queue") or {}
        wait = queue.get("retryAfterSeconds")
        paused = bool(queue.get("paused"))
        if paused != self._queue_paused:
            self._queue_paused = paused
            state = "paused: backing off" if paused else "claimable again"
            log.info("queue %s is %s", queue.get("taskType", "") or self.config.unit_id, state)
        if got or not isinstance(wait, int | float) or wait <= 0:
            return 0.0
        return min(float(wait), MAX_QUEUE_WAIT)

    def _start(self, task: dict[str, Any]) -> None:
        ctx = TaskContext(task, unit_id=self.config.unit_id, data_dir=self.config.data_dir)
        run = Run(ctx, started=self.clock())
        self.runs.add(run)
        log.info("%s: claimed (%s)", run.label, task.get("name", ""))
        thread = threading.Thread(target=self._execute, args=(run,), name=f"task-{ctx.id}-{ctx.attempt}", daemon=True)
        thread.start()

    # --- running a handler ---------------------------------------------------------------------

    def _execute(self, run: Run) -> None:
        outcome = run_handler(self.config.handler, run)
        if not run.dead:
            # On disk before the reporter may send it: a death from here on does not lose it.
            try:
                self.spool.save(run.ctx.id, run.ctx.attempt, *outcome)
            except OSError as exc:  # a full disk, say: report it all the same, unspooled
                log.error("%s: could not spool the outcome (%s); reporting it without", run.label, exc)
        if _PAUSE_AFTER_HANDLER:  # tests only: widen the window a crash after the handler falls in
            time.sleep(_PAUSE_AFTER_HANDLER)
        if self.runs.handler_finished(run, outcome):
            self.reporter.wake.set()

    # --- replaying what the last process left ----------------------------------------------------

    def _replay(self, token: Any) -> bool:
        """Send the outcomes the last process spooled, with its token, before registering (which
        fails over the attempts the unit held). Retries until the hub answers; False: stopped
        meanwhile. Every outcome the hub answered (accepted, already recorded, refused) is removed."""
        items = self.spool.pending()
        if not items:
            return True
        if not token:
            log.warning("%d spooled result(s) but no unit token to send them with: dropped", len(items))
            self._forget(items)
            return True
        log.info("replaying %d result(s) the last process of this unit spooled", len(items))
        for start in range(0, len(items), REPORTS_MAX_ITEMS):
            chunk = items[start : start + REPORTS_MAX_ITEMS]
            try:
                reply = self.client.post(REPORTS_PATH, {"reports": chunk}, token=str(token))
            except HubUnavailable as exc:
                log.warning("replay interrupted: %s", exc)
                return False
            except ApiError as exc:
                log.warning("the hub refused the spooled result(s) (%s): dropped; their tasks run again", exc)
                self._forget(chunk)
                continue
            answers = reply.get("items") if isinstance(reply, dict) else None
            for item, answer in zip(chunk, answers if isinstance(answers, list) else [], strict=False):
                label = f"task {item['taskId']} attempt {item['attempt']}"
                error = answer.get("error") if isinstance(answer, dict) else None
                if error:
                    message = error.get("message") if isinstance(error, dict) else error
                    log.warning("%s: spooled %s refused by the hub: %s", label, item["outcome"], message)
                else:
                    said = "accepted" if answer.get("accepted") else "already recorded"
                    log.info("%s: spooled %s replayed (%s)", label, item["outcome"], said)
            self._forget(chunk)
        return True

    def _forget(self, items: list[dict[str, Any]]) -> None:
        for item in items:
            self.spool.remove(item["taskId"], item["attempt"])

    # --- draining ------------------------------------------------------------------------------

    def _announce_drain(self) -> None:
        """Tell the hub this unit is draining (MAINTENANCE), so it shows as such at once.
        Best effort: one attempt; the drain goes on whatever the hub answers."""
        try:
            self.client.request(
                "PATCH", f"/execution-units/{self.config.unit_id}", {"status": "MAINTENANCE"}, max_attempts=1
            )
        except Exception as exc:  # never let the announcement stop a drain
            log.info("could not mark the unit MAINTENANCE on the hub: %s", type(exc).__name__)

    def _give_back(self) -> None:
        """The grace period is over: stop the handlers still running, deliver what can be
        delivered, then send the last heartbeat, which lists nothing: the hub fails over at once
        whatever this unit still held (a failover uses up no retry)."""
        unfinished = [run for run in self.runs.live() if run.outcome is None]
        for run in unfinished:
            reason = "drain grace period over, giving the task back"
            self.runs.drop(run, "shutdown", reason, source="local", ending="givenBack")
        self.reporter.stop(timeout=self.config.request_timeout + 1)
        self.reporter.flush()
        undelivered = len(self.runs)
        self._last_heartbeat()
        log.warning(
            "drain grace period over: %d unfinished task(s) given back, %d result(s) not delivered",
            len(unfinished),
            undelivered,
        )

    def _last_heartbeat(self) -> None:
        """Tell the hub this process is stopping: it marks the unit OFFLINE (so the next process
        may register as it at once) and fails over anything still leased to it (none is listed).
        One attempt: if it is lost, the hub does both after the heartbeat timeout."""
        body = {"currentLoad": 0, "metadata": self._metadata(), "tasks": [], "instanceId": self.instance_id}
        try:
            self.client.post(
                f"/execution-units/{self.config.unit_id}/heartbeat", {**body, "stopping": True}, max_attempts=1
            )
        except (HubUnavailable, ApiError) as exc:
            log.warning(
                "could not send the last heartbeat (%s): the hub fails over what this unit held and marks it "
                "OFFLINE after the heartbeat timeout",
                exc,
            )


class _Worker:
    """One daemon thread running calls in turn (its HTTP session, and so its connection, stays);
    a daemon, so a process stopping never waits for a long-poll claim to come back."""

    def __init__(self, name: str) -> None:
        self.calls: SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = SimpleQueue()
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self.calls.put((future, fn, args, kwargs))
        return future

    def _run(self) -> None:
        while True:
            future, fn, args, kwargs = self.calls.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)
