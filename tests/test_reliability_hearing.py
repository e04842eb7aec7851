"""Issue 18, findings 1 and 12: the hub's own outage fails no live work over (units.hearing), and
liveness uses the database's clock (node clocks may skew). The periodic sweep is run as beat runs
it (`run_job`), at the times of a scripted outage; units heartbeat at explicit times."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

import pytest
import time_machine
from django.core.management import call_command
from django.utils import timezone

from taskhub.jobs.runner import run_job
from tasks.models import Task, TaskStatusHistory
from tests import factories
from units.models import ExecutionUnit
from units.services import unit_heartbeat, unit_register

pytestmark = pytest.mark.django_db
TIMEOUT, INTERVAL, SWEEP = 30.0, 10.0, 5.0


@pytest.fixture(autouse=True)
def production_knobs(settings):
    settings.UNIT_HEARTBEAT_TIMEOUT = TIMEOUT
    settings.UNIT_HEARTBEAT_INTERVAL = INTERVAL
    settings.SWEEP_INTERVAL = SWEEP
    settings.HUB_OUTAGE_GRACE = 300.0
    settings.TASK_MAX_FAILOVER_COUNT = 1


@pytest.fixture
def t0() -> datetime:
    return timezone.now().replace(microsecond=0) - timedelta(hours=1)


def beat(t0: datetime, start: float, stop: float) -> Iterable[tuple[float, dict[str, int]]]:
    """The sweep every SWEEP seconds from t0+start to t0+stop (inclusive)."""
    at = start
    while at <= stop:
        yield at, run_job("sweep_heartbeats", t0 + timedelta(seconds=at))
        at += SWEEP


def heartbeat_all(units: list[ExecutionUnit], when: datetime) -> None:
    for unit in units:
        leased = Task.objects.filter(unit_id=unit.pk, status="RUNNING").values_list("id", "attempt")
        tasks = [{"id": tid, "attempt": att} for tid, att in leased]
        unit_heartbeat(unit.pk, current_load=len(tasks), metadata=None, tasks=tasks, now=when)


def fleet(t0: datetime, n: int = 3) -> tuple[list[ExecutionUnit], list[Task]]:
    units = [factories.unit(f"u{i}", now=t0) for i in range(n)]
    tasks = [t for unit in units for t in factories.leased_tasks(unit, 2, now=t0)]
    return units, tasks


def healthy(units: list[ExecutionUnit], t0: datetime, start: float, stop: float) -> int:
    """Units heartbeat every INTERVAL and beat sweeps every SWEEP from `start` to `stop`; returns
    the tasks failed over."""
    moved = 0
    at = start
    while at <= stop:
        if at % INTERVAL == 0:
            heartbeat_all(units, t0 + timedelta(seconds=at))
        moved += run_job("sweep_heartbeats", t0 + timedelta(seconds=at))["failedOver"]
        at += SWEEP
    return moved


def running(tasks: list[Task]) -> int:
    return Task.objects.filter(pk__in=[t.pk for t in tasks], status="RUNNING").count()


def test_a_web_outage_longer_than_the_timeout_fails_no_live_work_over(t0):
    """The API down 60 s (worker and beat up): every unit lived; nothing fails over, during the
    outage or after it (on main: every task failed over 30 s into the outage)."""
    units, tasks = fleet(t0)
    assert healthy(units, t0, 0, 30) == 0
    assert sum(c["failedOver"] + c["unitsOffline"] for _, c in beat(t0, 35, 95)) == 0  # no heartbeat heard
    assert healthy(units, t0, 100, 200) == 0  # they heartbeat again (the first at 100)
    assert running(tasks) == len(tasks)
    assert set(ExecutionUnit.objects.values_list("status", flat=True)) <= {"ONLINE", "BUSY"}


@pytest.mark.parametrize("web_back_at", [60.0, 80.0])
def test_a_full_restart_with_beat_back_first_fails_no_live_work_over(t0, web_back_at):
    """Web, worker and beat down from 30 s; beat is back at 55 s, the web (and so the heartbeats) at
    `web_back_at`: the first sweep is late and knows nothing of the gap, later ones hear nobody."""
    units, tasks = fleet(t0)
    assert healthy(units, t0, 0, 30) == 0
    assert sum(c["failedOver"] for _, c in beat(t0, 55, web_back_at - 5)) == 0
    assert healthy(units, t0, web_back_at, web_back_at + 120) == 0
    assert running(tasks) == len(tasks)


def test_beat_back_late_gives_units_a_timeout_to_heartbeat(t0):
    """Everything down from 30 s; the web is back first (75 s), one unit's heartbeat is slow to come
    (95 s), beat is back last (80 s): the late sweep cannot know when the web came back, so the slow
    unit keeps its work."""
    units, tasks = fleet(t0)
    assert healthy(units, t0, 0, 30) == 0
    heartbeat_all(units[:2], t0 + timedelta(seconds=75))
    assert sum(c["failedOver"] for _, c in beat(t0, 80, 90)) == 0
    assert healthy(units, t0, 100, 200) == 0
    assert running(tasks) == len(tasks)


def test_a_dead_unit_on_a_healthy_hub_is_failed_over_within_the_timeout_and_counted(t0):
    """I5 held: the others are heard, so the dead unit's silence is its own."""
    units, tasks = fleet(t0)
    healthy(units, t0, 0, 20)
    dead = units[0]
    moved_at = None
    at = 25.0
    while moved_at is None and at < 120:
        if at % INTERVAL == 0:
            heartbeat_all(units[1:], t0 + timedelta(seconds=at))
        if run_job("sweep_heartbeats", t0 + timedelta(seconds=at))["failedOver"]:
            moved_at = at
        at += SWEEP
    assert moved_at is not None and moved_at - 20 <= TIMEOUT + SWEEP  # last heartbeat at 20
    lost = Task.objects.filter(pk__in=[t.pk for t in tasks[:2]])
    assert {(t.status, t.failover_count) for t in lost} == {("PENDING", 1)}
    assert ExecutionUnit.objects.get(pk=dead.pk).status == "OFFLINE"


def test_every_unit_silent_is_believed_for_the_outage_grace_then_failed_over_uncounted(t0, settings):
    """The hub cannot tell its outage from the death of every unit: past HUB_OUTAGE_GRACE it fails
    them over anyway, and it does not count it toward poison."""
    settings.HUB_OUTAGE_GRACE = 60.0
    units, tasks = fleet(t0, 2)
    healthy(units, t0, 0, 20)
    first = None
    for at, counts in beat(t0, 25, 150):
        if counts["failedOver"] and first is None:
            first = at
    assert first is not None and TIMEOUT + 60 < first - 20 <= TIMEOUT + 60 + SWEEP
    assert {(t.status, t.failover_count) for t in Task.objects.filter(pk__in=[t.pk for t in tasks])} == {("PENDING", 0)}


def test_failovers_while_the_hub_recovers_never_make_a_task_poison(t0):
    """TASK_MAX_FAILOVER_COUNT=1 and two outages; after each, the unit holding the task re-registers
    (its process restarted), which fails its attempt over while the hub recovers: not counted, so
    the task is never FAILED as poison (on main: poison at the second outage)."""
    from units.claim import claim_tasks

    key, _ = factories.api_key()
    units = [factories.unit(f"u{i}", now=t0, owner=key) for i in range(2)]
    (task,) = factories.leased_tasks(units[0], 1, now=t0)
    assert healthy(units, t0, 0, 30) == 0
    for start in (35.0, 300.0):
        list(beat(t0, start, start + 50))  # nobody heard for 50 s
        back = t0 + timedelta(seconds=start + 55)
        data = {"id": "u0", "unit_type": "DATA_PROCESSING", "unit_name": "u0", "capacity": 5}
        unit_register(owner=key, data=data, now=back)
        assert Task.objects.get(pk=task.pk).status == "PENDING"
        assert [t.pk for t in claim_tasks("u0", 1, now=back)] == [task.pk]
        healthy(units, t0, start + 60, start + 200)
    stored = Task.objects.get(pk=task.pk)
    assert (stored.status, stored.failover_count) == ("RUNNING", 0), (stored.status, stored.error)
    assert not TaskStatusHistory.objects.filter(task_id=task.pk, reason_code="poisoned").exists()


def test_liveness_uses_the_database_clock_whatever_the_nodes_clock(t0, api, settings):
    """A web node whose clock runs 2 minutes ahead stamps the heartbeat, a worker whose clock runs
    2 minutes behind sweeps: both use the database's clock, so the live unit stays live (on main
    the stamp came from the web node's clock and the sweep compared it with its own)."""
    now = timezone.now()
    units = [factories.unit(f"u{i}", now=now) for i in range(2)]
    tasks = [factories.leased_task(unit, now=now) for unit in units]
    factories.hub_listening(now)
    with time_machine.travel(now + timedelta(minutes=2), tick=True):
        for unit in units:
            unit_heartbeat(unit.pk, current_load=1, metadata=None, tasks=None)
    stamps = list(ExecutionUnit.objects.values_list("last_heartbeat_at", flat=True))
    assert all(abs((stamp - now).total_seconds()) < 30 for stamp in stamps), stamps
    with time_machine.travel(now + timedelta(minutes=2), tick=True):
        call_command("runjob", "sweep_heartbeats")
    with time_machine.travel(now - timedelta(minutes=2), tick=True):
        call_command("runjob", "sweep_heartbeats")
    assert running(tasks) == 2


def test_a_unit_dead_before_the_outage_keeps_the_silence_it_had_before(t0):
    """A unit dies at 20 s (last heartbeat); the web is down from 35 s to 80 s. Its silence while
    the hub listened: 15 s before the gap, so it fails over about 15 s after the hub hears again,
    not a whole timeout later; the live units keep their work."""
    units, tasks = fleet(t0)
    healthy(units, t0, 0, 20)
    heartbeat_all(units[1:], t0 + timedelta(seconds=30))
    assert sum(c["failedOver"] for _, c in beat(t0, 25, 75)) == 0
    moved_at = None
    at = 80.0
    while moved_at is None and at < 200:
        if at % INTERVAL == 0:
            heartbeat_all(units[1:], t0 + timedelta(seconds=at))
        if run_job("sweep_heartbeats", t0 + timedelta(seconds=at))["failedOver"]:
            moved_at = at
        at += SWEEP
    assert moved_at is not None and moved_at - 80 < TIMEOUT, moved_at
    assert running(tasks[2:]) == 4 and running(tasks[:2]) == 0


# --- idle units: heard by the claims a serving web process holds (units.idle) -----------------------

IDLE = 60.0  # UNIT_IDLE_HEARTBEAT_INTERVAL's default


def idle_fleet(t0: datetime, n: int = 3) -> list[ExecutionUnit]:
    return [factories.unit(f"i{i}", now=t0) for i in range(n)]


def stamped_waiting(units: list[ExecutionUnit], when: datetime) -> None:
    """What a serving web process holding their claims writes every INTERVAL (idle.stamp_waiting, at
    a scripted time)."""
    ExecutionUnit.objects.filter(pk__in=[u.pk for u in units]).update(last_waited_at=when)


def test_with_every_other_unit_idle_a_dead_busy_unit_still_fails_over_within_the_bound(t0):
    """The idle units heartbeat once a minute, their held claims are stamped every INTERVAL: the hub
    hears them (units.hearing.newest_heard), so the silence of the busy unit that died at 20 s is its
    own and it fails over within UNIT_HEARTBEAT_TIMEOUT + SWEEP_INTERVAL, counted (I5). Were the
    stamps not heard, no heartbeat for 2 intervals would look like the hub's outage, and it would
    wait for HUB_OUTAGE_GRACE (300 s)."""
    (busy,), tasks = fleet(t0, 1)
    idle = idle_fleet(t0)
    heartbeat_all([busy, *idle], t0)
    moved_at, at = None, 5.0
    while moved_at is None and at < 200:
        when = t0 + timedelta(seconds=at)
        if at % INTERVAL == 0:
            stamped_waiting(idle, when)
            if at <= 20:
                heartbeat_all([busy], when)
        if at % IDLE == 0:
            heartbeat_all(idle, when)
        if run_job("sweep_heartbeats", when)["failedOver"]:
            moved_at = at
        at += SWEEP
    assert moved_at is not None and moved_at - 20 <= TIMEOUT + SWEEP, moved_at
    assert {(t.status, t.failover_count) for t in Task.objects.filter(pk__in=[t.pk for t in tasks])} == {("PENDING", 1)}
    states = dict(ExecutionUnit.objects.values_list("id", "status"))
    assert states.pop("u0") == "OFFLINE" and set(states.values()) == {"ONLINE"}  # heard idle units stay


def test_a_web_outage_with_idle_units_fails_no_live_work_over_and_idle_units_stay(t0):
    """The web down from 30 s to 90 s (worker and beat up; a draining process stamps no more, so the
    stamps stop with the heartbeats): nothing fails over, no idle unit goes OFFLINE; once the web is
    back the stamps and heartbeats carry on."""
    units, tasks = fleet(t0, 2)
    idle = idle_fleet(t0)
    heartbeat_all(idle, t0)
    for at in range(0, 31, 5):
        when = t0 + timedelta(seconds=at)
        if at % INTERVAL == 0:
            heartbeat_all(units, when)
            stamped_waiting(idle, when)
        assert run_job("sweep_heartbeats", when)["failedOver"] == 0
    assert sum(c["failedOver"] + c["unitsOffline"] for _, c in beat(t0, 35, 85)) == 0
    for at in range(90, 250, 5):
        when = t0 + timedelta(seconds=at)
        if at % INTERVAL == 0:
            heartbeat_all(units, when)
            stamped_waiting(idle, when)
        counts = run_job("sweep_heartbeats", when)
        assert counts["failedOver"] + counts["unitsOffline"] == 0, at
    assert running(tasks) == len(tasks)


def test_idle_units_stamped_while_the_others_heartbeats_go_unheard_is_what_a_draining_process_must_not_do(t0):
    """Why the draining process stops stamping: were the idle units still stamped while no heartbeat
    reaches the hub, it would believe it hears and fail the live busy units over a timeout later
    (the chaos outage-web I6 failure). This pins the rule the drain relies on, not a bug."""
    units, tasks = fleet(t0, 2)
    idle = idle_fleet(t0)
    for at in range(0, 31, 5):
        when = t0 + timedelta(seconds=at)
        if at % INTERVAL == 0:
            heartbeat_all([*units, *idle], when)
            stamped_waiting(idle, when)
        run_job("sweep_heartbeats", when)
    moved = 0
    for at in range(35, 90, 5):
        when = t0 + timedelta(seconds=at)
        if at % INTERVAL == 0:
            stamped_waiting(idle, when)  # a web process holding their claims, taking no heartbeat
        moved += run_job("sweep_heartbeats", when)["failedOver"]
    assert moved == len(tasks)
