"""The execution-unit state machine, as data: the statuses, the one table of moves with what may
cause each, and the two sets the rest of the hub asks about, each defined once:

- `ALIVE`: the unit may still be running what it holds (ONLINE, BUSY, and MAINTENANCE: a draining
  unit keeps its tasks). The sweeper watches these units' heartbeats; a task such a unit holds is
  the hub's to take back, not a client's; its running tasks are running.
- `CLAIMING`: the unit offers capacity (ONLINE, BUSY): it claims tasks, and its capacity is the
  hub's online capacity.
"""

from __future__ import annotations

from django.db import models


class UnitStatus(models.TextChoices):
    ONLINE = "ONLINE"
    BUSY = "BUSY"  # online, no free capacity
    MAINTENANCE = "MAINTENANCE"  # draining: claims nothing, keeps its running tasks
    OFFLINE = "OFFLINE"  # silent past UNIT_HEARTBEAT_TIMEOUT (or stopped); must heartbeat/re-register to claim


class DrainedBy(models.TextChoices):
    """Who put a unit in MAINTENANCE. The unit's own drain (its process shutting down) ends when it
    registers again; an operator's (a user or an API key) lasts until an operator resumes it."""

    SELF = "self"
    OPERATOR = "operator"


U = UnitStatus
ALIVE: frozenset[str] = frozenset({U.ONLINE, U.BUSY, U.MAINTENANCE})
CLAIMING: frozenset[str] = frozenset({U.ONLINE, U.BUSY})
ALL: frozenset[str] = frozenset(U.values)


class Cause(models.TextChoices):
    """What moves a unit from one status to another."""

    REGISTER = "register"  # a registration: ONLINE, or MAINTENANCE while an operator's drain lasts
    HEARTBEAT = "heartbeat"  # its load (ONLINE/BUSY), a drained unit back (MAINTENANCE), stopping (OFFLINE)
    CLAIM = "claim"  # its load after a claim
    DRAIN = "drain"  # an operator, or the unit itself shutting down
    RESUME = "resume"  # an operator ends a drain
    SWEEP = "sweep"  # silent past UNIT_HEARTBEAT_TIMEOUT


def _pairs(sources: frozenset[str], targets: frozenset[str]) -> frozenset[tuple[str, str]]:
    return frozenset((s, t) for s in sources for t in targets if s != t)


# The one table of unit moves: (from, to) pairs per cause. A status written unchanged is no move.
MOVES: dict[str, frozenset[tuple[str, str]]] = {
    Cause.REGISTER: _pairs(ALL, frozenset({U.ONLINE, U.MAINTENANCE})),
    # A heartbeat never ends a drain (only a registration or an operator's resume does).
    Cause.HEARTBEAT: _pairs(ALL, ALL) - _pairs(frozenset({U.MAINTENANCE}), CLAIMING),
    Cause.CLAIM: _pairs(CLAIMING, CLAIMING),
    Cause.DRAIN: _pairs(CLAIMING, frozenset({U.MAINTENANCE})),
    Cause.RESUME: _pairs(frozenset({U.MAINTENANCE}), frozenset({U.ONLINE})),
    Cause.SWEEP: _pairs(ALIVE, frozenset({U.OFFLINE})),
}


def can_move(source: str, target: str, cause: str) -> bool:
    return source == target or (source, target) in MOVES[cause]


def check_move(source: str, target: str, cause: str) -> str:
    """`target`, if `cause` may move a unit there from `source`; a move the table lacks is a bug."""
    if not can_move(source, target, cause):
        raise AssertionError(f"a {cause} may not move a unit from {source} to {target} (units.states.MOVES)")
    return target
