"""The roles again, now that the schedules app has its models (see console/roles.py)."""

from typing import Any

from django.db import migrations

from taskhub.console.roles import create_all_permissions, sync_roles


def forward(apps: Any, schema_editor: Any) -> None:
    alias = schema_editor.connection.alias
    create_all_permissions(apps, alias)
    sync_roles(apps, using=alias, known_apps_only=True)


class Migration(migrations.Migration):
    dependencies = [
        ("console", "0003_rollups"),
        ("schedules", "0001_initial"),
    ]

    operations = [migrations.RunPython(forward, migrations.RunPython.noop)]
