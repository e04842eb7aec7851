"""taskhub-client: the producer SDK of taskhub (submit tasks, wait for them, follow their events).

from taskhub_client import Client

with Client("http://127.0.0.1:8000", key) as hub:
    task = hub.submit("resize", "DATA_PROCESSING", config={"inputFile": "a.png"})
    done = hub.wait(task.id, timeout=60)
"""

from taskhub_client._async import AsyncClient
from taskhub_client._sync import Client
from taskhub_client._version import __version__
from taskhub_client.errors import (
    AuthenticationError,
    Conflict,
    HubUnavailable,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    ServerError,
    TaskhubError,
    Throttled,
    ValidationError,
    WaitTimeout,
)
from taskhub_client.models import BatchItem, Event, HistoryEntry, LogEntry, Stats, Task

__all__ = [
    "AsyncClient",
    "AuthenticationError",
    "BatchItem",
    "Client",
    "Conflict",
    "Event",
    "HistoryEntry",
    "HubUnavailable",
    "LogEntry",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "ServerError",
    "Stats",
    "Task",
    "TaskhubError",
    "Throttled",
    "ValidationError",
    "WaitTimeout",
    "__version__",
]
