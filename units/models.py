from __future__ import annotations

from datetime import datetime

from django.db import models
from django.db.models import F
from django.db.models.functions import Coalesce, Greatest

from taskhub.apikeys.models import DEFAULT_POOL
from taskhub.base.fields import KeyField
from units.states import DrainedBy, UnitStatus

__all__ = ["DrainedBy", "ExecutionUnit", "HubHearing", "UnitEviction", "UnitStatus", "last_heard"]


def last_heard() -> Greatest:
    """When the unit was last heard, in SQL: the later of its last heartbeat and the last stamp of a
    long-poll claim it held (units.idle). What the unit's own liveness reads (the sweeper's OFFLINE,
    units.lifecycle.is_live, the console); `ExecutionUnit.last_heard_at` is the same for a row."""
    return Greatest(F("last_heartbeat_at"), Coalesce(F("last_waited_at"), F("last_heartbeat_at")))


class ExecutionUnit(models.Model):
    id = KeyField(primary_key=True, max_length=64)
    unit_type = KeyField(max_length=64, db_index=True)
    unit_name = models.CharField(max_length=255)
    capacity = models.PositiveIntegerField()
    endpoint = models.CharField(max_length=500, blank=True, default="")
    metadata = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=UnitStatus.choices, default=UnitStatus.ONLINE)
    current_load = models.PositiveIntegerField(default=0, help_text="Load the unit last reported.")
    # Hash of the unit's own bearer token (sha256 hex); the token itself is shown once.
    token_hash = KeyField(max_length=64, unique=True)
    owner = models.ForeignKey(
        "apikeys.ApiKey",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="units",
        help_text="The API key that registered this unit.",
    )
    # The process registered as this unit: a random id its agent makes at start. While that
    # process is live, a register from another instance is refused (two processes never share a
    # unit id). Empty when the registration sent none (older agents, hand-made requests).
    # Database defaults too: tools that insert units in plain SQL (bench/seed.py) need not know these.
    instance_id = KeyField(max_length=64, blank=True, default="", db_default="")
    # The registering key's execution pool (copied at register): the claim takes only tasks of it.
    pool = KeyField(max_length=64, default=DEFAULT_POOL, db_default=DEFAULT_POOL)
    drained_by = models.CharField(max_length=16, choices=DrainedBy.choices, blank=True, default="", db_default="")
    drained_by_actor = models.CharField(
        max_length=200,
        blank=True,
        default="",
        db_default="",
        help_text="Who drained it: user:NAME, key:NAME or unit:ID.",
    )
    drained_at = models.DateTimeField(null=True, blank=True)
    last_heartbeat_at = models.DateTimeField()
    # The last stamp of a long-poll claim of this unit that a serving web process held while the
    # unit held no task (units.idle). Not a heartbeat: units.hearing reads it apart.
    last_waited_at = models.DateTimeField(null=True, blank=True)
    registered_at = models.DateTimeField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "execution_units"
        ordering = ["id"]
        indexes = [
            # The sweeper's poll: live units whose last heartbeat is older than the timeout.
            models.Index(fields=["status", "last_heartbeat_at"], name="unit_liveness_idx"),
            # units.hearing's newest stamp of a held claim (one lookup per status, as for heartbeats).
            models.Index(fields=["status", "last_waited_at"], name="unit_waited_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.unit_type})"

    @property
    def last_heard_at(self) -> datetime:
        """`last_heard()` of this row."""
        waited = self.last_waited_at
        return self.last_heartbeat_at if waited is None else max(self.last_heartbeat_at, waited)


class UnitEviction(models.Model):
    """A tombstone: the process (instance id) that ran a unit an operator deregistered. That
    process's registrations are refused (409 `unit_evicted`) so its agent stops instead of coming
    back under the same id and restarting work; a new process (another instance id) may register
    the id again. Kept for EVICTION_DAYS."""

    unit_id = KeyField(max_length=64)
    instance_id = KeyField(max_length=64)
    evicted_by = models.CharField(max_length=200, blank=True, default="")
    evicted_at = models.DateTimeField()

    class Meta:
        db_table = "unit_evictions"
        ordering = ["id"]
        indexes = [models.Index(fields=["unit_id", "instance_id"], name="unit_eviction_idx")]

    def __str__(self) -> str:
        return f"{self.unit_id} ({self.instance_id})"


class HubHearing(models.Model):
    """One row: what the sweeper knows of when the hub could hear its units (units.hearing)."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    listening_since = models.DateTimeField(
        null=True, blank=True, help_text="Since when the hub has heard units without a gap (None: always)."
    )
    deaf = models.BooleanField(default=False, help_text="The last sweep heard no heartbeat anywhere.")
    deaf_from = models.DateTimeField(
        null=True, blank=True, help_text="What the hub had heard up to before its last gap (None: unknown)."
    )
    heard_until = models.DateTimeField(null=True, blank=True, help_text="What the last sweep had heard up to.")
    last_sweep_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "hub_hearing"

    def __str__(self) -> str:
        return f"hub hearing (listening since {self.listening_since}, last sweep {self.last_sweep_at})"
