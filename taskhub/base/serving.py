"""Whether this process still serves: False from the moment it begins to drain (its server got
SIGTERM, SIGINT or SIGQUIT and closed its listening sockets). Requests it already holds may run on
for the drain (taskhub.uvicorn_worker: up to 10 s), but a new request cannot reach it, so what it
still does for them must not look like the hub hearing its units (units.idle: a draining process
stops stamping its held long-poll claims). Set by the server (taskhub.uvicorn_worker), per process."""

from __future__ import annotations

_draining = False


def begin_drain() -> None:
    global _draining
    _draining = True


def serving() -> bool:
    return not _draining


def reset() -> None:
    """A new process (or a test) serving again."""
    global _draining
    _draining = False
