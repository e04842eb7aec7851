"""Queues: settings, pause/resume, concurrency and rate limits in the claim, creation defaults, the
queues API (400s naming the field, ownership), and the unlimited claim unchanged (query counts)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from taskhub.base.actors import Actor
from tasks.models import QueueChange, QueueSettings, Task
from tasks.queues import queue_settings_for
from tasks.transitions.reports import complete_attempt
from tests import factories
from units.claim import claim, claim_tasks
from units.queues import update_queue_settings

pytestmark = pytest.mark.django_db
T = "DATA_PROCESSING"


@dataclass(frozen=True)
class Operator:
    is_operator: bool = True
    unit_id: str | None = None
    api_key_id: int | None = None


def configure(task_type: str = T, **changes: Any) -> QueueSettings:
    return update_queue_settings(task_type, changes, viewer=Operator(), actor=Actor.operator("op"), owner_id=None)


def running(task_type: str = T) -> int:
    return Task.objects.filter(task_type=task_type, status="RUNNING").count()


# --- a queue with no settings: exactly as before -------------------------------------------------


def test_a_queue_without_settings_claims_with_the_same_statements_and_no_queue_reads():
    for _ in range(25):
        factories.task()
    unit = factories.unit(capacity=100)
    with CaptureQueriesContext(connection) as ctx:
        assert len(claim_tasks(unit.pk, 25, now=timezone.now())) == 25
    statements = [q["sql"] for q in ctx.captured_queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))]
    # The unit lock (which joins the settings row), the unit's load, the locked read, one UPDATE,
    # one history INSERT, the unit's status: what the claim ran before queues existed.
    assert len([s for s in statements if "queue_settings" in s]) == 1
    assert not any("queue_key_windows" in s or "queue_changes" in s for s in statements)
    assert len(statements) <= 7, statements


def test_queue_settings_for_is_none_until_configured_and_the_claim_reply_has_no_queue_part():
    factories.task()
    unit = factories.unit()
    assert queue_settings_for(T) is None
    result = claim(unit.pk, 5, now=timezone.now())
    assert len(result.tasks) == 1 and result.hold is None
    configure(default_priority=3)
    assert queue_settings_for(T) is not None


# --- pause / resume --------------------------------------------------------------------------------


def test_a_paused_queue_claims_nothing_keeps_its_running_tasks_and_accepts_creates():
    unit = factories.unit(capacity=10)
    leased = factories.leased_tasks(unit, 1)[0]
    factories.task()
    configure(paused=True)
    factories.task()  # creates are still accepted
    result = claim(unit.pk, 5, now=timezone.now())
    assert result.tasks == [] and result.hold is not None and result.hold.paused
    assert result.hold.retry_after and result.hold.retry_after > 0
    assert Task.objects.get(pk=leased.pk).status == "RUNNING"
    complete_attempt(leased.pk, unit_id=unit.pk, attempt=leased.attempt, result={})  # running work goes on
    configure(paused=False)
    assert len(claim_tasks(unit.pk, 5, now=timezone.now())) == 2


def test_resuming_a_queue_rings_its_doorbell_for_as_many_waiting_claims_as_it_has_pending_tasks(
    monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    """Long-poll claims of a paused queue wait on its doorbell (taskhub.api.views.longpoll): a
    resume must wake them, not leave them to their wait's end or the once-a-second probe."""
    from taskhub.base import doorbell

    rung: list[tuple[str, int]] = []
    monkeypatch.setattr(doorbell, "ring", lambda key, count=1, due=None: rung.append((key, count)))
    configure(paused=True)
    for _ in range(3):
        factories.task()
    factories.task(task_type="OTHER")
    rung.clear()
    with django_capture_on_commit_callbacks(execute=True):
        configure(paused=False)
    assert rung == [(doorbell.type_key(T), 3)]
    with django_capture_on_commit_callbacks(execute=True):
        configure(paused=False)  # no change: nothing to wake
    assert rung == [(doorbell.type_key(T), 3)]


def test_pause_and_resume_through_the_api_are_persistent_audited_and_in_the_claim_reply(
    make_client, register_unit, client_a
):
    operator_like = make_client("queues-admin")
    unit, _ = register_unit("u1")
    client_a.post("/api/v1/tasks", {"name": "t", "taskType": T})
    paused = operator_like.patch(f"/api/v1/queues/{T}", {"paused": True})
    assert paused.status_code == 200, paused.content
    body = paused.json()
    assert body["settings"]["paused"] is True and body["settings"]["pausedBy"] == "key:queues-admin"
    assert body["changes"][0]["changes"] == {"paused": [False, True]}
    reply = unit.post("/api/v1/execution-units/u1/claim", {"max": 5}).json()
    assert reply["items"] == [] and reply["queue"]["paused"] is True and reply["queue"]["heldBy"] == ["paused"]
    assert reply["queue"]["retryAfterSeconds"] > 0
    assert QueueSettings.objects.get(pk=T).paused  # persistent: a row, not process memory
    operator_like.patch(f"/api/v1/queues/{T}", {"paused": False})
    reply = unit.post("/api/v1/execution-units/u1/claim", {"max": 5}).json()
    assert len(reply["items"]) == 1 and "queue" not in reply
    assert QueueChange.objects.filter(task_type=T).count() == 2


def test_a_long_poll_claim_of_a_paused_queue_replies_at_once_with_the_hold(make_client, register_unit, client_a):
    operator_like = make_client("queues-admin")
    unit, _ = register_unit("u1")
    client_a.post("/api/v1/tasks", {"name": "t", "taskType": T})
    operator_like.patch(f"/api/v1/queues/{T}", {"paused": True})
    started = time.monotonic()
    reply = unit.post("/api/v1/execution-units/u1/claim", {"max": 5, "waitSeconds": 20}).json()
    # No doorbell rings when a queue is resumed or a limit frees up: the unit is told when to ask again.
    assert time.monotonic() - started < 10
    assert reply["items"] == [] and reply["queue"]["paused"] is True and reply["waitSeconds"] > 0


# --- concurrency limits ----------------------------------------------------------------------------


def test_max_running_holds_across_units_and_frees_on_completion():
    configure(max_running=3)
    for _ in range(10):
        factories.task()
    a, b = factories.unit(capacity=10), factories.unit(capacity=10)
    got_a = claim(a.pk, 10, now=timezone.now())
    assert len(got_a.tasks) == 3 and got_a.hold is not None and "maxRunning" in got_a.hold.held_by
    assert claim(b.pk, 10, now=timezone.now()).tasks == []
    first = got_a.tasks[0]
    complete_attempt(first.pk, unit_id=a.pk, attempt=first.attempt, result={})
    assert len(claim(b.pk, 10, now=timezone.now()).tasks) == 1
    assert running() == 3


def test_lowering_max_running_below_the_running_count_starts_nothing_until_below_it():
    configure(max_running=5)
    for _ in range(8):
        factories.task()
    unit = factories.unit(capacity=10)
    tasks = claim(unit.pk, 10, now=timezone.now()).tasks
    assert len(tasks) == 5
    configure(max_running=2)
    for task in tasks[:3]:
        complete_attempt(task.pk, unit_id=unit.pk, attempt=task.attempt, result={})
        assert claim(unit.pk, 10, now=timezone.now()).tasks == []  # 4, then 3, then 2 running: no room
    complete_attempt(tasks[3].pk, unit_id=unit.pk, attempt=tasks[3].attempt, result={})
    assert len(claim(unit.pk, 10, now=timezone.now()).tasks) == 1


def test_per_key_concurrency_holds_back_a_busy_key_without_starving_the_others():
    configure(per_key_concurrency=1)
    urgent = [factories.task(priority=9, concurrency_key="customer-a") for _ in range(5)]
    others = [factories.task(priority=1, concurrency_key=f"customer-{k}") for k in "bc"]
    unkeyed = factories.task(priority=0)
    unit = factories.unit(capacity=20)
    got = claim(unit.pk, 20, now=timezone.now())
    assert {t.pk for t in got.tasks} == {urgent[0].pk, others[0].pk, others[1].pk, unkeyed.pk}
    again = claim(unit.pk, 20, now=timezone.now())
    assert again.tasks == [] and again.hold is not None and "keyLimits" in again.hold.held_by
    # Capacity frees: the held-back key's next task (the oldest of the most urgent) goes next.
    first = got.tasks[0]
    complete_attempt(first.pk, unit_id=unit.pk, attempt=first.attempt, result={})
    assert [t.pk for t in claim(unit.pk, 20, now=timezone.now()).tasks] == [urgent[1].pk]


# --- rate limits -------------------------------------------------------------------------------


def test_a_rate_limit_without_a_period_is_per_minute(client_a):
    body = client_a.patch(f"/api/v1/queues/{T}", {"rateLimit": 5}).json()
    assert body["settings"]["rateLimit"] == 5 and body["settings"]["ratePeriodSeconds"] == 60
    assert body["changes"][0]["changes"]["ratePeriodSeconds"] == [None, 60]


def test_rate_limit_allows_n_starts_per_window_and_says_when_the_next_is_allowed(client_a):
    configure(rate_limit=2, rate_period=60)
    for _ in range(6):
        factories.task()
    unit = factories.unit(capacity=20)
    now = timezone.now()
    got = claim(unit.pk, 10, now=now)
    assert len(got.tasks) == 2 and got.hold is not None and "rateLimit" in got.hold.held_by
    assert got.hold.next_start_at == now + timedelta(seconds=60)
    held = claim(unit.pk, 10, now=now + timedelta(seconds=30))
    assert held.tasks == [] and held.hold is not None and held.hold.retry_after == pytest.approx(30, abs=0.01)
    assert len(claim(unit.pk, 10, now=now + timedelta(seconds=60, milliseconds=1)).tasks) == 2
    reply = client_a.get(f"/api/v1/queues/{T}").json()
    assert reply["nextStartAt"] is not None and reply["settings"]["rateLimit"] == 2


def test_per_key_rate_limit_counts_each_key_apart():
    configure(key_rate_limit=1, key_rate_period=10)
    for key in ("a", "a", "b", "b"):
        factories.task(concurrency_key=key)
    unit = factories.unit(capacity=20)
    now = timezone.now()
    assert sorted(t.concurrency_key for t in claim(unit.pk, 10, now=now).tasks) == ["a", "b"]
    assert claim(unit.pk, 10, now=now + timedelta(seconds=5)).tasks == []
    assert len(claim(unit.pk, 10, now=now + timedelta(seconds=11)).tasks) == 2


def test_a_claim_held_back_by_key_rate_limits_says_when_a_key_may_start_again_and_so_does_the_queue(client_a):
    configure(key_rate_limit=2, key_rate_period=60)
    for key in ("a", "a", "a", "b", "b", "b"):
        factories.task(concurrency_key=key)
    unit = factories.unit(capacity=20)
    now = timezone.now()
    first = claim(unit.pk, 10, now=now)
    assert len(first.tasks) == 4
    later = now + timedelta(seconds=20)
    held = claim(unit.pk, 10, now=later)
    assert held.tasks == [] and held.hold is not None and "keyLimits" in held.hold.held_by
    assert held.hold.key_next_start_at == now + timedelta(seconds=60)
    assert held.hold.retry_after == pytest.approx(40, abs=0.01)  # the agent waits that long, not its poll
    assert held.hold.as_reply()["keyNextStartAt"] == (now + timedelta(seconds=60)).isoformat()
    with time_machine.travel(later, tick=False):
        detail = client_a.get(f"/api/v1/queues/{T}").json()
    starts = {item["key"]: item["nextStartAt"] for item in detail["keyNextStarts"]}
    assert set(starts) == {"a", "b"}
    assert datetime.fromisoformat(starts["a"]) == now + timedelta(seconds=60)
    assert len(claim(unit.pk, 10, now=now + timedelta(seconds=61)).tasks) == 2


def test_a_key_held_by_its_concurrency_limit_gives_no_time_to_wait_for():
    configure(per_key_concurrency=1, key_rate_limit=5, key_rate_period=60)
    factories.task(concurrency_key="a")
    factories.task(concurrency_key="a")
    unit = factories.unit(capacity=20)
    now = timezone.now()
    assert len(claim(unit.pk, 10, now=now).tasks) == 1
    held = claim(unit.pk, 10, now=now + timedelta(seconds=1))
    assert held.hold is not None and "keyLimits" in held.hold.held_by
    assert held.hold.key_next_start_at is None and held.hold.retry_after is None  # a completion frees it


# --- defaults for new tasks --------------------------------------------------------------------


def test_new_tasks_take_the_queue_defaults_unless_the_request_gives_them(client_a):
    configure(default_max_retries=7, default_timeout_seconds=120, default_priority=5)
    plain = client_a.post("/api/v1/tasks", {"name": "t", "taskType": T}).json()
    assert (plain["maxRetries"], plain["timeoutSeconds"], plain["priority"]) == (7, 120, 5)
    given = client_a.post("/api/v1/tasks", {"name": "t", "taskType": T, "priority": 1, "maxRetries": 0}).json()
    assert (given["maxRetries"], given["timeoutSeconds"], given["priority"]) == (0, 120, 1)
    batch = client_a.post("/api/v1/tasks/batch", {"tasks": [{"name": "b", "taskType": T}]}).json()
    assert batch["items"][0]["priority"] == 5
    other = client_a.post("/api/v1/tasks", {"name": "t", "taskType": "OTHER"}).json()
    assert other["priority"] == 0 and other["timeoutSeconds"] is None


# --- the API: overview, 400s, ownership --------------------------------------------------------


def test_queue_overview_counts_depth_running_oldest_due_and_units(client_a, register_unit):
    register_unit("u1")
    factories.unit("u-off", status="OFFLINE")
    old = timezone.now() - timedelta(minutes=5)
    factories.task(now=old)
    factories.task()
    unit = factories.unit("u2", capacity=1)
    factories.leased_tasks(unit, 1)
    body = client_a.get("/api/v1/queues").json()
    queue = next(q for q in body["items"] if q["taskType"] == T)
    assert queue["depth"] == 2 and queue["running"] == 1 and queue["byStatus"]["PENDING"] == 2
    assert queue["oldestDueAgeSeconds"] >= 299
    assert queue["units"]["count"] == 2 and set(queue["units"]["ids"]) == {"u1", "u2"}
    assert queue["hasSettings"] is False and queue["settings"]["maxRunning"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"maxRunning": -1}, "maxRunning"),
        ({"perKeyConcurrency": 0}, "perKeyConcurrency"),
        ({"ratePeriodSeconds": 0}, "ratePeriodSeconds"),
        ({"keyRateLimit": -3}, "keyRateLimit"),
        ({"rateLimit": 10_001, "ratePeriodSeconds": 1}, "rateLimit"),
        ({"paused": "yes"}, "paused"),
        ({"retentionSeconds": 59}, "retentionSeconds"),
        ({"deadRetentionSeconds": -1}, "deadRetentionSeconds"),
        ({"deadRetentionSeconds": 10**10}, "deadRetentionSeconds"),
        ({"retentionSeconds": "soon"}, "retentionSeconds"),
        ({"speed": 3}, "speed"),
        ({}, "body"),
    ],
)
def test_bad_queue_settings_are_a_400_naming_the_field_and_change_nothing(client_a, body, field):
    response = client_a.patch(f"/api/v1/queues/{T}", body)
    assert response.status_code == 400, response.content
    assert field in response.content.decode()
    assert not QueueSettings.objects.exists() and not QueueChange.objects.exists()


@override_settings(TASK_RETENTION_DAYS=30, TASK_DEAD_RETENTION_DAYS=90)
def test_a_queues_retention_is_set_audited_shown_in_force_and_reset_with_null(client_a):
    plain = client_a.get(f"/api/v1/queues/{T}").json()
    assert plain["settings"]["retentionSeconds"] is None
    assert plain["retention"] == {"finishedSeconds": 30 * 86400, "deadSeconds": 90 * 86400}
    body = client_a.patch(f"/api/v1/queues/{T}", {"retentionSeconds": 3600, "deadRetentionSeconds": 86400}).json()
    assert (body["settings"]["retentionSeconds"], body["settings"]["deadRetentionSeconds"]) == (3600, 86400)
    assert body["retention"] == {"finishedSeconds": 3600, "deadSeconds": 86400}
    assert body["changes"][0]["changes"] == {"retentionSeconds": [None, 3600], "deadRetentionSeconds": [None, 86400]}
    body = client_a.patch(f"/api/v1/queues/{T}", {"deadRetentionSeconds": None}).json()
    assert body["retention"] == {"finishedSeconds": 3600, "deadSeconds": 90 * 86400}
    listed = next(q for q in client_a.get("/api/v1/queues").json()["items"] if q["taskType"] == T)
    assert listed["retention"]["finishedSeconds"] == 3600


def test_a_queue_another_key_configured_is_invisible_and_unchangeable(make_client):
    alice, bob = make_client("alice"), make_client("bob")
    assert alice.patch("/api/v1/queues/EXPORTS", {"maxRunning": 2}).status_code == 200
    assert bob.get("/api/v1/queues/EXPORTS").status_code == 404
    assert "EXPORTS" not in [q["taskType"] for q in bob.get("/api/v1/queues").json()["items"]]
    assert bob.patch("/api/v1/queues/EXPORTS", {"maxRunning": 50}).status_code == 404
    assert QueueSettings.objects.get(pk="EXPORTS").max_running == 2
    assert alice.get("/api/v1/queues/EXPORTS").json()["settings"]["maxRunning"] == 2


def test_keys_without_the_queue_scopes_are_refused(make_client):
    reader = make_client("reader", scopes=("tasks:read", "queues:read"))
    tasks_only = make_client("tasks-only", scopes=("tasks:read", "tasks:write"))
    assert tasks_only.get("/api/v1/queues").status_code == 403
    assert reader.get("/api/v1/queues").status_code == 200
    assert reader.patch(f"/api/v1/queues/{T}", {"paused": True}).status_code == 403
    assert not QueueSettings.objects.exists()


def test_an_operator_configured_queue_is_readable_but_not_changeable_by_a_key(client_a):
    configure(max_running=4)
    assert client_a.get(f"/api/v1/queues/{T}").json()["settings"]["maxRunning"] == 4
    assert client_a.patch(f"/api/v1/queues/{T}", {"maxRunning": 40}).status_code == 403
    assert QueueSettings.objects.get(pk=T).max_running == 4


def test_a_full_keys_tasks_are_held_out_of_the_claim_range_and_released_top_first():
    configure(per_key_concurrency=1)
    busy = [factories.task(priority=9, concurrency_key="big") for _ in range(40)]
    small = [factories.task(priority=0, concurrency_key=f"s{i}") for i in range(3)]
    unit = factories.unit(capacity=50)
    got = claim(unit.pk, 50, now=timezone.now()).tasks
    assert {t.pk for t in got} == {busy[0].pk, *(t.pk for t in small)}
    assert Task.objects.filter(concurrency_key="big", status="PENDING", held_back=True).count() == 39
    assert QueueSettings.objects.get(pk=T).held_keys == ["big"]
    # Held back: the next claims do not read them (the locked read returns nothing at all).
    factories.task(priority=0, concurrency_key="s9")
    with CaptureQueriesContext(connection) as ctx:
        assert [t.concurrency_key for t in claim(unit.pk, 50, now=timezone.now()).tasks] == ["s9"]
    assert not any(q["sql"].startswith("UPDATE") and "held_back" in q["sql"] for q in ctx.captured_queries)
    first = got[0]
    complete_attempt(first.pk, unit_id=unit.pk, attempt=first.attempt, result={})
    assert [t.pk for t in claim(unit.pk, 50, now=timezone.now()).tasks] == [busy[1].pk]
    assert Task.objects.filter(concurrency_key="big", held_back=True).count() == 38
    configure(per_key_concurrency=None)  # the limit lifted: all back in range
    assert not Task.objects.filter(held_back=True).exists()
    assert len(claim(unit.pk, 50, now=timezone.now()).tasks) == 38


def test_a_held_back_task_that_leaves_and_reenters_pending_is_claimable_again():
    configure(per_key_concurrency=1)
    a, b = factories.task(concurrency_key="k"), factories.task(concurrency_key="k")
    unit = factories.unit(capacity=5)
    assert [t.pk for t in claim(unit.pk, 5, now=timezone.now()).tasks] == [a.pk]
    assert Task.objects.get(pk=b.pk).held_back
    from tasks.transitions.verbs import pause_task, resume_task

    pause_task(b.pk, actor=Actor.operator("op"))
    resume_task(b.pk, actor=Actor.operator("op"))
    assert not Task.objects.get(pk=b.pk).held_back  # every entry into PENDING clears it
    complete_attempt(a.pk, unit_id=unit.pk, attempt=1, result={})
    assert [t.pk for t in claim(unit.pk, 5, now=timezone.now()).tasks] == [b.pk]
