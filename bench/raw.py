"""The ceiling: the claim's SQL alone, from plain mysqlclient, on a copy of the `tasks` table.

    SELECT id, attempt, timeout_seconds FROM bench_raw_tasks
     WHERE status='PENDING' AND task_type=%s AND available_at <= %s
     ORDER BY priority DESC, id LIMIT n FOR UPDATE SKIP LOCKED;
    UPDATE bench_raw_tasks SET status='RUNNING', attempt=attempt+1, ... WHERE id IN (...);
    COMMIT

`CREATE TABLE ... LIKE tasks` copies the columns and every index (task_claim_idx included), the
session uses READ COMMITTED as the app does, and the same rows are seeded. Nothing else: no unit
row lock, no capacity count, no history row, no HTTP. Each process is one connection in a loop.
"""

from __future__ import annotations

from typing import Any

import MySQLdb

from bench import seed
from bench.load import Http, LoadResult, run_clients
from bench.stack import Db

TABLE = "bench_raw_tasks"
SELECT = (
    f"SELECT id, attempt, timeout_seconds FROM {TABLE} WHERE status='PENDING' AND task_type=%s "
    "AND available_at <= %s ORDER BY priority DESC, id LIMIT {n} FOR UPDATE SKIP LOCKED"
)
UPDATE = (
    f"UPDATE {TABLE} SET status='RUNNING', unit_id=%s, attempt=attempt+1, started_at=%s, progress=0, "
    "pending_command='', timeout_at=NULL, next_retry_at=NULL, updated_at=%s WHERE id IN ({ids})"
)


def prepare(db: Db, n: int, task_type: str) -> None:
    conn = db.connect(autocommit=False)
    try:
        cur = conn.cursor()
        cur.execute(f"DROP TABLE IF EXISTS {TABLE}")
        cur.execute(f"CREATE TABLE {TABLE} LIKE tasks")
        seed.insert_tasks(conn, n, task_type=task_type, owner_id=None, table=TABLE, history=False)
    finally:
        conn.close()


def _claimer(http: Http, index: int, arg: Any, deadline: float) -> dict[str, Any]:
    import time

    db, task_type, batch = arg
    conn = db.connect(autocommit=False)
    cur = conn.cursor()
    cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
    cur.execute("SET SESSION innodb_lock_wait_timeout=10")
    select = SELECT.replace("{n}", str(int(batch)))
    claimed: list[int] = []
    transactions = lock_errors = 0
    unit = f"raw-{index}"
    while time.monotonic() < deadline:
        now = seed.utcnow()
        try:
            cur.execute(select, (task_type, now))
            rows = cur.fetchall()
            if not rows:
                conn.commit()
                break
            ids = [int(r[0]) for r in rows]
            cur.execute(UPDATE.replace("{ids}", ", ".join(map(str, ids))), (unit, now, now))
            conn.commit()
        except MySQLdb.OperationalError as exc:
            conn.rollback()
            if exc.args and exc.args[0] in (1213, 1205):
                lock_errors += 1
                continue
            raise
        transactions += 1
        claimed.extend(ids)
    conn.close()
    return {"ids": claimed, "transactions": transactions, "lockErrors": lock_errors}


def measure(db: Db, *, concurrency: int, batch: int, pool: int, duration: float, meter: Any) -> dict[str, Any]:
    task_type = f"RAW_{concurrency}_{batch}"
    prepare(db, pool, task_type)
    result: LoadResult = run_clients(
        _claimer, [(db, task_type, batch)] * concurrency, port=0, duration=duration, meter=meter
    )
    ids = result.extras("ids")
    conn = db.connect(autocommit=False)
    try:
        audit = seed.claim_audit(conn, task_type, ids, table=TABLE)
    finally:
        conn.close()
    transactions = sum(result.extras("transactions"))
    return {
        "concurrency": concurrency,
        "batch": batch,
        "tasks": len(ids),
        "transactions": transactions,
        "elapsed": result.elapsed,
        "tasksPerSecond": len(ids) / result.elapsed if result.elapsed else 0.0,
        "transactionsPerSecond": transactions / result.elapsed if result.elapsed else 0.0,
        "double": audit["double"],
        "lost": audit["lost"],
        "lockErrors": sum(result.extras("lockErrors")),
        "errors": result.errors,
        "clientErrors": result.transport_errors,
        "loadgenCpuShare": result.cpu_share(),
        "cpu": result.meters,
        "drained": len(ids) >= pool,
    }
