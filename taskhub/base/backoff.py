"""Exponential backoff with "equal jitter", the one formula of every retry the hub schedules
(tasks' automatic retries in tasks/backoff.py, webhook deliveries in taskhub/webhooks/delivery.py)."""

from __future__ import annotations

import random


def equal_jitter(number: int, *, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds before try number `number` (1-based): uniformly drawn from [d/2, d] where
    d = min(cap, base * 2**(number-1)). It grows with n (in expectation), never exceeds the cap, and
    many retries that failed together spread out."""
    exponent = min(max(number - 1, 0), 62)
    ceiling = min(cap, base * (2**exponent))
    return (rng or random).uniform(ceiling / 2, ceiling)
