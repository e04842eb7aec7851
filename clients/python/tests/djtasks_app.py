"""Task functions for test_django_tasks.py (imported once Django's settings are configured)."""

from __future__ import annotations

from django_tasks import task


class Boom(Exception):
    pass


@task(priority=5)
def add(a: int, b: int) -> int:
    return a + b


@task(max_retries=0, timeout_seconds=30)
def boom() -> None:
    raise Boom("nope")
