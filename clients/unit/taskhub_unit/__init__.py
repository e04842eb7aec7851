"""taskhub-unit: the execution-unit SDK for a taskhub hub, written against its HTTP API only.

    from taskhub_unit import TaskContext, Worker

    worker = Worker("http://127.0.0.1:8000", key, id="worker-1", capacity=5)

    @worker.handler("DATA_PROCESSING")
    def convert(job: Convert, ctx: TaskContext) -> dict: ...   # Convert: a dataclass, checked first

    worker.run()

What this package exports (`__all__`) is its interface; its modules (`agent`, `client`, `reporter`,
`runs`, `spool`, ...) are the runtime's internals. The `taskhub-unit` command (`taskhub_unit.cli`)
is a shell over `Worker`. See docs/agent.md.
"""

from __future__ import annotations

__version__ = "0.2.0"

from taskhub_unit._input import InvalidInput
from taskhub_unit.context import NonRetryableError, TaskCancelled, TaskContext, TaskFailed
from taskhub_unit.registration import RegistrationRefused, UnitEvicted, UnitInUse
from taskhub_unit.worker import Worker

__all__ = [
    "InvalidInput",
    "NonRetryableError",
    "RegistrationRefused",
    "TaskCancelled",
    "TaskContext",
    "TaskFailed",
    "UnitEvicted",
    "UnitInUse",
    "Worker",
    "__version__",
]
