"""The execution_units table's statements on the hot paths (heartbeat, claim), in plain SQL (see
taskhub.base.sql for why): the unit row lock, the heartbeat's UPDATE, the claim's status change."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import connection, transaction

from taskhub.base.rowload import fetch_models
from taskhub.base.sql import db_datetime, db_now_sql, execute, for_update, lock_columns, qn
from units.models import ExecutionUnit

TABLE = ExecutionUnit._meta.db_table


def lock_unit_row(unit_id: str) -> ExecutionUnit | None:
    """`SELECT ... FOR UPDATE` of one unit by primary key (None if there is none); inside a
    transaction. Every heartbeat and every claim takes this lock."""
    assert transaction.get_connection().in_atomic_block
    sql = f"SELECT * FROM {qn(TABLE)} WHERE {qn('id')} = %s{for_update()}"
    return next(iter(fetch_models(ExecutionUnit, sql, [unit_id])), None)


def lock_unit_columns(unit_id: str, columns: tuple[str, ...]) -> tuple[Any, ...] | None:
    """`lock_unit_row` for the hot paths (heartbeat, claim): the same lock, but only `columns`, as
    the database driver returns them. None if there is no such unit."""
    return lock_columns(ExecutionUnit, unit_id, columns)


def set_status(unit_id: str, status: str) -> None:
    execute(f"UPDATE {qn(TABLE)} SET {qn('status')} = %s WHERE {qn('id')} = %s", [str(status), unit_id])


def save_heartbeat(
    unit_id: str,
    now: datetime | None,
    current_load: int,
    status: str,
    metadata: dict[str, Any] | None,
    stored_metadata: Any,
) -> None:
    """The unit UPDATE of a heartbeat, in one plain statement. Metadata is written only when its
    JSON differs from the stored text (agents resend the same metadata on every heartbeat). `now`
    None: stamped with the database's clock (the one the sweeper reads: node clocks may skew)."""
    stamp = db_datetime(now) if now is not None else None
    clock = "%s" if stamp is not None else db_now_sql()
    sets = [f"{qn('last_heartbeat_at')} = {clock}", f"{qn('current_load')} = %s", f"{qn('status')} = %s"]
    params: list[Any] = ([stamp] if stamp is not None else []) + [current_load, str(status)]
    if metadata is not None:
        text = ExecutionUnit._meta.get_field("metadata").get_db_prep_save(metadata, connection)
        if text != stored_metadata:
            sets.append(f"{qn('metadata')} = %s")
            params.append(text)
    sets.append(f"{qn('updated_at')} = {clock}")
    params += ([stamp] if stamp is not None else []) + [unit_id]
    execute(f"UPDATE {qn(TABLE)} SET {', '.join(sets)} WHERE {qn('id')} = %s", params)
