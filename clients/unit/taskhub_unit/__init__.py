"""taskhub-unit: the execution-unit runtime for a taskhub hub, written against its HTTP API only.

Handlers are plain functions, `handler(ctx: TaskContext) -> result`; raise `NonRetryableError`
when trying again cannot help. See docs/agent.md.
"""

from __future__ import annotations

__version__ = "0.1.0"

from taskhub_unit.context import NonRetryableError, TaskCancelled, TaskContext, TaskFailed

__all__ = ["NonRetryableError", "TaskCancelled", "TaskContext", "TaskFailed", "__version__"]
