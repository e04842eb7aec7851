"""The retry backoff formula: exponential, capped, with jitter."""

from __future__ import annotations

import random
from datetime import timedelta

from django.conf import settings


def retry_delay(retry_number: int, *, rng: random.Random | None = None) -> timedelta:
    """Delay before automatic retry number `retry_number` (1-based).

    Exponential `base * 2**(n-1)` capped at `TASK_RETRY_BACKOFF_MAX`, with "equal jitter": the
    delay is uniformly drawn from [d/2, d], so it always grows with n (in expectation), never
    exceeds the cap, and retries of many tasks that failed together spread out.
    """
    base = float(settings.TASK_RETRY_BACKOFF_BASE)
    cap = float(settings.TASK_RETRY_BACKOFF_MAX)
    exponent = min(max(retry_number - 1, 0), 62)
    ceiling = min(cap, base * (2**exponent))
    draw = (rng or random).uniform(ceiling / 2, ceiling)
    return timedelta(seconds=draw)
