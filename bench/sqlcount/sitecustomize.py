"""Bench-only instrumentation: count the SQL statements a hub process sends, by verb and table.

Put this directory first on PYTHONPATH and set BENCH_SQL_COUNT=1 (bench.push_queue.metrics_knobs
does both for the web of the issue-14 rows): Python imports this module at start-up, and every
Django database connection the process opens then counts each statement it executes (through any
cursor: the ORM and the plain-SQL helpers alike) and each COMMIT in the Prometheus counter
`bench_sql_statements_total{verb, table}`. With PROMETHEUS_MULTIPROC_DIR shared by the web workers,
`/metrics` sums every process's counts (bench.dispatch.waiters_per_create reads it). Without
BENCH_SQL_COUNT this module does nothing; the hub's own code is untouched.

An experiment knob beside it: BENCH_SWITCH_INTERVAL=<seconds> sets the process's GIL switch
interval (`sys.setswitchinterval`, 0.005 by default) in the processes started with this directory
on PYTHONPATH that bench.stack started as the web (WEB_CONCURRENCY set), to A/B it without
changing the hub.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE|JOIN)\s+`?(\w+)`?", re.IGNORECASE)


def shape(sql: str) -> tuple[str, str]:
    """(verb, first table named) of a statement: ("SELECT", "tasks"), ("COMMIT", "")."""
    text = sql.lstrip()
    verb = text.split(None, 1)[0].upper() if text else ""
    found = _TABLE.search(text)
    return verb, found.group(1) if found else ""


def _install() -> None:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.backends.signals import connection_created
    from prometheus_client import Counter

    statements = Counter("bench_sql_statements", "SQL statements sent (bench instrumentation)", ["verb", "table"])

    def counted(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        statements.labels(*shape(str(sql))).inc()
        return execute(sql, params, many, context)

    def on_connect(sender: Any, connection: Any, **kwargs: Any) -> None:
        if counted not in connection.execute_wrappers:
            connection.execute_wrappers.append(counted)

    connection_created.connect(on_connect, weak=False)
    commit = getattr(BaseDatabaseWrapper, "_commit")  # noqa: B009 (a private method, patched)

    def counting_commit(self: Any) -> Any:
        if self.connection is not None:
            statements.labels("COMMIT", "").inc()
        return commit(self)

    setattr(BaseDatabaseWrapper, "_commit", counting_commit)  # noqa: B010


if os.environ.get("BENCH_SQL_COUNT") == "1":
    _install()
if os.environ.get("BENCH_SWITCH_INTERVAL") and os.environ.get("WEB_CONCURRENCY"):  # the web only
    sys.setswitchinterval(float(os.environ["BENCH_SWITCH_INTERVAL"]))
