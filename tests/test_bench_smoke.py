"""The benchmark harness keeps working: `bench --profile smoke` at tiny sizes, run as a subprocess.

Only its honesty checks are asserted (no task claimed twice, none lost, no lock error reaching a
client), never a timing: CI machines are too noisy for that, and speed is `make bench`'s job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

pytestmark = [pytest.mark.mariadb, pytest.mark.redis]
ROOT = Path(__file__).resolve().parent.parent


def test_bench_smoke_runs_and_reports_no_double_claims_no_lost_tasks_no_lock_errors(tmp_path: Path) -> None:
    db = settings.DATABASES["default"]
    name = str(db["NAME"])  # pytest-django may already have switched it to the test database
    test_db = os.environ.get("DB_TEST_NAME") or (name if name.startswith("test_") else f"test_{name}")
    env = {
        **os.environ,
        "BENCH_DB_HOST": str(db["HOST"]),
        "BENCH_DB_PORT": str(db["PORT"] or 3306),
        "BENCH_DB_USERNAME": str(db["USER"]),
        "BENCH_DB_PASSWORD": str(db["PASSWORD"]),
        "BENCH_REDIS_HOST": str(settings.REDIS_HOST),
        "BENCH_REDIS_PORT": str(settings.REDIS_PORT),
    }
    out = tmp_path / "smoke.json"
    # The run's own database sits beside this run's test database, so parallel CI runs keep apart.
    argv = [
        sys.executable,
        "-m",
        "bench",
        "--profile",
        "smoke",
        "--json-out",
        str(out),
        "--db-name",
        f"{test_db}_bench",
    ]
    if os.environ.get("REDIS_DB"):  # this run's own Redis DB number, not the first free one of the bench's
        argv += ["--redis-db", os.environ["REDIS_DB"]]
    run = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    shown = f"exit {run.returncode}\n{run.stdout[-6000:]}\n{run.stderr[-3000:]}"
    assert run.returncode == 0, shown
    assert "HONESTY PASS" in run.stdout, shown
    results = json.loads(out.read_text())
    honesty = results["honesty"]
    assert (honesty["double"], honesty["lost"], honesty["lockErrors"]) == (0, 0, 0), shown
    assert honesty["pass"] is True, shown
    # Every scenario ran and claimed something: an empty run would pass the checks vacuously.
    assert [r["tasks"] for r in results["claim"]] and all(r["tasks"] > 0 for r in results["claim"]), shown
    assert results["lifecycle"]["tasksPerSecond"] > 0 and results["celery"]["done"] == results["celery"]["tasks"]
    assert (
        results["lifecycle"]["mode"] == "batch" and results["lifecycle"]["logsStored"] == results["lifecycle"]["tasks"]
    )
    assert results["lifecycleSingle"]["mode"] == "single" and results["lifecycleSingle"]["tasksPerSecond"] > 0
    assert results["failover"]["reclaimed"] == results["failover"]["tasks"], shown
    # The rows of issues 14 and 15, each at tiny size, each having measured something.
    assert not results["meta"].get("failedRows"), shown
    dispatch = results["dispatch"]
    assert dispatch["taskhub"]["started"] == dispatch["taskhub"]["tasks"] > 0, shown
    assert dispatch["celery"]["n"] == dispatch["celery"]["tasks"], shown
    waiters = results["waiters"]
    assert waiters["created"] == 201 and waiters["settled"] and waiters["claimsForOneTask"] >= 1, shown
    assert waiters["firstClaims"] == waiters["waiters"] and waiters["createStatements"] > 0, shown  # sqlcount counts
    assert dispatch["taskhub"]["breakdown"]["matched"] > 0, shown  # the ring tap saw the creates' rings
    assert [f["units"] for f in results["fleet"]] == [20] and results["fleet"][0]["requestsPerSecond"] > 0, shown
    assert results["results"]["wait"]["n"] > 0 and results["results"]["sse"]["n"] > 0, shown
    hooks = results["results"]["webhooks"]
    assert hooks["every_event_delivered"] and hooks["delivered_twice"] == 0, shown
    assert results["queues"]["limited"]["tasks"] > 0 and results["queues"]["none"]["tasks"] > 0, shown
    assert results["schedules"]["exactlyOnce"], shown
    assert results["prune"]["prunedRows"] > 0, shown
    assert results["lifecycle"]["claimWait"] > 0, shown
    rows = {r["scenario"].split(" ", 1)[0] for r in results["table"]}
    assert {"8", "9", "10", "11", "12"} <= rows, shown
