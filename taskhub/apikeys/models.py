from __future__ import annotations

from django.conf import settings
from django.db import models

from taskhub.base.fields import KeyField


class Scope(models.TextChoices):
    TASKS_READ = "tasks:read"
    TASKS_WRITE = "tasks:write"
    UNITS_READ = "units:read"
    UNITS_WRITE = "units:write"
    UNITS_REGISTER = "units:register"
    QUEUES_READ = "queues:read"
    QUEUES_WRITE = "queues:write"


ALL_SCOPES: tuple[str, ...] = tuple(Scope.values)
# Execution pools (tenants): a unit claims only tasks whose owner key is in the pool of the key that
# registered the unit. One pool (this one) for every key is the single-tenant default.
DEFAULT_POOL = "default"
POOL_PATTERN = r"^[A-Za-z0-9_.:\-]{1,64}$"


class ApiKey(models.Model):
    """A client credential. Only a sha256 of the key is stored; the key is shown once."""

    name = KeyField(max_length=100, unique=True)
    prefix = KeyField(max_length=16, help_text="First characters of the key, to recognise it.")
    key_hash = KeyField(max_length=64, unique=True)
    scopes = models.JSONField(default=list)
    pool = KeyField(
        max_length=64,
        default=DEFAULT_POOL,
        db_default=DEFAULT_POOL,
        help_text="Execution pool (tenant): units this key registers claim only tasks of keys in the same pool. "
        "Set at creation.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_used_at = models.DateTimeField(null=True, blank=True)
    # Execution log lines stored on this key's tasks, against TASK_LOG_QUOTA_PER_KEY (see tasks.logs).
    log_entries = models.PositiveBigIntegerField(default=0, db_default=0)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "api_keys"
        ordering = ["name"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return self.name

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes
