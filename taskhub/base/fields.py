"""Model fields shared by the apps."""

from __future__ import annotations

from typing import Any

from django.db import models

MYSQL_BINARY_COLLATION = "utf8mb4_bin"


class KeyField(models.CharField):  # type: ignore[type-arg]
    """A CharField that compares byte-exact on every database: ids, keys, digests, types.

    MySQL/MariaDB compare text in the table's collation (`utf8mb4_unicode_ci`: `Order-Ab1`,
    `order-ab1` and `ördér-ab1` are one value there), SQLite byte by byte. On MySQL this column gets
    the binary collation (its foreign keys follow it); elsewhere nothing changes."""

    def db_parameters(self, connection: Any) -> dict[str, Any]:
        params = super().db_parameters(connection)
        if connection.vendor == "mysql" and not getattr(self, "db_collation", None):
            params["collation"] = MYSQL_BINARY_COLLATION
        return params
