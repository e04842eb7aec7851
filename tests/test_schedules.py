"""Recurring schedules: the API (cron in a time zone, template, overlap, catch-up, pause/resume, the
next five fire times, 400s naming the field, ownership) and the beat job (one task per schedule and
fire time, with two jobs at once, after a crash mid-fire, and on MariaDB with several processes)."""

from __future__ import annotations

import multiprocessing
import traceback
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.db import connection, connections
from django.test import override_settings

from taskhub.base.actors import Actor
from taskhub.schedules import firing
from taskhub.schedules.firing import fire_schedules
from taskhub.schedules.models import FireOutcome, Schedule, ScheduleFire
from taskhub.schedules.services import schedule_create
from tasks.models import Task, TaskStatusHistory
from tasks.states import TaskStatus
from tasks.transitions import verbs
from tests.conftest import JsonClient

S = TaskStatus
pytestmark = pytest.mark.django_db
API = "/api/v1/schedules"
T0 = datetime(2030, 1, 15, 11, 59, 30, tzinfo=UTC)  # winter: Europe/Berlin is UTC+1
TEMPLATE = {"name": "nightly export", "taskType": "EXPORT", "priority": 3, "config": {"full": True}}


def _body(**extra: Any) -> dict[str, Any]:
    return {"name": "export", "cron": "0 9 * * *", "timezone": "Europe/Berlin", "template": TEMPLATE, **extra}


def _schedule(**fields: Any) -> Schedule:
    base = {"name": "s", "cron": "* * * * *", "timezone": "UTC", "template": TEMPLATE}
    return schedule_create(owner=fields.pop("owner", None), fields={**base, **fields}, now=fields.pop("now", T0))


# --- API --------------------------------------------------------------------------------------


def test_create_returns_the_next_five_fire_times_in_the_time_zone(client_a: JsonClient) -> None:
    with time_machine.travel(T0, tick=False):
        response = client_a.post(API, _body())
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["nextFireTimes"][:2] == ["2030-01-16T08:00:00Z", "2030-01-17T08:00:00Z"]  # 09:00 in Berlin
    assert len(body["nextFireTimes"]) == 5 and body["nextFireAt"] == body["nextFireTimes"][0]
    assert body["template"] == TEMPLATE and body["overlap"] == "skip" and body["catchupSeconds"] == 300


def test_fire_times_follow_the_zone_across_a_dst_change(client_a: JsonClient) -> None:
    with time_machine.travel(datetime(2030, 3, 29, 12, tzinfo=UTC), tick=False):  # DST starts on 31 March
        times = client_a.post(API, _body()).json()["nextFireTimes"]
    assert times[:3] == ["2030-03-30T08:00:00Z", "2030-03-31T07:00:00Z", "2030-04-01T07:00:00Z"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * *"}, "cron"),
        ({"cron": "0 0 30 2 *"}, "cron"),  # never fires
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"timezone": "../etc/passwd"}, "timezone"),
        ({"template": {"taskType": "X"}}, "template.name"),
        ({"template": {"name": "n", "taskType": "has space"}}, "template.taskType"),
        ({"template": {"name": "n", "taskType": "X", "priority": 5000}}, "template.priority"),
        ({"template": {"name": "n", "taskType": "X", "scheduledAt": "2030-01-01T00:00:00Z"}}, "template.scheduledAt"),
        ({"template": "not an object"}, "template"),
        ({"overlap": "queue"}, "overlap"),
        ({"catchupSeconds": 1}, "catchupSeconds"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(client_a: JsonClient, body: dict[str, Any], field: str) -> None:
    response = client_a.post(API, _body(**body))
    assert response.status_code == 400, response.json()
    assert field in response.json()["details"]["fields"], response.json()
    assert Schedule.objects.count() == 0


def test_a_bad_patch_is_a_400_and_changes_nothing(client_a: JsonClient) -> None:
    created = client_a.post(API, _body()).json()
    for body, field in (({"cron": "bad"}, "cron"), ({"timezone": "Nowhere/City"}, "timezone"), ({"x": 1}, "x")):
        response = client_a.patch(f"{API}/{created['id']}", body)
        assert response.status_code == 400 and field in response.json()["details"]["fields"]
    assert client_a.get(f"{API}/{created['id']}").json() == created


def test_pause_and_resume(client_a: JsonClient) -> None:
    with time_machine.travel(T0, tick=False) as clock:
        created = client_a.post(API, _body(cron="*/10 * * * *", timezone="UTC")).json()
        paused = client_a.patch(f"{API}/{created['id']}", {"paused": True}).json()
        assert paused["paused"] is True and paused["nextFireTimes"] == []
        clock.shift(3600)
        assert fire_schedules(datetime.now(UTC))["created"] == 0
        resumed = client_a.patch(f"{API}/{created['id']}", {"paused": False}).json()
    # From now on: the fires missed while paused are not caught up.
    assert resumed["nextFireAt"] == "2030-01-15T13:00:00Z"


def test_patch_changes_the_cron_and_the_next_fire_times(client_a: JsonClient) -> None:
    with time_machine.travel(T0, tick=False):
        created = client_a.post(API, _body()).json()
        changed = client_a.patch(f"{API}/{created['id']}", {"cron": "30 * * * *", "timezone": "UTC"}).json()
    assert changed["nextFireTimes"][:2] == ["2030-01-15T12:30:00Z", "2030-01-15T13:30:00Z"]


def test_clients_see_and_change_only_their_own_schedules(client_a: JsonClient, client_b: JsonClient) -> None:
    mine = client_a.post(API, _body()).json()
    client_b.post(API, _body(name="theirs"))
    assert [s["id"] for s in client_a.get(API).json()["items"]] == [mine["id"]]
    assert client_b.get(f"{API}/{mine['id']}").status_code == 404
    assert client_b.patch(f"{API}/{mine['id']}", {"paused": True}).status_code == 404
    assert client_b.delete(f"{API}/{mine['id']}").status_code == 404
    assert client_a.delete(f"{API}/{mine['id']}").status_code == 204
    assert not Schedule.objects.filter(pk=mine["id"]).exists()


# --- firing -----------------------------------------------------------------------------------


class FakeClock:
    """The job's monotonic clock and sleep: a sleep moves the clock, nothing waits."""

    def __init__(self) -> None:
        self.t = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds


@pytest.mark.parametrize("early", [0.4, 0.999])
def test_the_beat_job_sleeps_until_just_before_a_fire_time_and_makes_its_task_claimable_from_it(
    early: float,
) -> None:
    """A fire due before the next run is made FIRE_AHEAD before its time (its work done by then),
    its task claimable from the fire time: not at the first tick after it."""
    at = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)
    _schedule(cron="0 12 * * *")
    clock = FakeClock()
    start = at - timedelta(seconds=firing.FIRE_AHEAD + early)
    result = firing.fire_schedules_on_time(start, sleep=clock.sleep, clock=clock)
    assert result["created"] == 1
    assert len(clock.slept) == 1 and clock.slept[0] == pytest.approx(early, abs=0.01)
    fire = ScheduleFire.objects.get()
    made = at - timedelta(seconds=firing.FIRE_AHEAD)
    assert fire.fire_time == at and timedelta(0) <= fire.created_at - made < timedelta(milliseconds=10)
    task = Task.objects.get()
    assert task.scheduled_at == at and task.available_at == at  # claimable from its fire time, not before


def test_a_task_fired_ahead_is_claimed_only_from_its_fire_time() -> None:
    from tests import factories
    from units.claim import claim_tasks

    at = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)
    _schedule(cron="0 12 * * *")
    assert fire_schedules(at - timedelta(seconds=0.5), ahead=1.0)["created"] == 1
    assert fire_schedules(at, ahead=1.0)["created"] == 0  # once per fire time, ahead or not
    unit = factories.unit(unit_type="EXPORT")
    assert claim_tasks(unit.pk, 5, now=at - timedelta(milliseconds=1)) == []
    assert len(claim_tasks(unit.pk, 5, now=at)) == 1


def test_the_beat_job_leaves_a_fire_time_after_the_next_run_to_it() -> None:
    at = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)
    _schedule(cron="0 12 * * *")
    clock = FakeClock()
    with override_settings(SCHEDULE_TICK=1.0):
        start = at - timedelta(seconds=firing.FIRE_AHEAD + 1.5)
        assert firing.fire_schedules_on_time(start, sleep=clock.sleep, clock=clock)["created"] == 0
    assert clock.slept == [] and not ScheduleFire.objects.exists()


def test_the_beat_job_does_not_wait_on_a_due_schedule_it_could_not_take(monkeypatch: pytest.MonkeyPatch) -> None:
    """A schedule due now but locked by another run (SKIP LOCKED): that run fires it; this one
    neither sleeps nor spins on it."""
    at = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)
    _schedule(cron="0 12 * * *")
    calls: list[datetime] = []

    def fire(now: datetime, ahead: float = 0.0) -> dict[str, int]:
        calls.append(now)
        return {}

    monkeypatch.setattr(firing, "fire_schedules", fire)
    clock = FakeClock()
    firing.fire_schedules_on_time(at + timedelta(seconds=0.5), sleep=clock.sleep, clock=clock)
    assert clock.slept == [] and len(calls) == 1


def test_the_beat_job_is_the_registrys_fire_schedules() -> None:
    from taskhub.jobs.registry import JOBS

    assert JOBS["fire_schedules"].run is firing.fire_schedules_on_time


def test_a_fire_creates_one_task_from_the_template_owned_by_the_schedules_owner(client_a: JsonClient) -> None:
    with time_machine.travel(T0, tick=False):
        created = client_a.post(API, _body(cron="0 12 * * *", timezone="UTC")).json()
    at = datetime(2030, 1, 15, 12, 0, 0, 300_000, tzinfo=UTC)
    assert fire_schedules(at)["created"] == 1
    assert fire_schedules(at)["created"] == 0  # the same time again: nothing
    task = Task.objects.get()
    assert (task.name, task.task_type, task.priority, task.config) == ("nightly export", "EXPORT", 3, {"full": True})
    assert task.owner is not None and task.owner.name == "client-a"
    assert TaskStatusHistory.objects.get(task=task).actor == "job:fire_schedules"
    fire = ScheduleFire.objects.get()
    assert fire.fire_time == datetime(2030, 1, 15, 12, tzinfo=UTC) and fire.task_id == task.pk
    schedule = client_a.get(f"{API}/{created['id']}").json()
    assert schedule["lastTaskId"] == task.pk and schedule["nextFireAt"] == "2030-01-16T12:00:00Z"
    assert client_a.get(f"/api/v1/tasks/{task.pk}").status_code == 200


def test_overlap_skip_allow_and_cancel() -> None:
    skip, allow, cancel = (_schedule(overlap=policy) for policy in ("skip", "allow", "cancel"))
    fire_schedules(T0 + timedelta(seconds=31))  # 12:00
    first = {s.pk: int(Schedule.objects.get(pk=s.pk).last_task_id or 0) for s in (skip, allow, cancel)}
    fire_schedules(T0 + timedelta(seconds=91))  # 12:01: every first task still PENDING
    assert (
        Task.objects.filter(pk=first[skip.pk]).exists()
        and ScheduleFire.objects.filter(schedule=skip, outcome=FireOutcome.SKIPPED).count() == 1
    )
    assert Task.objects.count() == 5  # skip: 1, allow: 2, cancel: 2
    assert Task.objects.get(pk=first[cancel.pk]).status == S.CANCELLED
    assert Task.objects.get(pk=first[allow.pk]).status == S.PENDING
    # Once the previous task is finished, skip fires again.
    verbs.change_status(first[skip.pk], S.CANCELLED, actor=Actor.system("test"))
    fire_schedules(T0 + timedelta(seconds=151))
    assert ScheduleFire.objects.filter(schedule=skip, outcome=FireOutcome.CREATED).count() == 2


def test_after_downtime_only_the_fire_times_within_the_catch_up_window_fire() -> None:
    schedule = _schedule(overlap="allow", catchup_seconds=300)
    result = fire_schedules(T0 + timedelta(minutes=30))  # down from 12:00 to 12:29:30
    fired = sorted(ScheduleFire.objects.filter(schedule=schedule).values_list("fire_time", flat=True))
    assert [f"{at:%H:%M}" for at in fired] == ["12:25", "12:26", "12:27", "12:28", "12:29"]
    assert result["missed"] == 1 and result["created"] == 5
    assert Schedule.objects.get(pk=schedule.pk).next_fire_at == datetime(2030, 1, 15, 12, 30, tzinfo=UTC)


def test_a_long_backlog_is_fired_in_bounded_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(firing, "MAX_FIRES", 4)
    schedule = _schedule(overlap="allow", catchup_seconds=3600)
    fire_schedules(T0 + timedelta(minutes=10, seconds=1))
    assert ScheduleFire.objects.filter(schedule=schedule).count() == 10  # 12:00 .. 12:09 in rounds of 4, each once


def test_a_paused_schedule_does_not_fire() -> None:
    _schedule(paused=True)
    assert fire_schedules(T0 + timedelta(hours=1))["created"] == 0


def test_a_crash_mid_fire_rolls_back_and_the_next_run_fires_once(monkeypatch: pytest.MonkeyPatch) -> None:
    schedules = [_schedule() for _ in range(3)]
    real = firing.create_tasks

    def crash(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise RuntimeError("worker killed")

    monkeypatch.setattr(firing, "create_tasks", crash)
    with pytest.raises(RuntimeError):
        fire_schedules(T0 + timedelta(seconds=31))
    assert Task.objects.count() == 0 and ScheduleFire.objects.count() == 0
    monkeypatch.setattr(firing, "create_tasks", real)
    assert fire_schedules(T0 + timedelta(seconds=31))["created"] == 3
    assert fire_schedules(T0 + timedelta(seconds=32))["created"] == 0
    assert ScheduleFire.objects.count() == len(schedules) == Task.objects.count()


def test_a_fire_time_already_fired_never_fires_again_even_if_next_fire_at_goes_back() -> None:
    schedule = _schedule()
    fire_schedules(T0 + timedelta(seconds=31))
    Schedule.objects.filter(pk=schedule.pk).update(next_fire_at=datetime(2030, 1, 15, 12, tzinfo=UTC))
    assert fire_schedules(T0 + timedelta(seconds=32))["created"] == 0
    assert Task.objects.count() == 1


def test_a_deleted_schedule_leaves_its_tasks() -> None:
    schedule = _schedule()
    fire_schedules(T0 + timedelta(seconds=31))
    schedule.delete()
    assert Task.objects.count() == 1 and ScheduleFire.objects.count() == 0


# --- MariaDB, several processes ---------------------------------------------------------------

SCHEDULES = 150
PROCESSES = 4


def _fire_repeatedly(at: datetime, barrier: Any, out: Any) -> None:
    errors: list[str] = []
    created = 0
    try:
        barrier.wait(timeout=60)
        for step in range(5):  # the same minute, over and over, as several beats would
            created += fire_schedules(at + timedelta(milliseconds=100 * step))["created"]
    except Exception:
        errors.append(traceback.format_exc())
    finally:
        connections.close_all()
    out.put((created, errors))


@pytest.mark.mariadb
@pytest.mark.django_db(transaction=True)
def test_several_processes_firing_at_once_fire_each_schedule_once_per_fire_time() -> None:
    assert connection.vendor == "mysql"
    for _ in range(SCHEDULES):
        _schedule(overlap="allow")
    connections.close_all()
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(PROCESSES), ctx.Queue()
    at = T0 + timedelta(seconds=30, milliseconds=200)
    procs = [ctx.Process(target=_fire_repeatedly, args=(at, barrier, queue)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert not [e for _, errors in results for e in errors], results
    assert sum(created for created, _ in results) == SCHEDULES
    assert Task.objects.count() == SCHEDULES
    assert ScheduleFire.objects.filter(fire_time=datetime(2030, 1, 15, 12, tzinfo=UTC)).count() == SCHEDULES


# --- the console ------------------------------------------------------------------------------


def test_the_console_edits_schedules_with_the_apis_checks() -> None:
    from django.test import Client

    from tests.console_support import staff

    client = Client()
    client.force_login(staff("root", superuser=True))
    form = {
        "name": "from the console",
        "cron": "*/15 * * * *",
        "timezone": "Nowhere/City",
        "template": '{"name": "n", "taskType": "EXPORT"}',
        "overlap": "skip",
        "catchup_seconds": "300",
        "fires-TOTAL_FORMS": "0",
        "fires-INITIAL_FORMS": "0",
    }
    refused = client.post("/admin/schedules/schedule/add/", form)
    assert refused.status_code == 200 and b"unknown time zone" in refused.content
    assert Schedule.objects.count() == 0
    refused = client.post("/admin/schedules/schedule/add/", {**form, "timezone": "UTC", "template": '{"name": "n"}'})
    assert b"template.taskType" in refused.content and Schedule.objects.count() == 0
    added = client.post("/admin/schedules/schedule/add/", {**form, "timezone": "UTC"})
    assert added.status_code == 302, added.content[:2000]
    schedule = Schedule.objects.get()
    assert schedule.next_fire_at is not None and schedule.next_fire_at.minute % 15 == 0
    page = client.get(f"/admin/schedules/schedule/{schedule.pk}/change/")
    assert page.status_code == 200 and b"next fire times" in page.content.lower()
    client.post("/admin/schedules/schedule/", {"action": "pause", "_selected_action": [schedule.pk]})
    assert Schedule.objects.get().paused is True
    assert client.get("/admin/schedules/schedule/").status_code == 200
