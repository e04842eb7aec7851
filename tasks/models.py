from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from taskhub.apikeys.models import DEFAULT_POOL
from taskhub.base.actors import ActorType
from taskhub.base.fields import KeyField
from tasks.states import ControlCommand, ReasonCode, TaskStatus

__all__ = [
    "ControlCommand",
    "LogLevel",
    "QueueChange",
    "QueueKeyWindow",
    "QueueSettings",
    "Task",
    "TaskExecutionLog",
    "TaskStatusHistory",
]


class Task(models.Model):
    id = models.BigAutoField(primary_key=True)
    owner = models.ForeignKey(
        "apikeys.ApiKey",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="tasks",
        help_text="The API key that created the task (empty: created by an operator).",
    )
    name = models.CharField(max_length=255)
    task_type = KeyField(max_length=64)
    # The owner key's execution pool, copied at creation (operators' tasks: the default pool): a
    # unit claims only tasks of its own pool, on the claim index.
    pool = KeyField(max_length=64, default=DEFAULT_POOL, db_default=DEFAULT_POOL)
    priority = models.IntegerField(default=0, help_text="Higher number = more urgent.")
    config = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=TaskStatus.choices, default=TaskStatus.PENDING)

    # Fencing token: incremented by every claim; every report names it.
    attempt = models.PositiveIntegerField(default=0)
    max_retries = models.PositiveIntegerField()
    retry_count = models.PositiveIntegerField(default=0, help_text="Automatic retries used.")
    failover_count = models.PositiveIntegerField(default=0, help_text="Times taken back from a lost unit.")
    timeout_seconds = models.PositiveIntegerField(null=True, blank=True)
    scheduled_at = models.DateTimeField(null=True, blank=True)

    # Precomputed "due at" columns, one per poll, each behind an index.
    available_at = models.DateTimeField(help_text="A PENDING task is claimable from this time.")
    next_retry_at = models.DateTimeField(null=True, blank=True)
    timeout_at = models.DateTimeField(null=True, blank=True)
    # A unit proves it still runs its tasks by heartbeating; a RUNNING task no unit holds (started
    # with PUT status) has only this: the hub takes it back (fails it over) once it passes.
    lease_expires_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Set while RUNNING with no unit: back to PENDING at this time unless someone reports on it.",
    )

    unit = models.ForeignKey(
        "units.ExecutionUnit",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="tasks",
        help_text="The unit holding the task while RUNNING; its last holder afterwards.",
    )
    progress = models.PositiveSmallIntegerField(default=0)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    # A command for the unit that held the last attempt (cancel/pause/abort), delivered in its
    # heartbeat replies until it stops listing the task.
    pending_command = models.CharField(max_length=8, choices=ControlCommand.choices, blank=True, default="")

    # Tasks sharing a key are limited together by their queue's perKeyConcurrency / key rate limit.
    concurrency_key = KeyField(max_length=255, blank=True, default="", db_default="")
    # Set by a limited queue's claim on PENDING tasks of a key at its limit (out of the claim's index
    # range, so claims do not scan them), cleared by the claim when the key has room again and by
    # every entry into PENDING.
    held_back = models.BooleanField(default=False, db_default=False)
    idempotency_key = KeyField(max_length=255, null=True, blank=True)
    request_fingerprint = KeyField(max_length=64, blank=True, default="")
    # Unique tasks (tasks/unique.py): the client's key as given; the slot (a hash of owner and key)
    # is UNIQUE and set while the key is held: racing creates make one row.
    unique_key = KeyField(max_length=255, null=True, blank=True)
    unique_slot = KeyField(max_length=64, null=True, blank=True, unique=True, editable=False)
    unique_until = models.DateTimeField(
        null=True, blank=True, help_text="uniqueFor: the key is held until then, whatever the state."
    )
    # The W3C trace context the task was created in (taskhub/base/tracing.py): handed to the unit
    # with the claim, sent back on its reports. A version-00 traceparent, or null.
    traceparent = models.CharField(max_length=55, null=True, blank=True)

    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "tasks"
        ordering = ["-id"]
        indexes = [
            # The claim: WHERE status='PENDING' AND pool=? AND task_type=? AND held_back=0
            # ORDER BY priority DESC, id. Tasks a limited queue holds back (their key is at its limit)
            # are outside its range.
            models.Index(fields=["status", "pool", "task_type", "held_back", "-priority", "id"], name="task_claim_idx"),
            # A limited queue's reads under its lock: RUNNING by type (a range) and by key (grouped in
            # index order), and the release of a key's most urgent held-back tasks (one range each).
            models.Index(
                fields=["status", "task_type", "concurrency_key", "held_back", "-priority", "id"],
                name="task_running_key_idx",
            ),
            # The oldest due PENDING task of each type (/metrics, the queue overview): per type, the
            # first entry of its PENDING range (a loose index scan, "Using index for group-by").
            models.Index(fields=["status", "task_type", "available_at"], name="task_due_by_type_idx"),
            models.Index(fields=["status", "next_retry_at"], name="task_retry_due_idx"),
            models.Index(fields=["status", "timeout_at"], name="task_timeout_due_idx"),
            # The sweeper's poll of leases run out. Only RUNNING tasks that no unit holds have one, and
            # there is no status column: claims and reports (NULL stays NULL) never touch it.
            models.Index(fields=["lease_expires_at"], name="task_lease_due_idx"),
            models.Index(fields=["unit", "status"], name="task_unit_status_idx"),
            models.Index(fields=["owner", "status", "id"], name="task_owner_status_idx"),
            # "My tasks, newest first" (the default list, cursor mode, the search window): in order. The
            # index MariaDB made for the owner foreign key went when task_idempotency_uniq took its place.
            models.Index(fields=["owner", "id"], name="task_owner_id_idx"),
            # Lists ordered by priority (either direction, ties by id the same way), with or without a
            # status filter: read in order. No status column, so status changes never touch it.
            models.Index(fields=["owner", "priority", "id"], name="task_owner_prio_idx"),
            # A heartbeat's read of the unit's leases also finds the stored commands of the tasks it
            # held last (tasks/sql.py:unit_leases): a tiny range instead of all its past tasks.
            models.Index(fields=["unit", "pending_command"], name="task_unit_command_idx"),
            models.Index(fields=["status", "id"], name="task_status_id_idx"),
            models.Index(fields=["created_at"], name="task_created_idx"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["owner", "idempotency_key"], name="task_idempotency_uniq"),
            models.CheckConstraint(condition=models.Q(progress__lte=100), name="task_progress_lte_100"),
        ]

    def __str__(self) -> str:
        return f"#{self.id} {self.name}"


class TaskStatusHistory(models.Model):
    """One row per state change, written in the transaction that made it (from -> to)."""

    id = models.BigAutoField(primary_key=True)
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="history")
    from_status = models.CharField(max_length=16, choices=TaskStatus.choices, null=True, blank=True)
    to_status = models.CharField(max_length=16, choices=TaskStatus.choices)
    reason = models.TextField(blank=True, default="")
    # What the reason says, for code to read (the dashboard's series, tools): see ReasonCode.
    reason_code = models.CharField(max_length=16, choices=ReasonCode.choices, blank=True, default="", db_default="")
    actor_type = models.CharField(max_length=16, choices=ActorType.choices)
    actor = models.CharField(max_length=150)
    unit_id = KeyField(max_length=64, null=True, blank=True)
    attempt = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField()

    class Meta:
        db_table = "task_status_history"
        ordering = ["id"]
        indexes = [models.Index(fields=["task", "id"], name="history_task_idx")]
        verbose_name_plural = "task status history"

    def __str__(self) -> str:
        return f"#{self.task_id} {self.from_status or '-'} -> {self.to_status}"


class LogLevel(models.TextChoices):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARN = "WARN"
    ERROR = "ERROR"


class TaskExecutionLog(models.Model):
    id = models.BigAutoField(primary_key=True)
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="logs")
    attempt = models.PositiveIntegerField(default=0)
    level = models.CharField(max_length=8, choices=LogLevel.choices, default=LogLevel.INFO)
    message = models.TextField()
    timestamp = models.DateTimeField()
    unit_id = KeyField(max_length=64, null=True, blank=True)
    source = models.CharField(max_length=150, blank=True, default="")
    created_at = models.DateTimeField()

    class Meta:
        db_table = "task_execution_logs"
        ordering = ["id"]
        indexes = [
            models.Index(fields=["task", "attempt", "id"], name="log_task_attempt_idx"),
            models.Index(fields=["created_at"], name="log_created_idx"),
        ]

    def __str__(self) -> str:
        return f"#{self.task_id}/{self.attempt} {self.level}"


# A queue's own retention periods, in seconds: from a minute (the prune job runs every 30 s) to ten years.
MIN_RETENTION_SECONDS = 60
MAX_RETENTION_SECONDS = 10 * 366 * 24 * 3600
RETENTION_BOUNDS = [MinValueValidator(MIN_RETENTION_SECONDS), MaxValueValidator(MAX_RETENTION_SECONDS)]


class QueueSettings(models.Model):
    """A queue's settings (a queue is a task type). No row: the queue behaves as it always did (no
    pause, no limits, the global creation defaults), and the claim reads nothing more for it.

    With a row, the claim locks it (joined to the unit row's lock: units/sql.py) for the rest of its
    transaction, so claims of one limited queue are serialised across every node and its counts are
    exact; PATCH takes the same lock. The queue-wide rate window lives here too (`rate_starts`)."""

    task_type = KeyField(max_length=64, primary_key=True)
    owner = models.ForeignKey(
        "apikeys.ApiKey",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="queues",
        help_text="The API key that first configured the queue (empty: an operator); other keys do not see it.",
    )
    paused = models.BooleanField(default=False)
    paused_at = models.DateTimeField(null=True, blank=True)
    paused_by = models.CharField(max_length=150, blank=True, default="")
    max_running = models.PositiveIntegerField(null=True, blank=True, help_text="At most this many RUNNING at once.")
    per_key_concurrency = models.PositiveIntegerField(
        null=True, blank=True, help_text="At most this many RUNNING per concurrencyKey."
    )
    rate_limit = models.PositiveIntegerField(null=True, blank=True, help_text="At most this many starts ...")
    rate_period = models.PositiveIntegerField(null=True, blank=True, help_text="... in any window of these seconds.")
    key_rate_limit = models.PositiveIntegerField(null=True, blank=True, help_text="Starts per concurrencyKey ...")
    key_rate_period = models.PositiveIntegerField(null=True, blank=True, help_text="... per window of these seconds.")
    # The queue's sliding-window log: the epoch seconds of its last starts (at most rate_limit of them).
    rate_starts = models.JSONField(default=list, blank=True)
    # The concurrency keys with held-back PENDING tasks (Task.held_back): the claim releases them.
    held_keys = models.JSONField(default=list, blank=True)
    default_max_retries = models.PositiveIntegerField(null=True, blank=True)
    default_timeout_seconds = models.PositiveIntegerField(null=True, blank=True)
    default_priority = models.IntegerField(null=True, blank=True)
    # Retention (tasks/retention.py): how long the queue's finished tasks are kept, in seconds; empty:
    # the global TASK_RETENTION_DAYS / TASK_DEAD_RETENTION_DAYS.
    retention_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=RETENTION_BOUNDS,
        help_text="COMPLETED and CANCELLED tasks are deleted this many seconds after they finished.",
    )
    dead_retention_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=RETENTION_BOUNDS,
        help_text="The dead set (FAILED, no retry due) is deleted this many seconds after.",
    )
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        db_table = "queue_settings"
        ordering = ["task_type"]
        verbose_name = "queue"
        verbose_name_plural = "queues"

    def __str__(self) -> str:
        return self.task_type

    @property
    def has_limits(self) -> bool:
        return any(
            v is not None for v in (self.max_running, self.per_key_concurrency, self.rate_limit, self.key_rate_limit)
        )


class QueueKeyWindow(models.Model):
    """The sliding-window log of one concurrencyKey of a queue with a per-key rate limit: the epoch
    seconds of its last starts. Written only under the queue's settings row lock (by the claim)."""

    id = models.BigAutoField(primary_key=True)
    task_type = KeyField(max_length=64)
    concurrency_key = KeyField(max_length=255)
    starts = models.JSONField(default=list)
    last_start_at = models.DateTimeField()

    class Meta:
        db_table = "queue_key_windows"
        constraints = [
            models.UniqueConstraint(fields=["task_type", "concurrency_key"], name="queue_key_window_uniq"),
        ]
        # The claim reads only the windows of keys started within the period: a range of this index.
        indexes = [models.Index(fields=["task_type", "last_start_at"], name="queue_key_window_recent_idx")]

    def __str__(self) -> str:
        return f"{self.task_type}/{self.concurrency_key}"


class QueueChange(models.Model):
    """One row per change of a queue's settings (who, when, what: {field: [old, new]}), written in the
    transaction that made it, as task history is."""

    id = models.BigAutoField(primary_key=True)
    task_type = KeyField(max_length=64)
    actor_type = models.CharField(max_length=16, choices=ActorType.choices)
    actor = models.CharField(max_length=150)
    changes = models.JSONField(default=dict)
    created_at = models.DateTimeField()

    class Meta:
        db_table = "queue_changes"
        ordering = ["id"]
        indexes = [models.Index(fields=["task_type", "id"], name="queue_change_type_idx")]

    def __str__(self) -> str:
        return f"{self.task_type} {self.created_at:%Y-%m-%d %H:%M:%S} by {self.actor}"
