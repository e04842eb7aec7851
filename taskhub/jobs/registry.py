"""The periodic jobs, declared once: the name operators see (`manage.py runjob NAME`, the beat
schedule `taskhub: NAME`), the plain function of `now` it runs, the Celery task name beat sends, and
how often beat runs it by default (`manage.py setup_beat`). Callers pass the database's clock
(taskhub.base.sql.db_now): every node's jobs see the time the heartbeats were stamped with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings

from taskhub.jobs.rollups import write_rollups
from taskhub.schedules.firing import fire_schedules_on_time, schedule_tick
from taskhub.webhooks.delivery import deliver_due_webhooks
from taskhub.webhooks.outbox import JOB_NAME as DELIVER_WEBHOOKS
from tasks.jobs import fail_timeouts, move_due_retries, purge_old_logs
from tasks.retention import prune_tasks
from units.sweeper import sweep_job


@dataclass(frozen=True)
class Job:
    name: str
    run: Callable[[datetime], dict[str, Any]]
    every: Callable[[], float]  # seconds, read from the settings when beat is set up

    @property
    def celery_name(self) -> str:
        return f"taskhub.{self.name}"

    @property
    def where(self) -> str:
        return f"{self.run.__module__}.{self.run.__name__}"


def _sweep_interval() -> float:
    return float(settings.SWEEP_INTERVAL)


JOBS: dict[str, Job] = {
    job.name: job
    for job in (
        Job("sweep_heartbeats", sweep_job, _sweep_interval),
        Job("move_due_retries", move_due_retries, _sweep_interval),
        Job("fail_timeouts", fail_timeouts, _sweep_interval),
        Job("purge_old_logs", purge_old_logs, lambda: 3600.0),
        # Also enqueued by every commit that wrote outbox rows (taskhub/webhooks/outbox.py:kick).
        Job(DELIVER_WEBHOOKS, deliver_due_webhooks, lambda: float(settings.WEBHOOK_POLL_INTERVAL)),
        Job("rollup_minute", write_rollups, lambda: 60.0),  # the console's per-minute time-series
        Job("prune_tasks", prune_tasks, lambda: 30.0),
        # Runs every SCHEDULE_TICK and sleeps (at most that long) until a fire time due before the next run.
        Job("fire_schedules", fire_schedules_on_time, schedule_tick),
    )
}
