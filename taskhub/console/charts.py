"""Charts drawn on the server as inline SVG (no library, no CDN, no JavaScript): the unit page's load
over the last hour, from the per-minute rollups (taskhub/jobs/rollups.py)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from taskhub.jobs.rollups import MinuteRollup, RollupScope, minute_start, series

W, H, LEFT, RIGHT, TOP, BOTTOM = 720, 160, 36, 12, 10, 24
MINUTES = 60


def unit_load_chart(unit_id: str, now: datetime, minutes: int = MINUTES) -> SafeString:
    """Running tasks per minute against capacity: bars for running, a line for capacity."""
    rows = series(RollupScope.UNIT, unit_id, now, minutes)
    if not any(rows):
        return format_html(
            '<p class="th-muted" id="th-unit-load-empty">Load over the last hour: no rollups yet (the {} job writes '
            "one a minute).</p>",
            "rollup_minute",
        )
    return bar_chart(
        rows,
        start=minute_start(now) - timedelta(minutes=minutes),
        value=lambda r: r.running,
        limit=lambda r: r.capacity,
        label="running tasks per minute (line: capacity)",
        chart_id="th-unit-load",
    )


def bar_chart(
    rows: list[MinuteRollup | None],
    *,
    start: datetime,
    value: Callable[[MinuteRollup], int],
    limit: Callable[[MinuteRollup], int],
    label: str,
    chart_id: str,
) -> SafeString:
    values = [value(r) if r is not None else 0 for r in rows]
    limits = [limit(r) if r is not None else 0 for r in rows]
    top = max([1, *values, *limits])
    n = max(len(rows), 1)
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    step = plot_w / n
    bars = []
    for i, v in enumerate(values):
        h = plot_h * v / top
        minute = f"{start + timedelta(minutes=i):%H:%M}"
        bars.append(
            (f"{LEFT + i * step + 1:.1f}", f"{TOP + plot_h - h:.1f}", f"{max(step - 2, 1):.1f}", f"{h:.1f}", minute, v)
        )
    line = " ".join(
        f"{LEFT + (i + 0.5) * step:.1f},{TOP + plot_h - plot_h * c / top:.1f}" for i, c in enumerate(limits)
    )
    axis = format_html_join(
        "",
        '<text x="{}" y="{}" class="th-axis" text-anchor="middle">{}</text>',
        ((f"{LEFT + (i + 0.5) * step:.1f}", H - 6, f"{start + timedelta(minutes=i):%H:%M}") for i in range(0, n, 10)),
    )
    return format_html(
        '<figure class="th-chart-box"><figcaption>{}</figcaption>'
        '<svg id="{}" viewBox="0 0 {} {}" width="100%" class="th-svg" role="img" aria-label="{}" data-max="{}">'
        '<line x1="{}" x2="{}" y1="{}" y2="{}" class="th-grid"/>'
        '<text x="{}" y="{}" class="th-axis" text-anchor="end">{}</text>'
        "{}"
        '<polyline points="{}" class="th-limit" fill="none"/>'
        "{}</svg></figure>",
        label,
        chart_id,
        W,
        H,
        label,
        top,
        LEFT,
        W - RIGHT,
        TOP + plot_h,
        TOP + plot_h,
        LEFT - 6,
        TOP + 8,
        top,
        format_html_join(
            "",
            '<rect x="{}" y="{}" width="{}" height="{}" class="th-bar-done" data-minute="{}" data-count="{}">'
            "<title>{} UTC: {}</title></rect>",
            ((x, y, w, h, m, v, m, v) for x, y, w, h, m, v in bars),
        ),
        line,
        axis,
    )
