#!/usr/bin/env python3
"""`make demo`: a live run of taskhub with two execution units, one of which dies halfway.

It starts a throwaway hub (`manage.py runhub` on the embedded default: SQLite, filesystem broker,
all under a temporary directory, so your own data is not touched) with a short heartbeat timeout,
creates an API key, starts two `taskhub-unit` processes, submits 50 tasks and shows progress. Once
half the tasks are done it kills one unit (SIGKILL, no goodbye) and you watch the hub notice the
silence, put that unit's tasks back in the queue and the other unit finish them. It ends with a
summary and deletes its temporary directory, unless --keep (or a failure) keeps it: then the
summary says where it is. Takes about 20 seconds.

    .venv/bin/python scripts/demo.py [--tasks 50] [--keep]      make demo DEMO_ARGS=--keep
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from testkit.hub import Hub, HubError, embedded_env, unit_argv, unit_env
from testkit.processes import Process
from testkit.waiting import TimedOut

TASK_TYPE = "DEMO"
UNITS = ("demo-unit-1", "demo-unit-2")
HEARTBEAT_TIMEOUT = "3"
SWEEP_INTERVAL = "1"
SCOPES = "tasks:read,tasks:write,units:read,units:register"
TTY = sys.stdout.isatty()
BOLD, DIM, RED, GREEN, YELLOW, RESET = (
    ("\033[1m", "\033[2m", "\033[31m", "\033[32m", "\033[33m", "\033[0m") if TTY else ("",) * 6
)


class Demo:
    def __init__(self, workdir: Path, tasks: int, keep: bool = False) -> None:
        self.workdir = workdir
        self.count = tasks
        self.keep = keep
        self.started = time.monotonic()
        env = embedded_env(
            workdir,
            SQLITE_PATH=str(workdir / "demo.sqlite3"),
            DEBUG="false",
            ALLOWED_HOSTS="127.0.0.1,localhost",
            UNIT_HEARTBEAT_TIMEOUT=HEARTBEAT_TIMEOUT,
            SWEEP_INTERVAL=SWEEP_INTERVAL,
        )
        self.hub = Hub(workdir, env=env, key_name="demo", scopes=SCOPES, log_name="hub.log")
        self.url = self.hub.url
        self.units: dict[str, Process] = {}
        self.status_shown = False
        self.last_status = ("", 0.0)
        self.marks: dict[str, float] = {}  # event -> seconds after the kill
        self.killed_at: float | None = None
        self.held: dict[int, int] = {}  # task id -> the attempt the killed unit held
        self.announced: set[tuple[int, str]] = set()

    # --- output ---
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, text: str) -> None:
        if self.status_shown and TTY:
            sys.stdout.write("\r\033[K")
        self.status_shown = False
        print(f"{DIM}[{self.elapsed():5.1f}s]{RESET} {text}", flush=True)

    def status(self, text: str) -> None:
        if TTY:
            sys.stdout.write(f"\r\033[K{DIM}[{self.elapsed():5.1f}s]{RESET} {text}")
            sys.stdout.flush()
            self.status_shown = True
        else:  # a log file, CI: a line when something moved, at most every 2s
            last_text, last_time = self.last_status
            if text != last_text and time.monotonic() - last_time >= 2.0:
                print(f"[{self.elapsed():5.1f}s] {text}", flush=True)
                self.last_status = (text, time.monotonic())

    # --- processes ---
    def start_hub(self) -> None:
        self.say(
            f"setting up a throwaway hub in {self.workdir} (SQLite, filesystem broker; "
            f"{'kept' if self.keep else 'deleted at exit unless --keep'})"
        )
        try:
            self.hub.start(timeout=40)
        except (HubError, TimedOut) as exc:
            raise SystemExit(f"the hub did not come up: {exc}; see {self.hub.log_path}") from None
        self.say(f"created API key 'demo' ({SCOPES})")
        self.say(
            f"hub up at {BOLD}{self.url}{RESET}: web + Celery worker + beat "
            f"(heartbeat timeout {HEARTBEAT_TIMEOUT}s, sweeper every {SWEEP_INTERVAL}s)"
        )

    def start_unit(self, unit_id: str) -> None:
        env = unit_env(self.url, self.hub.key, unit_id, TASK_TYPE, 5, TASKHUB_POLL_INTERVAL="0.3")
        log_path = self.workdir / f"{unit_id}.log"
        self.units[unit_id] = Process(unit_id, unit_argv(), env=env, log_path=log_path).start()
        self.say(f"started {BOLD}{unit_id}{RESET}: taskhub-unit --type {TASK_TYPE} --capacity 5 --handler sleep")

    def stop(self) -> None:
        for unit_id, unit in self.units.items():
            if unit.running:
                code = unit.stop(grace=15)
                self.say(f"{unit_id} drained and exited with {code}" if code == 0 else f"{unit_id} stopped ({code})")
        if self.hub.process.running:
            self.say("stopping the hub")
            self.hub.stop()
            self.say("hub stopped")

    # --- API ---
    def tasks(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        page = 1
        while True:
            body = self.hub.api("GET", f"/tasks?taskType={TASK_TYPE}&limit=100&page={page}&ordering=id")
            rows.extend(body["items"])
            if page >= body["totalPages"]:
                return rows
            page += 1

    def unit_status(self, unit_id: str) -> str:
        return str(self.hub.api("GET", f"/execution-units/{unit_id}")["status"])

    # --- the show ---
    def run(self) -> int:
        self.start_hub()
        for unit_id in UNITS:
            self.start_unit(unit_id)
        rng = random.Random(4)
        for n in range(1, self.count + 1):
            config = {"seconds": round(rng.uniform(0.8, 2.0), 1), "steps": 5}
            self.hub.api("POST", "/tasks", {"name": f"demo task {n}", "taskType": TASK_TYPE, "config": config})
        self.say(f"submitted {self.count} {TASK_TYPE} tasks (0.8-2s of work each, progress in 5 steps)")
        deadline = time.monotonic() + 120
        while True:
            rows = self.tasks()
            done = sum(r["status"] == "COMPLETED" for r in rows)
            if self.killed_at is None and done >= self.count // 2:
                self._kill_victim(rows)
            if self.killed_at is not None:
                self._follow_failover(rows)
            self.status(self._status_line(rows))
            if done == self.count:
                return self._summary(rows)
            if time.monotonic() > deadline:
                self.say(f"{RED}gave up waiting after 120s{RESET}; logs in {self.workdir}")
                return 1
            time.sleep(0.4)

    def _kill_victim(self, rows: list[dict[str, Any]]) -> None:
        victim = UNITS[0]
        self.held = {r["id"]: r["attempt"] for r in rows if r["status"] == "RUNNING" and r["unitId"] == victim}
        self.units[victim].signal(signal.SIGKILL)
        self.killed_at = time.monotonic()
        listed = " ".join(f"#{i}" for i in sorted(self.held))
        self.say(f"{RED}{BOLD}SIGKILL {victim}{RESET} while it runs {len(self.held)} task(s): {listed}")
        self.say(f"  nothing tells the hub; it must notice the silence (timeout {HEARTBEAT_TIMEOUT}s)")

    def _follow_failover(self, rows: list[dict[str, Any]]) -> None:
        victim, survivor = UNITS
        since_kill = time.monotonic() - (self.killed_at or 0.0)
        if "offline" not in self.marks and self.unit_status(victim) == "OFFLINE":
            self.marks["offline"] = since_kill
            self.say(f"{YELLOW}hub marked {victim} OFFLINE{RESET} after {since_kill:.1f}s of silence")
        held = [r for r in rows if r["id"] in self.held]
        for row in held:
            if row["status"] == "PENDING" and row["failoverCount"] > 0:
                event = (row["id"], "PENDING", f"failed over: back to PENDING (attempt {row['attempt']} fenced)")
            elif row["unitId"] == survivor and row["status"] == "RUNNING":
                event = (row["id"], "RUNNING", f"picked up by {survivor} (attempt {row['attempt']})")
            elif row["unitId"] == survivor and row["status"] == "COMPLETED":
                event = (row["id"], "COMPLETED", f"{GREEN}completed{RESET} on {survivor} (attempt {row['attempt']})")
            else:
                continue
            if event[:2] not in self.announced:
                self.announced.add(event[:2])
                self.say(f"  task #{row['id']} {event[2]}")
        if held and "recovered" not in self.marks and all(r["status"] == "COMPLETED" for r in held):
            self.marks["recovered"] = since_kill

    def _status_line(self, rows: list[dict[str, Any]]) -> str:
        done = sum(r["status"] == "COMPLETED" for r in rows)
        running = [r for r in rows if r["status"] == "RUNNING"]
        width = 30
        filled = width * done // max(self.count, 1)
        bar = f"{GREEN}{'█' * filled}{RESET}{'░' * (width - filled)}"
        per_unit = ", ".join(f"{u} {sum(r['unitId'] == u for r in running)}" for u in UNITS)
        pending = sum(r["status"] == "PENDING" for r in rows)
        moved = sum(r["failoverCount"] > 0 for r in rows)
        return f"{bar} {done:3}/{self.count} done | running: {per_unit} | pending {pending:2} | failed over {moved}"

    def _summary(self, rows: list[dict[str, Any]]) -> int:
        held = self.held
        wall = self.elapsed()
        by_unit = {u: sum(r["unitId"] == u for r in rows) for u in UNITS}
        moved = [r for r in rows if r["failoverCount"] > 0]
        once = all(
            sum(h["toStatus"] == "COMPLETED" for h in self.hub.api("GET", f"/tasks/{r['id']}/history")["items"]) == 1
            for r in moved
        )
        self.say(f"{BOLD}all {self.count} tasks completed{RESET}")
        print(f"\n{BOLD}Summary{RESET}")
        print(f"  completed        {sum(r['status'] == 'COMPLETED' for r in rows)}/{self.count}")
        for unit_id, n in by_unit.items():
            print(f"    by {unit_id:<12} {n}")
        # The list of held tasks comes from a poll made just before the kill: a result the victim
        # delivered in between is a task it finished, not one the hub had to take back.
        finished = [
            r["id"]
            for r in rows
            if r["id"] in held and r["unitId"] == UNITS[0] and r["attempt"] == held[r["id"]] and r["failoverCount"] == 0
        ]
        lost = [r for r in rows if r["id"] in held and r["id"] not in finished]
        note = f", {len(finished)} of which it finished before it died" if finished else ""
        print(f"  failed over      {len(moved)} (the tasks {UNITS[0]} held when it was killed: {len(held)}{note})")
        print(f"  completed once   {'yes' if once else 'NO'} (history of every failed-over task: one COMPLETED)")
        if "offline" in self.marks:
            print(f"  detection        {UNITS[0]} OFFLINE {self.marks['offline']:.1f}s after the kill")
        if "recovered" in self.marks:
            print(f"  recovery         its tasks all completed {self.marks['recovered']:.1f}s after the kill")
        print(f"  wall time        {wall:.1f}s (hub start included)")
        ok = once and all(r["failoverCount"] > 0 for r in lost)
        if self.keep or not ok:
            print(f"  files            {self.workdir} (hub.log, unit logs, demo.sqlite3: kept)")
        else:
            print("  files            deleted at exit (make demo DEMO_ARGS=--keep keeps them)")
        return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=50, help="how many tasks to submit (default 50)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (database, logs)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="taskhub-demo-"))
    demo = Demo(workdir, max(args.tasks, 2), keep=args.keep)
    code = 1
    try:
        code = demo.run()
    except KeyboardInterrupt:
        demo.say("interrupted")
    finally:
        demo.stop()
        if args.keep or code:
            demo.say(f"kept {workdir} (hub.log, unit logs, demo.sqlite3)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
