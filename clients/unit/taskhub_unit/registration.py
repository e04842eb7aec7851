"""What registering means for a unit process: the hub's answers it cannot retry, and what it says
about the unit's drain.

One unit id, one live process: every process makes a random instance id at start and sends it on
register, heartbeat and claim. The hub refuses a register from a second instance while the first is
live (409 `unit_in_use`), and a heartbeat or claim from an instance that was replaced (409
`unit_replaced`, or 401 for its dead token, then `unit_in_use` when it registers again). Either way
the process stops (exit code 4) instead of fighting over the id. A process whose unit an operator
deregistered (`DELETE /execution-units/{id}`, "Deregister" in the console) is refused too (409
`unit_evicted`) and stops with exit code 5; a new process (another instance id) may register the
id. `--replace` takes the id over at once, on the first registration only: a replaced process
never replaces its replacement back.
"""

from __future__ import annotations

import logging
from typing import Any

from taskhub_unit.client import ApiError

log = logging.getLogger("taskhub_unit.agent")

MAINTENANCE = "MAINTENANCE"


class RegistrationRefused(Exception):
    """The hub refused the enroll key or the registration itself (4xx): retrying cannot help."""


class UnitInUse(Exception):
    """Another process holds this unit id, or took it over from this one: stop, do not fight."""


class UnitEvicted(UnitInUse):
    """An operator deregistered this unit while this process ran it: the hub refuses this process's
    registrations (409 `unit_evicted`), so it stops instead of coming back and restarting work."""

    def __init__(self, exc: ApiError, unit_id: str) -> None:
        by = exc.details.get("evictedBy") or "an operator"
        at = exc.details.get("evictedAt") or "an unrecorded time"
        super().__init__(
            f"unit {unit_id} was deregistered by {by} at {at} while this process ran it; stopping. "
            "Start a new process to register it again"
        )


def is_evicted(exc: ApiError) -> bool:
    return exc.status == 409 and exc.code == "unit_evicted"


def in_use(exc: ApiError, unit_id: str, instance_id: str, *, registered_before: bool) -> UnitInUse:
    """The hub's 409 (`unit_in_use` on register, `unit_replaced` on heartbeat or claim) as the
    reason this process stops."""
    other = exc.details.get("instanceId") or "unknown"
    age = exc.details.get("lastHeartbeatSecondsAgo")
    seen = "" if age is None else f", last heartbeat {float(age):.1f}s ago"
    if registered_before or exc.code == "unit_replaced":
        return UnitInUse(
            f"another process took over unit {unit_id} (instance {other}{seen}): this process "
            f"(instance {instance_id}) was replaced; stopping"
        )
    timeout = exc.details.get("heartbeatTimeoutSeconds")
    wait = "" if timeout is None else f", or wait until it has been silent for {float(timeout):g}s"
    return UnitInUse(
        f"another process is registered as {unit_id} (instance {other}{seen}); stopping. Stop that "
        f"process first{wait}, or start this one with --replace to take over"
    )


def is_in_use(exc: ApiError) -> bool:
    return exc.status == 409 and exc.code in ("unit_in_use", "unit_replaced")


class DrainNotes:
    """Says once per drain who drained the unit: an operator, or a hub that does not say (never
    the unit's own drain while it drains)."""

    def __init__(self, unit_id: str) -> None:
        self.unit_id = unit_id
        self._seen: tuple[Any, ...] | None = None

    def see(self, reply: dict[str, Any], *, draining: bool) -> None:
        seen = (reply.get("drainedBy"), reply.get("drainedByActor"), reply.get("drainedAt"))
        if seen == self._seen or (draining and seen[0] in (None, "self")):
            return
        self._seen = seen
        note = drain_note(reply, self.unit_id)
        if note is not None:
            log.log(*note)

    def reset(self) -> None:
        self._seen = None


def drain_note(reply: dict[str, Any], unit_id: str) -> tuple[int, str] | None:
    """(log level, line) for a register or heartbeat reply that says the unit is in MAINTENANCE;
    None if there is nothing to say (our own drain, while we drain)."""
    by = reply.get("drainedBy")
    if by == "self":
        return None
    if by == "operator":
        who = reply.get("drainedByActor") or "(not recorded)"
        at = reply.get("drainedAt") or "an unrecorded time"
        return (
            logging.WARNING,
            f"this unit was drained by operator {who} at {at}; claiming nothing until an operator resumes it "
            f'(PATCH /api/v1/execution-units/{unit_id} {{"status": "ONLINE"}}, or Resume in the console)',
        )
    # A hub that does not say who drained the unit.
    return logging.WARNING, "the hub put this unit in MAINTENANCE: claiming nothing until it is back ONLINE"
