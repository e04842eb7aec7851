"""History rows get a reason code beside the reason text; rows written before are given theirs from
what they say (their states, actor and reason), as the code that wrote them would have chosen."""

from typing import Any

from django.db import migrations, models
from django.db.models import Case, Q, Value, When

# In order: the first that matches a row gives its code (tasks.states.ReasonCode).
RULES = [
    ("created", Q(from_status__isnull=True)),
    ("claimed", Q(to_status="RUNNING", actor_type="unit", reason="claimed")),
    ("started", Q(to_status="RUNNING")),
    ("completed", Q(to_status="COMPLETED")),
    ("cancelled", Q(to_status="CANCELLED")),
    ("paused", Q(to_status="PAUSED")),
    ("pause_requested", Q(from_status="RUNNING", to_status="PENDING", actor="job:pause-request")),
    ("failover", Q(from_status="RUNNING", to_status="PENDING", actor_type="system")),
    ("requeued", Q(from_status="RUNNING", to_status="PENDING")),
    ("resumed", Q(from_status="PAUSED", to_status="PENDING")),
    ("retried", Q(from_status="FAILED", to_status="PENDING", actor="job:move_due_retries")),
    ("retried_by_hand", Q(from_status="FAILED", to_status="PENDING")),
    ("poisoned", Q(to_status="FAILED", reason__startswith="poison:")),
    ("timed_out", Q(to_status="FAILED", actor="job:timeouts")),
    ("retry_scheduled", Q(to_status="FAILED", reason__endswith=" scheduled)")),
    ("failed", Q(to_status="FAILED")),
]


def backfill(apps: Any, schema_editor: Any) -> None:
    history = apps.get_model("tasks", "TaskStatusHistory")
    code = Case(*(When(rule, then=Value(name)) for name, rule in RULES), default=Value(""))
    history.objects.using(schema_editor.connection.alias).filter(reason_code="").update(reason_code=code)


class Migration(migrations.Migration):
    dependencies = [("tasks", "0003_running_without_unit_lease")]

    operations = [
        migrations.AddField(
            model_name="taskstatushistory",
            name="reason_code",
            field=models.CharField(
                blank=True,
                choices=[
                    ("created", "Created"),
                    ("claimed", "Claimed"),
                    ("started", "Started"),
                    ("completed", "Completed"),
                    ("failed", "Failed"),
                    ("retry_scheduled", "Retry Scheduled"),
                    ("timed_out", "Timed Out"),
                    ("retried", "Retried"),
                    ("retried_by_hand", "Retried By Hand"),
                    ("resumed", "Resumed"),
                    ("paused", "Paused"),
                    ("pause_requested", "Pause Requested"),
                    ("cancelled", "Cancelled"),
                    ("failover", "Failover"),
                    ("poisoned", "Poisoned"),
                    ("requeued", "Requeued"),
                ],
                db_default="",
                default="",
                max_length=16,
            ),
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop, elidable=True),
    ]
