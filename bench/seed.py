"""Data set-up with plain SQL (fast, and outside the code under test), and the honesty checks.

Rows are written the way the product writes them: a task with its `created` history row, a task
leased to a unit with its `claimed` row, a unit with the sha256 digest of its bearer token.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

TASK_COLUMNS = (
    "name, task_type, priority, config, status, attempt, max_retries, retry_count, failover_count, "
    "timeout_seconds, available_at, progress, error, pending_command, request_fingerprint, "
    "created_at, updated_at, started_at, owner_id, unit_id"
)
BATCH = 2000


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def unit_token() -> tuple[str, str]:
    token = "thu_" + secrets.token_urlsafe(32)
    return token, hashlib.sha256(token.encode()).hexdigest()


def _chunks(rows: Sequence[Any], size: int = BATCH) -> Iterable[Sequence[Any]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def key_id(conn: Any, name: str) -> int:
    cur = conn.cursor()
    cur.execute("SELECT id FROM api_keys WHERE name=%s", (name,))
    return int(cur.fetchone()[0])


def insert_units(
    conn: Any,
    ids: Sequence[str],
    *,
    unit_type: str,
    capacity: int,
    owner_id: int,
    last_heartbeat_at: datetime | None = None,
    status: str = "ONLINE",
) -> list[str]:
    """Insert units; returns their bearer tokens (in the order of `ids`)."""
    now = utcnow()
    beat = last_heartbeat_at or now
    tokens, rows = [], []
    meta = json.dumps({"agent": "bench", "hostname": "bench"})
    for unit_id in ids:
        token, digest = unit_token()
        tokens.append(token)
        rows.append((unit_id, unit_type, unit_id, capacity, "", meta, status, 0, digest, beat, now, now, owner_id))
    cur = conn.cursor()
    for chunk in _chunks(rows):
        cur.executemany(
            "INSERT INTO execution_units (id, unit_type, unit_name, capacity, endpoint, metadata, status, "
            "current_load, token_hash, last_heartbeat_at, registered_at, updated_at, owner_id) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            chunk,
        )
    conn.commit()
    return tokens


def insert_tasks(
    conn: Any,
    n: int,
    *,
    task_type: str,
    owner_id: int | None,
    table: str = "tasks",
    history: bool = True,
    status: str = "PENDING",
    units: Sequence[str] = (),
    created_at: datetime | None = None,
    statuses: Sequence[str] = (),
    types: Sequence[str] = (),
) -> list[int]:
    """Insert `n` tasks (PENDING by default; RUNNING ones are leased round-robin to `units`, with
    attempt 1). `statuses`/`types`, when given, cycle per row. Returns their ids, in order (not
    always contiguous: InnoDB leaves auto-increment gaps after INSERT ... SELECT)."""
    now = utcnow()
    created = created_at or now - timedelta(seconds=1)
    config = json.dumps({"inputFile": "data.csv", "outputFormat": "json"})
    cur = conn.cursor()
    cur.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}")
    before = int(cur.fetchone()[0])
    rows = []
    for i in range(n):
        row_status = statuses[i % len(statuses)] if statuses else status
        row_type = types[i % len(types)] if types else task_type
        unit = units[i % len(units)] if row_status == "RUNNING" and units else None
        running = row_status == "RUNNING"
        rows.append(
            (
                f"bench task {before + i + 1}",
                row_type,
                i % 7,
                config,
                row_status,
                1 if running else 0,
                3,
                0,
                0,
                None,
                created,
                0,
                "",
                "",
                "",
                created,
                created,
                now if running else None,
                owner_id,
                unit,
            )
        )
    placeholders = ", ".join(["%s"] * 20)
    for chunk in _chunks(rows):
        cur.executemany(f"INSERT INTO {table} ({TASK_COLUMNS}) VALUES ({placeholders})", chunk)
        conn.commit()
    # Nothing else writes to the bench database while it is seeded: the new rows are those above.
    cur.execute(f"SELECT id FROM {table} WHERE id > %s ORDER BY id", (before,))
    ids = [int(r[0]) for r in cur.fetchall()]
    if len(ids) != n:
        raise RuntimeError(f"inserted {n} rows into {table} but found {len(ids)} new ones")
    first, last = ids[0], ids[-1]
    if history:
        cur.execute(
            "INSERT INTO task_status_history (task_id, from_status, to_status, reason, reason_code, actor_type, "
            "actor, unit_id, attempt, created_at) SELECT id, NULL, 'PENDING', 'created', 'created', 'system', "
            "'system:bench', "
            "NULL, 0, created_at FROM tasks WHERE id BETWEEN %s AND %s",
            (first, last),
        )
        cur.execute(
            "INSERT INTO task_status_history (task_id, from_status, to_status, reason, reason_code, actor_type, "
            "actor, unit_id, attempt, created_at) SELECT id, 'PENDING', 'RUNNING', 'claimed', 'claimed', 'unit', "
            "CONCAT('unit:', unit_id), unit_id, 1, started_at FROM tasks WHERE id BETWEEN %s AND %s "
            "AND status='RUNNING'",
            (first, last),
        )
        conn.commit()
    return ids


def reset_tasks(conn: Any) -> None:
    """Empty the task tables and the units (keeps API keys and the beat schedule)."""
    cur = conn.cursor()
    cur.execute("SET FOREIGN_KEY_CHECKS=0")
    for table in ("task_execution_logs", "task_status_history", "tasks", "execution_units"):
        cur.execute(f"TRUNCATE TABLE {table}")
    cur.execute("SET FOREIGN_KEY_CHECKS=1")
    conn.commit()


def scalar(conn: Any, sql: str, args: Sequence[Any] = ()) -> int:
    cur = conn.cursor()
    cur.execute(sql, args)
    row = cur.fetchone()
    return int(row[0] or 0) if row else 0


# --- honesty ----------------------------------------------------------------------------------


def broken_chains(conn: Any, task_type: str) -> int:
    """Tasks of `task_type` whose history is not one gap-free chain ending in the task's status."""
    links = scalar(
        conn,
        "SELECT COUNT(*) FROM (SELECT h.from_status, LAG(h.to_status) OVER (PARTITION BY h.task_id ORDER BY h.id) "
        "AS prev FROM task_status_history h JOIN tasks t ON t.id = h.task_id WHERE t.task_type=%s) x "
        "WHERE NOT (x.from_status <=> x.prev)",
        (task_type,),
    )
    ends = scalar(
        conn,
        "SELECT COUNT(*) FROM tasks t JOIN task_status_history h ON h.id = (SELECT MAX(id) FROM "
        "task_status_history WHERE task_id = t.id) WHERE t.task_type=%s AND h.to_status <> t.status",
        (task_type,),
    )
    return links + ends


def claim_audit(conn: Any, task_type: str, claimed: Sequence[int], *, table: str = "tasks") -> dict[str, int]:
    """After a claim-only run: every task handed out exactly once, and every leased task handed out."""
    seen = set(claimed)
    cur = conn.cursor()
    cur.execute(f"SELECT id, attempt FROM {table} WHERE task_type=%s AND status='RUNNING'", (task_type,))
    running = dict(cur.fetchall())
    double = (len(claimed) - len(seen)) + sum(1 for a in running.values() if a != 1)
    if table == "tasks":
        double += scalar(
            conn,
            "SELECT COUNT(*) FROM (SELECT h.task_id FROM task_status_history h JOIN tasks t ON t.id=h.task_id "
            "WHERE t.task_type=%s AND h.to_status='RUNNING' GROUP BY h.task_id HAVING COUNT(*) > 1) x",
            (task_type,),
        )
    lost = len(set(running) - seen) + len(seen - set(running))
    return {"double": double, "lost": lost, "claimed": len(seen)}
