"""Processes started from the tree: each in a session of its own (a terminal's Ctrl-C reaches the
harness alone, which stops them in order) with its output appended to a log file, and stopped by
its own process-group id and the ids of its tree, nothing else."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from signal import SIGTERM

from testkit.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return parents


def children(pid: int) -> list[int]:
    """The direct children of pid."""
    return [child for child, parent in _parents().items() if parent == pid]


def descendants(pid: int) -> list[int]:
    """Processes below pid at any depth (runhub starts its children in sessions of their own, so
    its process group does not hold them)."""
    parents = _parents()
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        below = [child for child, parent in parents.items() if parent == current]
        found.extend(below)
        frontier.extend(below)
    return found


def alive(pids: Sequence[int]) -> list[int]:
    """Those of pids still running (a zombie has ended: only its parent's wait is missing)."""
    running = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            running.append(pid)
    return running


class Process:
    """One command, started (and started again, as a supervisor would) with the same environment;
    its output, of every start, in `log_path`."""

    def __init__(self, name: str, argv: Sequence[str], *, env: dict[str, str], log_path: Path, cwd: Path = ROOT):
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.log_path = log_path
        self.cwd = cwd
        self._popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self._popen = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    @property
    def started(self) -> bool:
        return self._popen is not None

    @property
    def popen(self) -> subprocess.Popen[bytes]:
        """Its latest start."""
        assert self._popen is not None, f"{self.name} was never started"
        return self._popen

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def tree(self) -> list[int]:
        """Its pid and its children's."""
        return [self.pid, *children(self.pid)]

    def signal(self, sig: int) -> None:
        """To the process alone."""
        if self.running:
            self.popen.send_signal(sig)

    def signal_group(self, sig: int) -> None:
        """To its process group: the process and the workers it forked (gunicorn's, Celery's)."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def stop(self, grace: float = 15.0, sig: int = SIGTERM) -> int | None:
        """`sig` to its group, SIGKILL after `grace` seconds; then SIGKILL to whatever of its tree
        outlived it (children in sessions of their own). Its exit code (None: never started)."""
        if self._popen is None:
            return None
        tree = descendants(self.pid)
        if self.running:
            self.signal_group(sig)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.popen.wait(timeout=10)
        for pid in alive(tree):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return self.popen.returncode

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def lines(self) -> list[str]:
        return self.output().splitlines()

    def wait_for_line(self, text: str, timeout: float = 90) -> int:
        """The index of the first output line containing text; gives up if the process exits."""

        def found() -> int:
            index = next((i + 1 for i, line in enumerate(self.lines()) if text in line), 0)
            if not index and self.started and not self.running:
                raise ProcessExited(f"{self.name} exited with {self.popen.returncode} before logging {text!r}")
            return index

        return wait_for(found, timeout, f"{self.name} to log {text!r}", interval=0.2) - 1


class ProcessExited(RuntimeError):
    pass
