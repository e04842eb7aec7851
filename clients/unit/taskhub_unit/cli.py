"""`taskhub-unit`: run an execution unit against a taskhub hub. A thin shell over `Worker`: flags and
environment in, one handler registered for `--type`, signals to `worker.stop()`.

Every flag can also come from the environment (the flag wins). Prefer the environment for the
enroll key: command lines are visible to every user of the machine (`ps`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from taskhub_unit import __version__
from taskhub_unit.handlers import BUILTINS, resolve_handler
from taskhub_unit.registration import RegistrationRefused, UnitEvicted, UnitInUse
from taskhub_unit.worker import Worker

log = logging.getLogger("taskhub_unit")

EXIT_REFUSED = 3
EXIT_IN_USE = 4  # another process holds the unit id, or took it over: see --replace
EXIT_EVICTED = 5  # an operator deregistered the unit while this process ran it
NAME = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a positive number")
    return value


def _claim_wait(raw: str) -> float:
    value = float(raw)
    if not 0 <= value <= 30:
        raise ValueError("must be between 0 (poll) and 30 seconds")
    return value


def _seconds_or_off(raw: str) -> float:
    value = float(raw)
    if not value >= 0 or value == float("inf"):
        raise ValueError("must be 0 (off) or a positive number")
    return value


def _flag(raw: str) -> bool:
    value = raw.lower()
    if value not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
        raise ValueError("use 1/0, true/false, yes/no or on/off")
    return value in ("1", "true", "yes", "on")


def _name(raw: str) -> str:
    if not NAME.match(raw):
        raise ValueError("use 1-64 letters, digits and _ . : -")
    return raw


def _json_object(raw: str) -> dict[str, Any]:
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object")
    return value


def _default_unit_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_.:\-]", "-", socket.gethostname())[:50] or "unit"
    return f"{host}-{os.getpid()}"


def build_parser(environ: dict[str, str] | None = None) -> argparse.ArgumentParser:
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="taskhub-unit",
        description=(
            "Run an execution unit: register with the hub, heartbeat, claim tasks of one type up to "
            "the capacity, run the handler on each (threads), stream logs and progress, report "
            "results. SIGTERM/Ctrl-C drains (stop claiming, finish running tasks within "
            "--drain-timeout, report, exit 0); a second signal stops at once."
        ),
        epilog=(
            f"Built-in handlers: {', '.join(BUILTINS)}. A handler is a function taking a "
            "taskhub_unit.TaskContext and returning the result (JSON); raising "
            "taskhub_unit.NonRetryableError fails the attempt without a retry. See docs/agent.md."
        ),
    )
    errors: list[str] = []

    def option(
        flag: str, var: str, convert: Callable[[str], Any], default: Any, help_text: str, *, secret: bool = False
    ) -> None:
        raw = env.get(var)
        if raw is not None and raw.strip() != "":
            try:
                default = convert(raw.strip())
            except (ValueError, json.JSONDecodeError) as exc:
                shown = "<hidden>" if secret else repr(raw)
                errors.append(f"environment variable {var}={shown}: {exc}")
        if secret:
            now = "set" if default else "not set"
        else:
            now = (
                "none" if default in (None, "") else str(json.dumps(default) if isinstance(default, dict) else default)
            )
        text = f"{help_text} [env {var}; now: {now}]".replace("%", "%%")
        if convert is _flag:  # a switch: `--replace`, or the variable set to true
            parser.add_argument(flag, action="store_true", default=bool(default), help=text)
        else:
            parser.add_argument(flag, type=convert, default=default, help=text)

    option("--server", "TASKHUB_SERVER", str, None, "the hub's base URL, e.g. http://127.0.0.1:8000")
    option(
        "--enroll-key",
        "TASKHUB_ENROLL_KEY",
        str,
        None,
        "an API key with the units:register scope; the unit trades it for its own token",
        secret=True,
    )
    option("--id", "TASKHUB_UNIT_ID", _name, _default_unit_id(), "the unit's id (stable across restarts)")
    option("--type", "TASKHUB_UNIT_TYPE", _name, "DATA_PROCESSING", "the task type this unit runs")
    option("--capacity", "TASKHUB_CAPACITY", _positive_int, 5, "tasks run at the same time")
    option(
        "--handler",
        "TASKHUB_HANDLER",
        str,
        None,
        f"package.module:function, or a built-in ({', '.join(BUILTINS)}); "
        "default: the built-in for the type (DATA_PROCESSING: data_processing)",
    )
    option("--name", "TASKHUB_UNIT_NAME", str, None, "a display name (default: the id)")
    option("--endpoint", "TASKHUB_ENDPOINT", str, "", "an http(s) URL shown to operators")
    option("--metadata", "TASKHUB_METADATA", _json_object, {}, "extra metadata as a JSON object")
    option(
        "--data-dir",
        "TASKHUB_DATA_DIR",
        Path,
        None,
        "directory data_processing reads and writes in (default: the working directory), and where results "
        "are spooled before they are reported, so a crash does not lose them (none without it)",
    )
    option("--poll-interval", "TASKHUB_POLL_INTERVAL", _positive_float, 1.0, "seconds between claims when idle")
    option(
        "--claim-wait",
        "TASKHUB_CLAIM_WAIT",
        _claim_wait,
        30.0,
        "long-poll claims: seconds the hub may hold an idle claim until work comes (0-30; 0: poll instead)",
    )
    option("--drain-timeout", "TASKHUB_DRAIN_TIMEOUT", _positive_float, 30.0, "grace period on SIGTERM (s)")
    option(
        "--replace",
        "TASKHUB_REPLACE",
        _flag,
        False,
        "take the unit id over from a process still registered as it (its tasks fail over, it stops); "
        "without it a second live process under the same id exits with code 4",
    )
    option(
        "--status-interval",
        "TASKHUB_STATUS_INTERVAL",
        _seconds_or_off,
        30.0,
        "seconds between one-line status reports (0: none)",
    )
    option("--request-timeout", "TASKHUB_REQUEST_TIMEOUT", _positive_float, 10.0, "HTTP timeout per request (s)")
    option("--retry-max", "TASKHUB_RETRY_MAX", _positive_float, 10.0, "cap on one retry back-off (s)")
    option(
        "--log-level",
        "TASKHUB_LOG_LEVEL",
        lambda raw: raw.upper(),
        "INFO",
        "DEBUG, INFO, WARNING or ERROR",
    )
    parser.add_argument("--version", action="version", version=f"taskhub-unit {__version__}")
    parser.set_defaults(_env_errors=errors)
    return parser


def _install_signals(worker: Worker, drain_timeout: float) -> None:
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        name = signal.Signals(signum).name
        if len(received) == 1:
            log.warning(
                "%s: draining (claiming nothing more, up to %.0fs for running tasks); send it again to stop now",
                name,
                drain_timeout,
            )
            worker.stop()
            return
        # Straight to the file descriptor: a logging lock held by a thread must not delay the exit.
        note = f"{name} again: stopping now; the hub fails over unfinished tasks on heartbeat timeout\n"
        os.write(sys.stderr.fileno(), note.encode())
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for problem in args._env_errors:
        parser.error(problem)
    if not args.server:
        parser.error("--server (or TASKHUB_SERVER) is required")
    if not args.enroll_key:
        parser.error("--enroll-key (or TASKHUB_ENROLL_KEY) is required")
    if args.log_level not in ("DEBUG", "INFO", "WARNING", "WARN", "ERROR"):
        parser.error(f"--log-level {args.log_level!r}: use DEBUG, INFO, WARNING or ERROR")
    logging.basicConfig(
        level=logging.WARNING if args.log_level == "WARN" else args.log_level,
        format=f"%(asctime)s %(levelname)s taskhub-unit[{args.id}] %(message)s",
        stream=sys.stderr,
    )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # `--handler mymodule:run` finds modules where it is run
    try:
        handler = resolve_handler(args.handler, args.type)
    except ValueError as exc:
        parser.error(str(exc))
    worker = Worker(
        args.server,
        args.enroll_key,
        args.id,
        args.capacity,
        name=args.name or "",
        endpoint=args.endpoint,
        metadata=args.metadata,
        data_dir=args.data_dir or Path.cwd(),
        spool=args.data_dir is not None,
        poll_interval=args.poll_interval,
        claim_wait=args.claim_wait,
        drain_timeout=args.drain_timeout,
        request_timeout=args.request_timeout,
        retry_max=args.retry_max,
        replace=args.replace,
        status_interval=args.status_interval,
    )
    try:
        worker.add_handler(args.type, handler, name=args.handler or getattr(handler, "__name__", ""))
    except TypeError as exc:
        parser.error(f"--handler {args.handler}: {exc}")
    _install_signals(worker, args.drain_timeout)
    try:
        return worker.run()
    except RegistrationRefused as exc:
        log.error("%s", exc)
        return EXIT_REFUSED
    except UnitEvicted as exc:
        log.error("%s", exc)
        return EXIT_EVICTED
    except UnitInUse as exc:
        log.error("%s", exc)
        return EXIT_IN_USE


if __name__ == "__main__":
    raise SystemExit(main())
