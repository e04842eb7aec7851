"""When the hub could hear its units: the rule that keeps the hub's own outage from failing over
live work (docs/reliability.md, "Hub outages").

A unit is failed over for silence only if it was silent for UNIT_HEARTBEAT_TIMEOUT *while the hub
was listening*. The hub cannot have heard anyone

- while nothing was heard anywhere: when what the hub last heard of any unit (`newest_heard`: its
  newest heartbeat, or the newest stamp of a held long-poll claim, units.idle) is older than
  `quiet_after()` although some unit is alive, the web was down or cut off (or every unit died: the
  hub cannot tell, see below). It heard up to then (plus `quiet_after()`, a gap that is normal
  between heartbeats) and nothing after. A stamp counts because only a web process that serves
  writes it: one that drains (SIGTERM: its socket closed, no heartbeat can reach it) stops stamping
  the claims it still holds, or it would pass its outage off as hearing. Idle units heartbeat only
  every UNIT_IDLE_HEARTBEAT_INTERVAL but are stamped every UNIT_HEARTBEAT_INTERVAL, so among idle
  units a busy one's death is still its own silence;
- when the sweeper was not there to see: the first sweep of a fresh database or beat, or a sweep
  later than `late_after()` after the previous one (beat or the worker was down). An outage of the
  web in that time left no trace the sweeper could read.

Either way the hub's gap ends (`listening_since`) when it hears again (or the late sweep runs), and
a unit's silence (since it was last heard: units.models.last_heard) is counted without the gap:
the time it was silent before the gap (up to `deaf_from`, what the hub last heard) plus the time
since. A unit that heartbeats within a timeout
of the hub hearing again never counts as silent; one that died before the outage is failed over
about as late as the outage lasted, not a whole timeout later.

A silence of every unit at once looks the same as the death of every unit, so it is believed for
HUB_OUTAGE_GRACE at most: a unit silent for longer than UNIT_HEARTBEAT_TIMEOUT + HUB_OUTAGE_GRACE is
failed over even then. Failovers the hub cannot blame on the unit (those past that bound, and any
failover while the hub recovers: deaf, or within a timeout of `listening_since`) never count toward
poison (TASK_MAX_FAILOVER_COUNT).

All times are the database's clock (taskhub.base.sql.db_now): the heartbeat stamps and the
sweeper's "now" come from one clock, whatever the skew between hub nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max

from units.models import ExecutionUnit, HubHearing
from units.states import ALIVE, UnitStatus


def _timeout() -> float:
    return float(settings.UNIT_HEARTBEAT_TIMEOUT)


def quiet_after() -> float:
    """No heartbeat anywhere for this long, while some unit is alive: the hub is not hearing. Two
    heartbeat intervals, and short enough that a live unit is never found silent meanwhile."""
    interval = float(settings.UNIT_HEARTBEAT_INTERVAL)
    return min(2 * interval, 0.8 * (_timeout() - interval))


def late_after() -> float:
    """A sweep this long after the previous one cannot vouch for the time between."""
    return max(_timeout() - 2 * float(settings.UNIT_HEARTBEAT_INTERVAL), 2.5 * float(settings.SWEEP_INTERVAL))


@dataclass(frozen=True)
class Window:
    """What a sweep at `now` may conclude: the hub has heard units from `since` (None: as far back
    as anyone knows) up to `until`; before its last gap, up to `deaf_from` (None: unknown)."""

    now: datetime
    since: datetime | None
    until: datetime
    deaf: bool
    deaf_from: datetime | None = None

    def silent_before(self) -> datetime | None:
        """Units whose last heartbeat is older than this were silent for the timeout while the hub
        listened (None: nobody can have been). A unit's silence while listening is the time since its
        last heartbeat, less the hub's last gap: (deaf_from - last) + (until - since); only the time
        since `since` when nothing is known before the gap."""
        timeout = timedelta(seconds=_timeout())
        if self.since is None:
            return self.until - timeout
        heard = max(self.until - self.since, timedelta(0))
        if heard > timeout:
            return self.until - timeout
        if self.deaf_from is None:
            return None
        return self.deaf_from + heard - timeout

    def beyond_grace(self) -> datetime:
        """Units silent since before this are failed over whatever the hub heard (with
        HUB_OUTAGE_GRACE 0, every unit silent for the timeout: the rule is off)."""
        return self.now - timedelta(seconds=_timeout() + float(settings.HUB_OUTAGE_GRACE))

    @property
    def recovering(self) -> bool:
        return is_recovering(self.deaf, self.since, self.now)


def is_recovering(deaf: bool, since: datetime | None, now: datetime) -> bool:
    return deaf or (since is not None and now - since < timedelta(seconds=_timeout()))


def newest_heard() -> datetime | None:
    """When the hub last heard any unit: the newest heartbeat, or the newest stamp of a held long-poll
    claim (`last_waited_at`: only a serving web process stamps, units.idle), whichever is later. One
    index lookup per status and column (unit_liveness_idx, unit_waited_idx)."""
    stamps = [
        ExecutionUnit.objects.filter(status=status).aggregate(newest=Max(column))["newest"]
        for status in UnitStatus.values
        for column in ("last_heartbeat_at", "last_waited_at")
    ]
    return max((s for s in stamps if s is not None), default=None)


def _locked_record() -> HubHearing:
    record = HubHearing.objects.select_for_update().filter(pk=1).first()
    if record is not None:
        return record
    try:
        with transaction.atomic():
            return HubHearing.objects.create(pk=1)
    except IntegrityError:  # another sweeper made it first
        return HubHearing.objects.select_for_update().get(pk=1)


@transaction.atomic
def observe(now: datetime) -> Window:
    """The sweep's look at its own hearing, recorded for the next one: see the module docstring."""
    record = _locked_record()
    newest = newest_heard()
    alive = ExecutionUnit.objects.filter(status__in=ALIVE).exists()
    quiet = alive and (newest is None or (now - newest).total_seconds() > quiet_after())
    late = record.last_sweep_at is None or (now - record.last_sweep_at).total_seconds() > late_after()
    if late or (record.deaf and not quiet):  # a gap ended (or may have): hearing starts again now
        record.deaf_from = record.heard_until if record.last_sweep_at is not None else None
        record.listening_since = now
    until = min(newest + timedelta(seconds=quiet_after()), now) if quiet and newest is not None else now
    record.deaf, record.last_sweep_at, record.heard_until = quiet, now, until
    record.save()
    return Window(now=now, since=record.listening_since, until=until, deaf=quiet, deaf_from=record.deaf_from)


def recovering(now: datetime) -> bool:
    """Whether a failover at `now` may be the hub's own outage's doing (then it does not count
    toward poison): the last sweep heard nothing, or the hub has heard again for less than a timeout."""
    record = HubHearing.objects.filter(pk=1).values_list("deaf", "listening_since").first()
    if record is None:
        return False
    return is_recovering(record[0], record[1], now)
