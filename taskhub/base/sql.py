"""Plain-SQL helpers for the hot paths (claim, heartbeat, reports, authentication).

On those paths the ORM spent more CPU compiling a statement and preparing its values than the
database spends running it: the `sql.py` modules beside the services build their statements with
these instead. Values still go through the model's fields (`prepared`), so what is stored is what
the ORM would store.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from django.db import connection, transaction
from django.db.models import Field, Model


def qn(name: str) -> str:
    """A table or column name quoted for the database in use."""
    return connection.ops.quote_name(name)


def db_datetime(value: datetime) -> Any:
    """A datetime as the ORM would send it to this database (naive UTC for MySQL and SQLite)."""
    return connection.ops.adapt_datetimefield_value(value)


def aware(value: datetime | None) -> datetime | None:
    """A datetime column as a plain cursor returns it (naive UTC), made aware."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def scalar(sql: str, params: Sequence[Any]) -> Any:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()[0]


def execute(sql: str, params: Sequence[Any]) -> int:
    """Run one statement; returns the rows it changed."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return int(cursor.rowcount)


def for_update() -> str:
    """` FOR UPDATE`, or nothing on SQLite: it has no row locks, and its IMMEDIATE transactions
    hold the write lock already (as with select_for_update)."""
    return " FOR UPDATE" if connection.features.has_select_for_update else ""


def lock_columns(model: type[Model], pk: Any, columns: Sequence[str]) -> tuple[Any, ...] | None:
    """`SELECT columns ... WHERE pk = %s FOR UPDATE` of one row, inside a transaction: the values
    as the database driver returns them (no model instance, no converters: a JSON column comes
    back as its text, a datetime naive). None if there is no such row."""
    assert transaction.get_connection().in_atomic_block
    meta = model._meta
    names = ", ".join(qn(c) for c in columns)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {names} FROM {qn(meta.db_table)} WHERE {qn(meta.pk.column)} = %s{for_update()}", [pk])
        row = cursor.fetchone()
    return tuple(row) if row is not None else None


def model_field(model: type[Model], name: str) -> Field:
    field = model._meta.get_field(name)
    assert isinstance(field, Field)
    return field


def prepared(field: Field, value: Any, memo: dict[tuple[str, Any], Any]) -> Any:
    """`value` as `field` sends it to the database, prepared once per distinct value in `memo`."""
    key = (field.attname, value)
    try:
        return memo[key]
    except KeyError:
        memo[key] = ready = field.get_db_prep_save(value, connection)
        return ready
    except TypeError:  # unhashable (a JSON value): no memo
        return field.get_db_prep_save(value, connection)


def insert_rows(model: type[Model], rows: Sequence[Model], batch_size: int = 1000) -> None:
    """Model instances in multi-row INSERTs of up to `batch_size` rows (what `bulk_create` sends,
    without its per-value preparation): every concrete field but an auto primary key."""
    if not rows:
        return
    meta = model._meta
    fields = [f for f in meta.concrete_fields if f is not meta.pk]
    columns = ", ".join(qn(f.column) for f in fields)
    one = f"({', '.join(['%s'] * len(fields))})"
    memo: dict[tuple[str, Any], Any] = {}
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        params = [prepared(f, getattr(row, f.attname), memo) for row in batch for f in fields]
        execute(f"INSERT INTO {qn(meta.db_table)} ({columns}) VALUES {', '.join([one] * len(batch))}", params)


def db_now_sql() -> str:
    """The database's own clock (UTC, microseconds where it has them) as an SQL expression: the one
    clock every hub node shares, for liveness stamps and the sweep's "now" (node clocks may skew)."""
    if connection.vendor == "mysql":
        return "UTC_TIMESTAMP(6)"
    return "strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')"  # in a statement run with parameters


def db_now() -> datetime:
    """The database's clock, as an aware UTC datetime (see `db_now_sql`)."""
    value = scalar(f"SELECT {db_now_sql()}", [])
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    now = aware(value)
    assert now is not None
    return now
