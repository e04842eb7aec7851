"""The transition table, enforced on every path, and the history chain it writes."""

from __future__ import annotations

import itertools

import pytest

from taskhub.base.actors import Actor
from taskhub.base.errors import Conflict
from tasks.models import Task, TaskStatusHistory
from tasks.states import TERMINAL, TRANSITIONS, TaskStatus, allowed_targets, can_transition
from tasks.transitions import reports, verbs
from tests import factories

pytestmark = pytest.mark.django_db
S = TaskStatus
ACTOR = Actor.api_key("tester")

EXPECTED = {
    ("PENDING", "RUNNING"), ("PENDING", "PAUSED"), ("PENDING", "CANCELLED"),
    ("RUNNING", "COMPLETED"), ("RUNNING", "FAILED"), ("RUNNING", "CANCELLED"), ("RUNNING", "PENDING"),
    ("PAUSED", "PENDING"), ("PAUSED", "FAILED"), ("PAUSED", "CANCELLED"),
    ("FAILED", "PENDING"), ("FAILED", "CANCELLED"),
}  # fmt: skip


def test_transition_table_is_exactly_the_contract():
    table = {(s, t) for s, targets in TRANSITIONS.items() for t in targets}
    assert table == EXPECTED
    assert {"COMPLETED", "CANCELLED"} == TERMINAL


def test_failover_move_is_system_only_while_a_live_unit_holds_the_task():
    assert can_transition("RUNNING", "PENDING", system=True)
    assert not can_transition("RUNNING", "PENDING")
    assert "PENDING" not in allowed_targets("RUNNING")
    # A RUNNING task that no live unit holds anyone may put back (requeue).
    assert can_transition("RUNNING", "PENDING", held=False)
    assert "PENDING" in allowed_targets("RUNNING", held=False)


def _task_in(status: str) -> Task:
    """Bring a task to `status` through the transition functions (never by writing status)."""
    task = factories.task()
    paths = {
        "PENDING": [],
        "RUNNING": ["RUNNING"],
        "PAUSED": ["PAUSED"],
        "COMPLETED": ["RUNNING", "COMPLETED"],
        "FAILED": ["RUNNING", "FAILED"],
        "CANCELLED": ["CANCELLED"],
    }
    for step in paths[status]:
        verbs.change_status(task.pk, step, actor=ACTOR)
    task.refresh_from_db()
    assert task.status == status
    return task


@pytest.mark.parametrize(("source", "target"), list(itertools.product(S.values, S.values)))
def test_put_status_allows_exactly_the_table(client_a, source, target):
    """The RUNNING task here was started with PUT status: no unit holds it."""
    _put_status_allows_exactly_the_table(client_a, _task_in(source), source, target, held=False)


@pytest.mark.parametrize("target", S.values)
def test_put_status_on_a_task_a_live_unit_holds_allows_exactly_the_table(client_a, target):
    task = factories.leased_task("u-held")
    _put_status_allows_exactly_the_table(client_a, task, S.RUNNING, target, held=True)


def _put_status_allows_exactly_the_table(client_a, task, source, target, *, held):
    Task.objects.filter(pk=task.pk).update(owner=client_a_key(client_a))
    before = list(TaskStatusHistory.objects.filter(task=task).values_list("id", flat=True))
    response = client_a.put(f"/api/v1/tasks/{task.pk}/status", {"status": target, "reason": "test"})
    client_ok = can_transition(source, target, held=held) or (source == "RUNNING" and target == "PAUSED")
    if client_ok:
        assert response.status_code == 200, response.content
        task.refresh_from_db()
        assert task.status == target
    else:
        assert response.status_code == 409, response.content
        body = response.json()
        assert body["code"] == "illegal_transition"
        assert body["details"]["allowedTargets"] == allowed_targets(source, held=held)
        assert source in body["message"] and target in body["message"]
        task.refresh_from_db()
        assert task.status == source
        after = list(TaskStatusHistory.objects.filter(task=task).values_list("id", flat=True))
        assert after == before  # a refused request writes nothing


def client_a_key(client):
    from taskhub.apikeys.models import ApiKey

    return ApiKey.objects.get(name="client-a")


def test_every_change_writes_one_history_row_with_actor_and_attempt():
    task = factories.task()
    verbs.change_status(task.pk, "RUNNING", actor=ACTOR, reason="go")
    verbs.change_status(task.pk, "FAILED", actor=Actor.operator("alice"), reason="broken input")
    verbs.retry_task(task.pk, actor=Actor.operator("alice"))
    rows = list(TaskStatusHistory.objects.filter(task=task).order_by("id"))
    assert [(r.from_status, r.to_status) for r in rows] == [
        (None, "PENDING"),
        ("PENDING", "RUNNING"),
        ("RUNNING", "FAILED"),
        ("FAILED", "PENDING"),
    ]
    assert rows[1].actor == "key:tester" and rows[1].actor_type == "api_key" and rows[1].attempt == 1
    assert rows[2].actor == "user:alice" and rows[2].reason == "broken input"


def test_pause_of_running_task_keeps_the_chain_and_fences_the_unit():
    unit = factories.unit("u-pause")
    task = factories.leased_task(unit)
    verbs.pause_task(task.pk, actor=Actor.operator("op"))
    task.refresh_from_db()
    assert task.status == "PAUSED" and task.pending_command == "pause"
    chain = list(TaskStatusHistory.objects.filter(task=task).order_by("id").values_list("from_status", "to_status"))
    assert chain[-2:] == [("RUNNING", "PENDING"), ("PENDING", "PAUSED")]
    with pytest.raises(Conflict):
        reports.complete_attempt(task.pk, unit_id=unit.pk, attempt=1, result={})


def test_history_is_a_gap_free_chain_after_many_moves():
    task = factories.task()
    for target in ["PAUSED", "PENDING", "RUNNING", "FAILED", "PENDING", "RUNNING", "COMPLETED"]:
        verbs.change_status(task.pk, target, actor=ACTOR)
    rows = list(TaskStatusHistory.objects.filter(task=task).order_by("id"))
    for previous, current in itertools.pairwise(rows):
        assert current.from_status == previous.to_status
    assert rows[-1].to_status == Task.objects.get(pk=task.pk).status


def test_no_module_outside_transitions_writes_status():
    """One place for the rule: grep the code for status writes."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parent.parent
    allowed = {"tasks/entry.py"}  # what entering a state sets, the status itself included
    offenders = []
    pattern = re.compile(r"(\.update\([^)]*\bstatus=S\.|task\.status\s*=[^=])")
    for path in (
        list((root / "tasks").rglob("*.py"))
        + list((root / "units").rglob("*.py"))
        + list((root / "taskhub").rglob("*.py"))
    ):
        rel = path.relative_to(root).as_posix()
        if "migrations" in rel or rel in allowed or rel.startswith("tasks/transitions/"):
            continue
        if pattern.search(path.read_text()):
            offenders.append(rel)
    assert offenders == []


def test_a_refused_move_of_a_running_task_lists_paused_among_the_allowed_targets(client_a, register_unit):
    """RUNNING -> PAUSED is accepted (a composite move, through PENDING), so a 409 names it."""
    from django.utils import timezone

    from units.claim import claim_tasks

    register_unit("worker-001")
    created = client_a.post("/api/v1/tasks", {"name": "t", "taskType": "DATA_PROCESSING"}).json()
    claim_tasks("worker-001", 1, now=timezone.now())
    response = client_a.put(f"/api/v1/tasks/{created['id']}/status", {"status": "RUNNING"})
    assert response.status_code == 409
    assert response.json()["details"]["allowedTargets"] == ["CANCELLED", "COMPLETED", "FAILED", "PAUSED"]
    assert client_a.put(f"/api/v1/tasks/{created['id']}/status", {"status": "PAUSED"}).status_code == 200


def test_every_move_of_the_tables_is_some_verbs_and_allowed_targets_come_from_them():
    from tasks.states import COMPOSITE, VERB_FOR, can_move

    moves = {(s, t) for s, targets in TRANSITIONS.items() for t in targets} | set(COMPOSITE)
    assert set(VERB_FOR) == moves
    for source in S.values:
        for held in (True, False):
            expected = sorted(t for s, t in moves if s == source and can_move(s, t, held=held))
            assert allowed_targets(source, held=held) == expected
    assert "PAUSED" in allowed_targets("RUNNING") and "PENDING" not in allowed_targets("RUNNING")
