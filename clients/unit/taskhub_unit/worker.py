"""`Worker`: the unit SDK as a library. Decorated handlers, typed input, one blocking `run()`.

    worker = Worker("http://127.0.0.1:8000", key, id="convert-1", capacity=5)

    @dataclass
    class Convert:
        input_file: str              # read from config.inputFile (or config.input_file)
        output_format: str = "json"

    @worker.handler("DATA_PROCESSING")
    def convert(job: Convert, ctx: TaskContext) -> dict:
        ctx.log.info("converting %s", job.input_file)
        ctx.progress(50)
        return {"ok": True}

    worker.run()                     # blocks until worker.stop() (from a signal handler, another thread)

A handler is `fn(ctx)` (the config as `ctx.config`) or `fn(job, ctx)`: `job` is the task's config
parsed into the dataclass named by `input=` or by the first parameter's annotation (a `dict`
annotation, or none, passes the config as it is). A config that does not fit fails the attempt
before the handler runs, not retryable, with an error naming the field (`config.inputFile: is
required`). Return a JSON-encodable result; raise `NonRetryableError` when trying again cannot help,
anything else for a retryable failure.

Each task type is a unit on the hub (the hub leases one type per unit): with one handler the unit's
id is `id`; with several, `id.TYPE` for each, all in this process, each with `capacity` slots (or
the handler's own `capacity=`). The runtime — registration, long-poll claims, heartbeats, fencing,
the spool, drain, back-off — is the agent's (`taskhub_unit.agent`), unchanged; handlers see only
the `TaskContext`.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import threading
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from taskhub_unit._input import InvalidInput, parse_input
from taskhub_unit.agent import Agent, AgentConfig
from taskhub_unit.context import NonRetryableError, TaskContext

log = logging.getLogger("taskhub_unit.worker")

F = TypeVar("F", bound=Callable[..., Any])
MAX_UNIT_ID = 64  # the hub's limit

__all__ = ["Worker"]


@dataclass(frozen=True)
class _Registration:
    task_type: str
    call: Callable[[TaskContext], Any]
    name: str
    capacity: int | None


def _input_type(fn: Callable[..., Any], given: type[Any] | None) -> tuple[bool, type[Any] | None]:
    """(takes input, its dataclass or None for the raw config) from the handler's signature."""
    params = [
        p
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if len(params) not in (1, 2):
        raise TypeError(f"handler {fn.__qualname__} must take (ctx) or (input, ctx), not {len(params)} argument(s)")
    if len(params) == 1:
        if given is not None:
            raise TypeError(f"handler {fn.__qualname__} has input={given.__name__} but takes only (ctx)")
        return False, None
    model = given
    if model is None:
        try:
            model = typing.get_type_hints(fn).get(params[0].name)
        except (NameError, TypeError):  # an annotation that names what the module cannot see
            model = None
    if model is not None and not dataclasses.is_dataclass(model):
        if typing.get_origin(model) is dict or model in (dict, Any):
            model = None
        elif given is not None:
            raise TypeError(f"input={given!r} of handler {fn.__qualname__} is not a dataclass")
        else:
            model = None  # an annotation we do not validate against: the config as it is
    return True, model


def bind(fn: Callable[..., Any], input_type: type[Any] | None = None) -> Callable[[TaskContext], Any]:
    """The agent's `handler(ctx)` for a decorated function: parse the input first, then call it."""
    takes_input, model = _input_type(fn, input_type)
    if not takes_input:
        return fn

    def call(ctx: TaskContext) -> Any:
        if model is None:
            return fn(ctx.config, ctx)
        try:
            config = ctx.task.get("config")
            job = parse_input(model, {} if config is None else config)
        except InvalidInput as exc:
            raise NonRetryableError(f"invalid input: {exc}") from None
        return fn(job, ctx)

    call.__name__ = getattr(fn, "__name__", "handler")
    call.__qualname__ = getattr(fn, "__qualname__", call.__name__)
    return call


class Worker:
    """An execution unit (or one per task type) in this process. `run()` blocks until `stop()`."""

    def __init__(
        self,
        url: str,
        key: str,
        id: str,
        capacity: int = 5,
        *,
        name: str = "",
        endpoint: str = "",
        metadata: dict[str, Any] | None = None,
        data_dir: Path | str | None = None,
        spool: bool | None = None,
        poll_interval: float = 1.0,
        claim_wait: float = 30.0,
        drain_timeout: float = 30.0,
        request_timeout: float = 10.0,
        retry_max: float = 10.0,
        replace: bool = False,
        status_interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`url`: the hub; `key`: an API key with `units:register` (traded for the unit's token);
        `id`: the unit's id, stable across restarts; `capacity`: tasks run at once (per type).
        `data_dir`: where `ctx.data_dir` points, and (`spool`, on by default when `data_dir` is
        given) where outcomes are spooled before they are reported, so a crash does not lose them.
        `clock`: the control loop's monotonic clock (claim and heartbeat times, task timeouts, the
        drain deadline), for tests."""
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if not url or not key or not id:
            raise ValueError("url, key and id are required")
        self.url, self.id, self.capacity = url, id, capacity
        self._key = key
        self._options: dict[str, Any] = {
            "unit_name": name,
            "endpoint": endpoint,
            "metadata": dict(metadata or {}),
            "data_dir": Path(data_dir) if data_dir is not None else Path.cwd(),
            "spool": data_dir is not None if spool is None else spool,
            "poll_interval": poll_interval,
            "claim_wait": claim_wait,
            "drain_timeout": drain_timeout,
            "request_timeout": request_timeout,
            "retry_max": retry_max,
            "replace": replace,
            "status_interval": status_interval,
        }
        self.clock = clock
        self._handlers: dict[str, _Registration] = {}
        self._agents: list[Agent] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._running = False

    # --- registration --------------------------------------------------------------------------

    def handler(
        self, task_type: str, *, input: type[Any] | None = None, capacity: int | None = None, name: str | None = None
    ) -> Callable[[F], F]:
        """Register the decorated function for tasks of `task_type` (returned unchanged)."""

        def register(fn: F) -> F:
            self.add_handler(task_type, fn, input=input, capacity=capacity, name=name)
            return fn

        return register

    def add_handler(
        self,
        task_type: str,
        fn: Callable[..., Any],
        *,
        input: type[Any] | None = None,
        capacity: int | None = None,
        name: str | None = None,
    ) -> None:
        if self._running:
            raise RuntimeError("register handlers before worker.run()")
        if task_type in self._handlers:
            raise ValueError(f"a handler for {task_type} is registered already")
        if capacity is not None and capacity < 1:
            raise ValueError("capacity must be at least 1")
        label = name or f"{getattr(fn, '__module__', '')}:{getattr(fn, '__qualname__', repr(fn))}"
        self._handlers[task_type] = _Registration(task_type, bind(fn, input), label, capacity)

    @property
    def task_types(self) -> list[str]:
        return list(self._handlers)

    def unit_id(self, task_type: str) -> str:
        """The hub's unit id serving `task_type`: `id`, or `id.TYPE` when the worker serves several."""
        return self.id if len(self._handlers) <= 1 else f"{self.id}.{task_type}"

    # --- running -------------------------------------------------------------------------------

    def _agent(self, reg: _Registration) -> Agent:
        config = AgentConfig(
            server=self.url,
            enroll_key=self._key,
            unit_id=self.unit_id(reg.task_type),
            unit_type=reg.task_type,
            capacity=reg.capacity or self.capacity,
            handler=reg.call,
            handler_name=reg.name,
            **self._options,
        )
        if len(config.unit_id) > MAX_UNIT_ID:
            raise ValueError(f"unit id {config.unit_id!r} is longer than {MAX_UNIT_ID} characters: shorten id")
        return Agent(config, clock=self.clock)

    def run(self) -> int:
        """Register, claim and run tasks until `stop()` drains the worker; returns 0. Raises
        RegistrationRefused (the hub refused the key), UnitInUse (another live process holds an id;
        UnitEvicted: an operator deregistered it) — with several types, after stopping the rest."""
        if not self._handlers:
            raise RuntimeError("no handlers: register one with @worker.handler(TASK_TYPE)")
        with self._lock:
            if self._running:
                raise RuntimeError("worker.run() is running already")
            self._running = True
            self._agents = [self._agent(reg) for reg in self._handlers.values()]
            if self._stop.is_set():
                return 0
        if len(self._agents) == 1:
            return self._agents[0].run()
        errors: list[BaseException] = []

        def serve(agent: Agent) -> None:
            try:
                agent.run()
            except BaseException as exc:
                errors.append(exc)
                self.stop()  # one unit cannot go on: the worker stops as a whole

        threads = [
            threading.Thread(target=serve, args=(agent,), name=f"unit-{agent.config.unit_id}", daemon=True)
            for agent in self._agents
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.5)  # a timed join: the main thread still takes signals
        if errors:
            raise errors[0]
        return 0

    def stop(self) -> None:
        """Drain: claim nothing more, let running tasks finish (up to `drain_timeout`, then give them
        back), report, and return from `run()`. Safe from a signal handler and any thread."""
        self._stop.set()
        for agent in list(self._agents):
            agent.request_drain()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()
