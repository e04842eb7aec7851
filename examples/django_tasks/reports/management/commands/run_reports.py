"""`manage.py run_reports`: enqueue both tasks, wait for their results, print them as JSON."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone
from django_tasks import TaskResult

from reports.tasks import broken_report, word_count


def describe(result: TaskResult[Any]) -> dict[str, Any]:
    return {
        "id": result.id,
        "status": str(result.status),
        "returnValue": result.return_value if result.status == "SUCCESSFUL" else None,
        "errors": [{"class": e.exception_class_path, "traceback": e.traceback} for e in result.errors],
        "attempts": result.attempts,
        "workerIds": result.worker_ids,
        "priority": result.task.priority,
        "queueName": result.task.queue_name,
        "runAfter": result.task.run_after.isoformat() if result.task.run_after else None,
        "args": result.args,
        "kwargs": result.kwargs,
    }


class Command(BaseCommand):
    help = "Enqueue word_count and broken_report on taskhub and print their results when finished."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--timeout", type=float, default=60.0)

    def handle(self, *args: Any, **options: Any) -> None:
        later = timezone.now() + timedelta(seconds=1)
        results: list[TaskResult[Any]] = [
            word_count.using(run_after=later).enqueue("the quick fox and the lazy dog and the cat", top=2),
            broken_report.enqueue("q3"),
        ]
        self.stdout.write(json.dumps({"enqueued": [describe(r) for r in results]}))
        deadline = time.monotonic() + options["timeout"]
        while not all(r.is_finished for r in results) and time.monotonic() < deadline:
            time.sleep(0.3)
            for result in results:
                result.refresh()
        # get_result by id, as another process would (the task's own get_result checks the type).
        finished: list[TaskResult[Any]] = [
            word_count.get_result(results[0].id),
            broken_report.get_result(results[1].id),
        ]
        self.stdout.write(json.dumps({"finished": [describe(r) for r in finished]}))
