"""Whether this process still serves: False from the moment it begins to drain (its server got
SIGTERM, SIGINT or SIGQUIT and closed its listening sockets). Requests it already holds may run on
for the drain (taskhub.uvicorn_worker: up to 10 s), but a new request cannot reach it, so what it
still does for them must not look like the hub hearing its units (units.idle: a draining process
stops stamping its held long-poll claims). Set by the server (taskhub.uvicorn_worker), per process."""

from __future__ import annotations

from collections.abc import Callable

_draining = False
_on_drain: list[Callable[[], None]] = []


def on_drain(callback: Callable[[], None]) -> None:
    """Call `callback` when this process begins to drain (from the server's signal handler or its
    shutdown, in the event loop's thread): e.g. end the long polls it holds, so that their units
    claim again from a process that serves instead of sitting out the drain here."""
    _on_drain.append(callback)


def begin_drain() -> None:
    global _draining
    if _draining:
        return
    _draining = True
    for callback in _on_drain:
        callback()


def serving() -> bool:
    return not _draining


def reset() -> None:
    """A new process (or a test) serving again."""
    global _draining
    _draining = False
