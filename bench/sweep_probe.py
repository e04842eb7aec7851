"""Run the heartbeat sweeper once, in-process, counting its queries: `python -m bench.sweep_probe`.

Started by the harness with the bench database's environment; prints one JSON line.
"""

from __future__ import annotations

import json
import time

import django


def main() -> None:
    django.setup()
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from units.sweeper import sweep_heartbeats

    now = timezone.now()
    connection.ensure_connection()
    with CaptureQueriesContext(connection) as ctx:
        started = time.perf_counter()
        result = sweep_heartbeats(now)
        seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "queries": len(ctx.captured_queries), "result": result}))


if __name__ == "__main__":
    import os

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskhub.settings")
    main()
