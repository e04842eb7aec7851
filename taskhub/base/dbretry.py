"""Retry a transaction that lost a deadlock or a lock wait, so those never reach a client."""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from django.db import OperationalError

P = ParamSpec("P")
R = TypeVar("R")
RETRYABLE_MYSQL_ERRORS = {1213, 1205}  # deadlock found; lock wait timeout exceeded


def is_lock_error(exc: OperationalError) -> bool:
    code = exc.args[0] if exc.args else None
    return code in RETRYABLE_MYSQL_ERRORS or "database is locked" in str(exc)


def retry_on_lock_error(attempts: int = 5) -> Callable[[Callable[P, R]], Callable[P, R]]:
    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            for attempt in range(1, attempts + 1):
                try:
                    return fn(*args, **kwargs)
                except OperationalError as exc:
                    if attempt == attempts or not is_lock_error(exc):
                        raise
                    time.sleep(random.uniform(0, 0.01 * 2**attempt))
            raise AssertionError("unreachable")

        return wrapper

    return decorate
