from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from taskhub.base.sql import db_now
from taskhub.jobs.registry import JOBS
from taskhub.jobs.runner import run_job


class Command(BaseCommand):
    help = "Run one periodic job by hand, now, and print what it did."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", choices=sorted(JOBS))

    def handle(self, *args: Any, **options: Any) -> None:
        result = run_job(options["name"], db_now())
        self.stdout.write(json.dumps({"job": options["name"], **result}))
