"""Run a job by name, timing it and logging what it did."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

from taskhub.base import metrics
from taskhub.jobs.registry import JOBS

logger = logging.getLogger("taskhub.jobs")


def run_job(name: str, now: datetime) -> dict[str, Any]:
    started = time.perf_counter()
    result = JOBS[name].run(now)
    elapsed = time.perf_counter() - started
    metrics.observe_job(name, elapsed)
    if any(result.values()):
        logger.info("job %s: %s in %.3fs", name, result, elapsed, extra={"job": name, "seconds": elapsed})
    else:
        logger.debug("job %s: nothing to do (%.3fs)", name, elapsed)
    return result
