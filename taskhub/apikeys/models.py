from __future__ import annotations

from django.conf import settings
from django.db import models


class Scope(models.TextChoices):
    TASKS_READ = "tasks:read"
    TASKS_WRITE = "tasks:write"
    UNITS_READ = "units:read"
    UNITS_WRITE = "units:write"
    UNITS_REGISTER = "units:register"
    QUEUES_READ = "queues:read"
    QUEUES_WRITE = "queues:write"


ALL_SCOPES: tuple[str, ...] = tuple(Scope.values)


class ApiKey(models.Model):
    """A client credential. Only a sha256 of the key is stored; the key is shown once."""

    name = models.CharField(max_length=100, unique=True)
    prefix = models.CharField(max_length=16, help_text="First characters of the key, to recognise it.")
    key_hash = models.CharField(max_length=64, unique=True)
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_used_at = models.DateTimeField(null=True, blank=True)
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
