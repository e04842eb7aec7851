"""How the console writes durations and statuses."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.utils.html import format_html
from django.utils.safestring import SafeString


def format_duration(delta: timedelta) -> str:
    seconds = max(int(delta.total_seconds()), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


TIME_FORMAT = "%Y-%m-%d %H:%M:%S"  # the console's one way to write a time (UTC, with seconds)


def format_time(when: datetime | None) -> str:
    return "—" if when is None else f"{when:{TIME_FORMAT}}"


def plural(n: int, noun: str, nouns: str = "") -> str:
    """`1 line`, `2 lines`."""
    return f"{n} {noun if n == 1 else (nouns or noun + 's')}"


def status_badge(status: str, title: str = "") -> SafeString:
    return format_html('<span class="th-badge th-status-{}" title="{}">{}</span>', status.lower(), title, status)
