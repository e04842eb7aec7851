"""Create the `operators` and `viewers` groups with their permissions (see console/roles.py)."""

from typing import Any

from django.db import migrations

from taskhub.console.roles import ROLES, create_all_permissions, sync_roles


def forward(apps: Any, schema_editor: Any) -> None:
    alias = schema_editor.connection.alias
    create_all_permissions(apps, alias)
    sync_roles(apps, using=alias, known_apps_only=True)


def backward(apps: Any, schema_editor: Any) -> None:
    apps.get_model("auth", "Group").objects.using(schema_editor.connection.alias).filter(name__in=list(ROLES)).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("console", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("tasks", "0001_initial"),
        ("units", "0001_initial"),
        ("apikeys", "0001_initial"),
        ("django_celery_beat", "0018_improve_crontab_helptext"),
    ]

    operations = [migrations.RunPython(forward, backward)]
