"""The steps an operation of `Core` yields to the client driving it (see `_core`), and what the
client sends back: each performed step's `Outcome`."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Send:
    """Send `request`; the reply is the httpx.Response (its body read unless `stream`; a streamed
    error answer is read too), or the httpx.TransportError thrown into the operation."""

    request: httpx.Request
    stream: bool = False


@dataclass(frozen=True, slots=True)
class Read:
    """The next chunk of a streamed response's body: bytes, b"" at its end, or a TransportError."""

    response: httpx.Response


@dataclass(frozen=True, slots=True)
class Close:
    response: httpx.Response


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Emit:
    """An item for the caller of an iterating operation (list, logs, events)."""

    value: Any


Step = Send | Read | Close | Sleep | Emit
Steps = Generator[Step, Any, T]


@dataclass(slots=True)
class Outcome:
    """A performed step's result, to resume the operation with."""

    value: Any = None
    error: BaseException | None = None

    def resume(self, steps: Steps[Any]) -> Step:
        return steps.send(self.value) if self.error is None else steps.throw(self.error)


def returning(steps: Steps[T]) -> Steps[None]:
    """An operation that returns a value, as one that emits it: the clients drive only the latter."""
    value = yield from steps
    yield Emit(value)
