"""Celery wrappers: one line each around the plain job functions."""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from taskhub.celery import app
from tasks.scheduling.jobs import JOBS
from tasks.scheduling.runner import run_job


@app.task(name="taskhub.sweep_heartbeats", ignore_result=True)
def sweep_heartbeats() -> dict[str, Any]:
    return run_job("sweep_heartbeats", timezone.now())


@app.task(name="taskhub.move_due_retries", ignore_result=True)
def move_due_retries() -> dict[str, Any]:
    return run_job("move_due_retries", timezone.now())


@app.task(name="taskhub.fail_timeouts", ignore_result=True)
def fail_timeouts() -> dict[str, Any]:
    return run_job("fail_timeouts", timezone.now())


@app.task(name="taskhub.purge_old_logs", ignore_result=True)
def purge_old_logs() -> dict[str, Any]:
    return run_job("purge_old_logs", timezone.now())


assert set(JOBS) == {"sweep_heartbeats", "move_due_retries", "fail_timeouts", "purge_old_logs"}
