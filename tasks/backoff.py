"""The retry backoff of tasks: exponential, capped, with jitter (the formula: taskhub/base/backoff.py)."""

from __future__ import annotations

import random
from datetime import timedelta

from django.conf import settings

from taskhub.base.backoff import equal_jitter


def retry_delay(retry_number: int, *, rng: random.Random | None = None) -> timedelta:
    """Delay before automatic retry number `retry_number` (1-based).

    Exponential `base * 2**(n-1)` capped at `TASK_RETRY_BACKOFF_MAX`, with "equal jitter": the
    delay is uniformly drawn from [d/2, d], so it always grows with n (in expectation), never
    exceeds the cap, and retries of many tasks that failed together spread out.
    """
    base = float(settings.TASK_RETRY_BACKOFF_BASE)
    cap = float(settings.TASK_RETRY_BACKOFF_MAX)
    return timedelta(seconds=equal_jitter(retry_number, base=base, cap=cap, rng=rng))
