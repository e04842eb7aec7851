from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django_celery_beat.models import IntervalSchedule, PeriodicTask

# name -> (celery task, every N seconds)
SCHEDULE = {
    "sweep_heartbeats": ("taskhub.sweep_heartbeats", lambda: settings.SWEEP_INTERVAL),
    "move_due_retries": ("taskhub.move_due_retries", lambda: settings.SWEEP_INTERVAL),
    "fail_timeouts": ("taskhub.fail_timeouts", lambda: settings.SWEEP_INTERVAL),
    "purge_old_logs": ("taskhub.purge_old_logs", lambda: 3600.0),
}


class Command(BaseCommand):
    help = (
        "Register the periodic jobs with django-celery-beat's database scheduler. Idempotent: jobs "
        "that exist keep what operators set in the admin unless --reset is given."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--reset", action="store_true", help="Overwrite intervals/enabled from settings.")

    def handle(self, *args: Any, **options: Any) -> None:
        for name, (task, every) in SCHEDULE.items():
            # Sub-second intervals use microseconds; whole seconds read better in the admin.
            seconds = every()
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
                    "task": task,
                    "interval": schedule,
                    "enabled": True,
                    "expires": None,
                    "description": f"Runs tasks.scheduling.jobs.{name} (see `manage.py runjob {name}`).",
                },
            )
            verb = "created" if created else ("reset" if options["reset"] else "kept")
            self.stdout.write(f"{verb} periodic job {obj.name} every {seconds:g}s")
