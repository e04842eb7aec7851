"""Cron expressions in a time zone (cronsim: the parser healthchecks.io uses; zoneinfo for zones).

Fire times are computed in the schedule's zone, so "0 9 * * *" in Europe/Berlin fires at 09:00
local time on both sides of a DST change (cronsim's rules for the skipped and the repeated hour),
and are stored and compared in UTC."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from taskhub.base.errors import InvalidInput


def zone(name: str, field: str = "timezone") -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError):
        raise InvalidInput(field, f"unknown time zone {name!r} (an IANA name such as Europe/Berlin)") from None


def check_cron(expression: str, field: str = "cron") -> str:
    expression = " ".join(expression.split())
    if len(expression.split(" ")) != 5:
        raise InvalidInput(field, "five fields: minute hour day-of-month month day-of-week")
    try:
        next(iter(CronSim(expression, datetime(2000, 1, 1, tzinfo=UTC))))
    except (CronSimError, StopIteration) as exc:
        raise InvalidInput(field, f"invalid cron expression: {exc or 'never fires'}") from None
    return expression


def fire_times(expression: str, tz: str, after: datetime) -> Iterator[datetime]:
    """The fire times strictly after `after`, in order, in UTC."""
    for local in CronSim(expression, after.astimezone(zone(tz))):
        yield local.astimezone(UTC)


def next_times(expression: str, tz: str, after: datetime, n: int) -> list[datetime]:
    times = fire_times(expression, tz, after)
    return [next(times) for _ in range(n)]
