from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from taskhub.jobs.registry import JOBS


class Command(BaseCommand):
    help = (
        "Register the periodic jobs with django-celery-beat's database scheduler. Idempotent: jobs "
        "that exist keep what operators set in the admin unless --reset is given."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--reset", action="store_true", help="Overwrite intervals/enabled from settings.")

    def handle(self, *args: Any, **options: Any) -> None:
        for name, job in JOBS.items():
            # Sub-second intervals use microseconds; whole seconds read better in the admin.
            seconds = job.every()
            if float(seconds).is_integer():
                schedule, _ = IntervalSchedule.objects.get_or_create(
                    every=int(seconds), period=IntervalSchedule.SECONDS
                )
            else:
                schedule, _ = IntervalSchedule.objects.get_or_create(
                    every=int(seconds * 1_000_000), period=IntervalSchedule.MICROSECONDS
                )
            write = PeriodicTask.objects.update_or_create if options["reset"] else PeriodicTask.objects.get_or_create
            obj, created = write(
                name=f"taskhub: {name}",
                defaults={
                    "task": job.celery_name,
                    "interval": schedule,
                    "enabled": True,
                    "expires": None,
                    "description": f"Runs {job.where} (see `manage.py runjob {name}`).",
                },
            )
            verb = "created" if created else ("reset" if options["reset"] else "kept")
            self.stdout.write(f"{verb} periodic job {obj.name} every {seconds:g}s")
