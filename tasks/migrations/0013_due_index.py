from django.db import migrations, models


class Migration(migrations.Migration):
    """The oldest due PENDING task of each type (`taskhub_task_oldest_due_age_seconds`, the queue
    overview's oldestDueAgeSeconds): MIN(available_at) per type read as one index entry per type."""

    dependencies = [
        ("tasks", "0012_traceparent"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="task",
            index=models.Index(fields=["status", "task_type", "available_at"], name="task_due_by_type_idx"),
        ),
    ]
