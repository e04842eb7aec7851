"""The Celery tasks beat sends: one per job of the registry, each a one-line call of the runner."""

from __future__ import annotations

from typing import Any

from celery import Task as CeleryTask

from taskhub.base.sql import db_now
from taskhub.celery import app
from taskhub.jobs.registry import JOBS, Job
from taskhub.jobs.runner import run_job


def _celery_task(job: Job) -> CeleryTask:
    def run() -> dict[str, Any]:
        return run_job(job.name, db_now())

    run.__name__ = run.__qualname__ = job.name
    run.__doc__ = f"Celery beat's entry to {job.where}."
    return app.task(name=job.celery_name, ignore_result=True)(run)


CELERY_TASKS: dict[str, CeleryTask] = {name: _celery_task(job) for name, job in JOBS.items()}
