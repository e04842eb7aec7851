"""Model instances from plain SQL, for the hot paths (authentication, the unit lock, the claim).

`Model.objects.raw()` gives the same instances but sets up per query what never changes (the
column-to-field map, each column's converters): on a one-row read that costs more CPU than the
database spends answering it. Here the set-up is kept per (database, model, columns); the rows go
through the same converters (the backend's and the field's) and `Model.from_db`, as with the ORM.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import Model
from django.db.models.base import DEFERRED

M = TypeVar("M", bound=Model)
Converter = Callable[[Any, Any, Any], Any]
# (column position per concrete field, or None when the SELECT left it out; converters per field)
Plan = tuple[list[int | None], list[tuple[int, list[Converter], Any]]]
_plans: dict[tuple[str, type[Model], tuple[str, ...]], Plan] = {}


def _plan(alias: str, model: type[Model], columns: tuple[str, ...]) -> Plan:
    key = (alias, model, columns)
    plan = _plans.get(key)
    if plan is None:
        connection = connections[alias]
        name = connection.introspection.identifier_converter
        where = {name(column): pos for pos, column in enumerate(columns)}
        fields = model._meta.concrete_fields
        positions = [where.get(name(f.column)) for f in fields]
        converters: list[tuple[int, list[Converter], Any]] = []
        for index, field in enumerate(fields):
            if positions[index] is None:
                continue
            col = field.get_col(model._meta.db_table)
            funcs = connection.ops.get_db_converters(col) + col.get_db_converters(connection)
            if funcs:
                converters.append((index, funcs, col))
        plan = _plans[key] = (positions, converters)
    return plan


def fetch_models(model: type[M], sql: str, params: Sequence[Any], *, using: str = DEFAULT_DB_ALIAS) -> list[M]:
    """The rows of `sql` (columns named as the model's) as instances of `model`; columns it does
    not select are deferred, as with `raw()`."""
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        columns = tuple(c[0] for c in cursor.description)
        rows = cursor.fetchall()
    positions, converters = _plan(using, model, columns)
    names = [f.attname for f, pos in zip(model._meta.concrete_fields, positions, strict=True) if pos is not None]
    out: list[M] = []
    for row in rows:
        values = [DEFERRED if pos is None else row[pos] for pos in positions]
        for index, funcs, col in converters:
            value = values[index]
            for func in funcs:
                value = func(value, col, connection)
            values[index] = value
        out.append(model.from_db(using, names, [v for v in values if v is not DEFERRED]))
    return out
