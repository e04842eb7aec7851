from __future__ import annotations

from django.db import models


class OverlapPolicy(models.TextChoices):
    """What a fire does while the schedule's previous task is still active (not finished)."""

    SKIP = "skip"  # no task this time (the fire is recorded as skipped)
    ALLOW = "allow"  # a new task beside the previous one
    CANCEL = "cancel"  # cancel the previous task, then create the new one


class FireOutcome(models.TextChoices):
    CREATED = "created"
    SKIPPED = "skipped"  # overlap policy skip


class Schedule(models.Model):
    id = models.BigAutoField(primary_key=True)
    owner = models.ForeignKey(
        "apikeys.ApiKey",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="schedules",
        help_text="The API key that made the schedule and owns its tasks (empty: an operator's).",
    )
    name = models.CharField(max_length=255)
    cron = models.CharField(max_length=120, help_text="Five fields: minute hour day-of-month month day-of-week.")
    timezone = models.CharField(max_length=64, default="UTC", help_text="An IANA time zone, e.g. Europe/Berlin.")
    template = models.JSONField(help_text="The task each fire creates: the fields of POST /tasks (camelCase).")
    overlap = models.CharField(max_length=8, choices=OverlapPolicy.choices, default=OverlapPolicy.SKIP)
    catchup_seconds = models.PositiveIntegerField(
        default=300, help_text="Fire times missed (downtime) by at most this long still fire, each once."
    )
    paused = models.BooleanField(default=False)
    next_fire_at = models.DateTimeField(null=True, blank=True, help_text="The next fire time (UTC).")
    last_fire_at = models.DateTimeField(null=True, blank=True)
    # The task of the last fire, for the overlap policy. No foreign key: retention deletes tasks.
    last_task_id = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        db_table = "schedules"
        ordering = ["id"]
        indexes = [
            # The beat job's poll: WHERE paused = false AND next_fire_at <= now ORDER BY next_fire_at.
            models.Index(fields=["paused", "next_fire_at"], name="schedule_due_idx"),
            models.Index(fields=["owner", "id"], name="schedule_owner_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.cron} {self.timezone})"


class ScheduleFire(models.Model):
    """One row per schedule and fire time, whatever came of it: the UNIQUE pair is what makes a
    fire happen once, whichever beat or worker gets there, and after a restart mid-fire."""

    id = models.BigAutoField(primary_key=True)
    schedule = models.ForeignKey(Schedule, on_delete=models.CASCADE, related_name="fires")
    fire_time = models.DateTimeField()
    outcome = models.CharField(max_length=8, choices=FireOutcome.choices)
    task_id = models.BigIntegerField(null=True, blank=True, help_text="The task created (it may be pruned since).")
    created_at = models.DateTimeField(help_text="When the fire was made (its lag: created_at - fire_time).")

    class Meta:
        db_table = "schedule_fires"
        ordering = ["-id"]
        constraints = [models.UniqueConstraint(fields=["schedule", "fire_time"], name="schedule_fire_once")]

    def __str__(self) -> str:
        return f"{self.schedule_id} @ {self.fire_time:%Y-%m-%d %H:%M} {self.outcome}"
