"""The Celery app. Broker: Redis when REDIS_HOST is set, kombu's filesystem broker otherwise."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import beat_init, worker_ready
from kombu.transport import TRANSPORT_ALIASES

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskhub.settings")
# `filesystem://` (the embedded default's broker) with atomic message files: see taskhub/broker.py.
TRANSPORT_ALIASES["filesystem"] = "taskhub.broker:Transport"

app = Celery("taskhub")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.imports = ("taskhub.jobs.celery_tasks",)

# `manage.py runhub` waits for these marks before it says the hub is ready: the worker once it
# consumes from the broker, beat once it has read the schedule.
READY_DIR_ENV = "TASKHUB_READY_DIR"


def _mark_ready(role: str) -> None:
    directory = os.environ.get(READY_DIR_ENV)
    if directory:
        Path(directory, role).touch()


@worker_ready.connect
def _worker_ready(**_: Any) -> None:
    _mark_ready("worker")


@beat_init.connect
def _beat_ready(**_: Any) -> None:
    _mark_ready("beat")
