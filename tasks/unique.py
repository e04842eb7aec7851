"""Unique tasks: a client's `uniqueKey` holds one slot while its task is not terminal (the default
scope), or for `uniqueFor` seconds after its creation (the period scope, whatever its state).

The database enforces it: `Task.unique_slot` is a nullable UNIQUE column holding the slot while it
is held, so racing creates on any number of nodes insert at most one row per slot; the loser finds
the holder. The slot is the SHA-256 of (owner, key): keys compare byte-exact whatever the column's
collation (MariaDB's utf8mb4_unicode_ci would fold "Key" and "key"), and two clients' keys never
meet. Entering COMPLETED or CANCELLED releases an active-scope slot (tasks.entry, for every path
that finishes a task); a period slot is released by the first create that finds it expired.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from tasks.models import Task

EXISTING = "existing"  # onConflict: return the task holding the key (200)
ERROR = "error"  # onConflict: 409
ON_CONFLICT = (EXISTING, ERROR)


def unique_slot(owner_id: int | None, key: str) -> str:
    return hashlib.sha256(f"{owner_id or 0}\x00{key}".encode()).hexdigest()


def unique_fields(owner_id: int | None, key: str | None, unique_for: int | None, now: datetime) -> dict[str, Any]:
    """The columns a new task with `key` stores (none without a key)."""
    if not key:
        return {}
    until = now + timedelta(seconds=unique_for) if unique_for else None
    return {"unique_key": key, "unique_slot": unique_slot(owner_id, key), "unique_until": until}


def holders(slots: Iterable[str], now: datetime) -> dict[str, Task]:
    """The tasks holding `slots` now. A period slot that has run out is released on the way (a
    compare-and-set on the slot: two creates releasing it at once both succeed, harmlessly)."""
    wanted = list(dict.fromkeys(slots))
    if not wanted:
        return {}
    held: dict[str, Task] = {}
    expired: list[int] = []
    for task in Task.objects.filter(unique_slot__in=wanted):
        if task.unique_until is not None and task.unique_until <= now:
            expired.append(task.pk)
        else:
            held[task.unique_slot or ""] = task
    if expired:
        Task.objects.filter(pk__in=expired, unique_until__lte=now).update(unique_slot=None)
    return held
