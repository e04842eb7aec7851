"""Running one attempt's handler, and what the process tells the hub about itself."""

from __future__ import annotations

import os
import platform
import socket
from typing import Any

from taskhub_unit import __version__
from taskhub_unit.context import NonRetryableError, TaskCancelled, TaskContext, TaskFailed
from taskhub_unit.reporter import result_problem
from taskhub_unit.runs import Run

Outcome = tuple[str, dict[str, Any]]  # ("complete" | "fail", the report's body)


def run_handler(handler: Any, run: Run) -> Outcome:
    """Call the handler on the attempt (in its thread) and say what to report."""
    ctx: TaskContext = run.ctx
    body: dict[str, Any] = {"attempt": ctx.attempt}
    outcome: Outcome | None
    try:
        result = handler(ctx)
        problem = result_problem(result)
        if problem:
            ctx.logger.error(problem)
            outcome = ("fail", {**body, "error": problem, "retryable": False})
        else:
            outcome = ("complete", {**body, "result": result})
    except TaskCancelled:
        outcome = None
    except NonRetryableError as exc:
        ctx.logger.error("failed (not retryable): %s", exc)
        outcome = ("fail", {**body, "error": str(exc) or type(exc).__name__, "retryable": False})
    except TaskFailed as exc:
        ctx.logger.error("failed: %s", exc.error.partition("\n")[0])
        outcome = ("fail", {**body, "error": exc.error or type(exc).__name__, "retryable": exc.retryable})
    except BaseException as exc:  # a handler's bug must fail the attempt, not kill the unit
        ctx.logger.exception("handler raised %s", type(exc).__name__)
        outcome = ("fail", {**body, "error": f"{type(exc).__name__}: {exc}", "retryable": True})
    if run.timed_out:
        timeout = ctx.timeout_seconds or 0
        outcome = ("fail", {**body, "error": f"timed out after {timeout:g}s on the unit", "retryable": True})
    elif ctx.cancelled and not run.dead:
        outcome = ("fail", {**body, "error": f"stopped: {ctx.cancel_reason}", "retryable": True})
    elif outcome is None:
        outcome = ("fail", {**body, "error": "handler raised TaskCancelled", "retryable": True})
    return outcome


def process_metadata(extra: dict[str, Any], handler_name: str, *, draining: bool) -> dict[str, Any]:
    """The metadata sent on register and heartbeat: `extra` (--metadata) and this process."""
    meta: dict[str, Any] = {
        "agent": f"taskhub-unit {__version__}",
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "python": platform.python_version(),
        "handler": handler_name,
        "draining": draining,
    }
    if hasattr(os, "getloadavg"):
        meta["loadAverage"] = round(os.getloadavg()[0], 2)
    return {**extra, **meta}
