from __future__ import annotations

from django.db import models

from taskhub.jobs.rollups import MinuteRollup  # the console's table, declared beside its job

__all__ = ["Console", "MinuteRollup"]


class Console(models.Model):
    """No table: a holder for the console's own permissions (Django ties permissions to a model).

    Unmanaged, so no table is created and test flushes skip it; the permissions and their
    content type are real rows, granted to the `operators` / `viewers` groups in migrations."""

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [
            ("view_dashboard", "Can view the operator dashboard"),
            ("operate_tasks", "Can retry, cancel, pause and resume tasks"),
            ("operate_units", "Can drain, resume and deregister execution units"),
        ]

    def __str__(self) -> str:
        return "operator console"
