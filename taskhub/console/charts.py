"""Charts drawn on the server as inline SVG (no library, no CDN, no JavaScript), from the per-minute
rollups (taskhub/jobs/rollups.py) and the queue page's per-minute percentiles: stacked bars and lines
over the last hour, one minute a slot. The unit page's load and the queue pages use the one `chart`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import NamedTuple

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from taskhub.jobs.rollups import RollupScope, minute_start, series

W, H, LEFT, RIGHT, TOP, BOTTOM = 720, 160, 44, 12, 10, 24
MINUTES = 60


class Series(NamedTuple):
    """One drawn series: `css` names its class (th-bar-<css> or th-line-<css>) and legend."""

    name: str
    css: str
    values: Sequence[float | None]  # one a minute, oldest first; None: nothing that minute


def plain(value: float) -> str:
    return f"{value:g}"


def seconds(value: float) -> str:
    """A duration on an axis or in a tooltip: 12ms, 3.4s, 5.2m, 1.5h."""
    if value < 1:
        return f"{value * 1000:.0f}ms"
    if value < 120:
        return f"{value:.1f}s"
    if value < 7200:
        return f"{value / 60:.1f}m"
    return f"{value / 3600:.1f}h"


def empty_chart(chart_id: str, what: str) -> SafeString:
    return format_html(
        '<p class="th-muted" id="{}-empty">{} over the last hour: no rollups yet (the {} job writes one a minute).</p>',
        chart_id,
        what,
        "rollup_minute",
    )


def unit_load_chart(unit_id: str, now: datetime, minutes: int = MINUTES) -> SafeString:
    """Running tasks per minute against capacity: bars for running, a line for capacity."""
    rows = series(RollupScope.UNIT, unit_id, now, minutes)
    if not any(rows):
        return empty_chart("th-unit-load", "Load")
    return chart(
        start=minute_start(now) - timedelta(minutes=minutes),
        bars=[Series("running", "done", [r.running if r else 0 for r in rows])],
        lines=[Series("capacity", "limit", [r.capacity if r else 0 for r in rows])],
        label="running tasks per minute (line: capacity)",
        chart_id="th-unit-load",
    )


def _legend(items: Sequence[Series], kind: str) -> SafeString:
    return format_html_join(
        " ",
        '<span class="th-legend th-legend-{}-{} th-{}-{}">{}</span>',
        ((kind, s.css, kind, s.css, s.name) for s in items),
    )


def chart(
    *,
    start: datetime,
    label: str,
    chart_id: str,
    bars: Sequence[Series] = (),
    lines: Sequence[Series] = (),
    fmt: Callable[[float], str] = plain,
) -> SafeString:
    """Bars (stacked, in the order given) and lines over the same minutes, on one scale from 0."""
    n = max([len(s.values) for s in (*bars, *lines)] or [1])
    stacks = [sum(s.values[i] or 0 for s in bars) for i in range(n)]
    top = max([*stacks, *(v for s in lines for v in s.values if v is not None)], default=0) or 1
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    step = plot_w / n

    def y(v: float) -> float:
        return TOP + plot_h - plot_h * v / top

    def minute(i: int) -> str:
        return f"{start + timedelta(minutes=i):%H:%M}"

    rects = []
    for i in range(n):
        base = 0.0
        for s in bars:
            v = s.values[i] or 0
            rects.append(
                (
                    f"{LEFT + i * step + 1:.1f}",
                    f"{y(base + v):.1f}",
                    f"{max(step - 2, 1):.1f}",
                    f"{plot_h * v / top:.1f}",
                    f"th-bar-{s.css}",
                    minute(i),
                    f"{v:g}",
                    f"{minute(i)} UTC: {s.name} {fmt(v)}",
                )
            )
            base += v
    drawn = []
    for s in lines:
        points = [(i, v) for i, v in enumerate(s.values) if v is not None]
        coords = " ".join(f"{LEFT + (i + 0.5) * step:.1f},{y(v):.1f}" for i, v in points)
        marks = format_html_join(
            "",
            '<circle cx="{}" cy="{}" r="3" data-minute="{}" data-value="{}"><title>{}</title></circle>',
            (
                (
                    f"{LEFT + (i + 0.5) * step:.1f}",
                    f"{y(v):.1f}",
                    minute(i),
                    f"{v:g}",
                    f"{minute(i)} UTC: {s.name} {fmt(v)}",
                )
                for i, v in points
            ),
        )
        drawn.append((s.css, s.name, coords, marks))
    axis = format_html_join(
        "",
        '<text x="{}" y="{}" class="th-axis" text-anchor="middle">{}</text>',
        ((f"{LEFT + (i + 0.5) * step:.1f}", H - 6, minute(i)) for i in range(0, n, 10)),
    )
    return format_html(
        '<figure class="th-chart-box"><figcaption>{} {}{}</figcaption>'
        '<svg id="{}" viewBox="0 0 {} {}" width="100%" class="th-svg" role="img" aria-label="{}" data-max="{}">'
        '<line x1="{}" x2="{}" y1="{}" y2="{}" class="th-grid"/>'
        '<text x="{}" y="{}" class="th-axis" text-anchor="end">{}</text>'
        "{}{}{}</svg></figure>",
        label,
        _legend(bars, "bar"),
        _legend(lines, "line"),
        chart_id,
        W,
        H,
        label,
        f"{top:g}",
        LEFT,
        W - RIGHT,
        TOP + plot_h,
        TOP + plot_h,
        LEFT - 6,
        TOP + 8,
        fmt(top),
        format_html_join(
            "",
            '<rect x="{}" y="{}" width="{}" height="{}" class="{}" data-minute="{}" data-count="{}">'
            "<title>{}</title></rect>",
            rects,
        ),
        format_html_join(
            "",
            '<g class="th-line th-line-{}" data-series="{}"><polyline points="{}" fill="none"/>{}</g>',
            drawn,
        ),
        axis,
    )
