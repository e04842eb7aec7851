"""Two tasks: one returns a result, one raises (retried once by taskhub, then failed)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from django_tasks import TaskContext, task


class ReportError(Exception):
    """The report could not be made."""


@task(priority=10, queue_name="reports")
def word_count(text: str, top: int = 3) -> dict[str, Any]:
    words = [word.strip(".,!?").lower() for word in text.split()]
    return {"words": len(words), "top": [[word, n] for word, n in Counter(words).most_common(top)]}


@task(queue_name="reports", takes_context=True, max_retries=1)
def broken_report(context: TaskContext, name: str) -> None:
    raise ReportError(f"report {name!r} has no data (attempt {context.attempt})")
