"""A paginator for big tables: counts at most CAP rows instead of the whole (filtered) table.

`SELECT COUNT(*) FROM (SELECT id ... LIMIT CAP+1)` reads at most CAP+1 index entries, so the task
list stays fast at millions of rows; past the cap the page says "10000+" and the operator narrows
the filters.
"""

from __future__ import annotations

from functools import cached_property

from django.core.paginator import Paginator

COUNT_CAP = 10_000


class CappedCountPaginator(Paginator):
    cap = COUNT_CAP
    capped = False

    @cached_property
    def count(self) -> int:
        n = self.object_list.order_by()[: self.cap + 1].count()  # type: ignore[attr-defined]
        if n > self.cap:
            self.capped = True
            return self.cap
        return int(n)
