"""The Celery app. Broker: Redis when REDIS_HOST is set, kombu's filesystem broker otherwise."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskhub.settings")

app = Celery("taskhub")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.imports = ("tasks.celery_jobs",)
