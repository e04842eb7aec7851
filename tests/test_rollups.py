"""The per-minute rollups (taskhub/jobs/rollups.py): the beat job declared once, what a run writes,
rewriting a minute, the prune after the retention, and the unit page's chart drawn from them."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from taskhub.jobs.registry import JOBS
from taskhub.jobs.rollups import MinuteRollup, RollupScope, minute_start, write_rollups
from tasks.transitions import reports
from tests import factories
from tests.console_support import completed_task, operator

pytestmark = pytest.mark.django_db


def test_the_rollup_job_is_declared_once_and_runs_every_minute() -> None:
    job = JOBS["rollup_minute"]
    assert job.run is write_rollups and job.every() == 60.0


def test_a_run_writes_the_last_minute_per_unit_and_per_type_and_a_second_run_rewrites_it() -> None:
    now = timezone.now()
    unit = factories.unit("r-unit", capacity=4, now=now)
    past = now - timedelta(seconds=45)
    done = completed_task(unit, now=past)
    running = factories.leased_task(unit)
    failing = factories.leased_task(unit)
    reports.fail_attempt(failing.pk, unit_id=unit.pk, attempt=1, error="x", retryable=False, now=past)
    factories.task(task_type="EMAIL")
    later = minute_start(past) + timedelta(minutes=1, seconds=5)  # the run just after that minute
    out = write_rollups(later)
    assert out["rows"] == 3 and done.pk and running.pk
    rows = {(r.scope, r.key): r for r in MinuteRollup.objects.all()}
    assert set(rows) == {
        (RollupScope.UNIT, "r-unit"),
        (RollupScope.TYPE, "DATA_PROCESSING"),
        (RollupScope.TYPE, "EMAIL"),
    }
    u = rows[(RollupScope.UNIT, "r-unit")]
    assert (u.running, u.capacity, u.minute) == (1, 4, minute_start(past))
    t = rows[(RollupScope.TYPE, "DATA_PROCESSING")]
    assert (t.running, t.completed, t.failed, t.pending) == (1, 1, 1, 0)
    assert rows[(RollupScope.TYPE, "EMAIL")].pending == 1
    write_rollups(later)
    assert MinuteRollup.objects.count() == 3


def test_rows_older_than_the_retention_are_pruned(settings) -> None:
    settings.ROLLUP_RETENTION_HOURS = 2
    now = timezone.now()
    for age in (1, 3, 30):
        MinuteRollup.objects.create(minute=now - timedelta(hours=age), scope=RollupScope.UNIT, key="old")
    out = write_rollups(now)
    assert out["pruned"] == 2
    assert list(MinuteRollup.objects.filter(key="old").values_list("minute", flat=True)) == [now - timedelta(hours=1)]


def test_the_unit_page_draws_its_load_from_the_rollups_as_inline_svg() -> None:
    now = timezone.now()
    unit = factories.unit("chart-unit", capacity=3)
    for i in range(1, 4):
        MinuteRollup.objects.create(
            minute=minute_start(now) - timedelta(minutes=i), scope=RollupScope.UNIT, key=unit.pk, running=i, capacity=3
        )
    client = Client()
    client.force_login(operator())
    body = client.get(f"/admin/units/executionunit/{unit.pk}/change/").content.decode()
    chart = body[body.index('<svg id="th-unit-load"') : body.index("</svg>", body.index('<svg id="th-unit-load"'))]
    assert chart.count("<rect") == 60
    assert sorted(int(c) for c in re.findall(r'data-count="(\d+)"', chart) if c != "0") == [1, 2, 3]
    assert "<polyline" in chart and "http" not in chart.replace("http://www.w3.org", "")


def _rollup_in_child(now: Any, out: Any) -> None:
    from django.db import connections

    try:
        write_rollups(now)
        out.put("ok")
    except Exception as exc:  # any error fails the test
        out.put(repr(exc))
    finally:
        connections.close_all()


@pytest.mark.mariadb
@pytest.mark.django_db(transaction=True)
def test_several_runs_of_the_same_minute_at_once_write_each_row_once() -> None:
    import multiprocessing

    from django.db import connections

    now = timezone.now()
    for i in range(20):
        factories.unit(f"c-unit-{i}", capacity=2)
        factories.task(task_type=f"TYPE_{i}")
    connections.close_all()
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_rollup_in_child, args=(now, out)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert results == ["ok"] * 4
    assert MinuteRollup.objects.count() == 20 + 20  # each unit, each type: once
