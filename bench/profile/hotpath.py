"""Profile the hot unit endpoints with py-spy: one 1-worker sync gunicorn, one closed-loop client.

    .venv/bin/python -m bench.profile.hotpath [--seconds 10] [--only floor,hb0,hb5,claim1,claim25]
        [--out DIR] [--app-dir TREE]

For each scenario: `py-spy record --gil -r 500 --format raw` on the worker while the client loops,
then the top functions by self and by inclusive share of the samples (Python CPU holding the GIL,
not waits). Raw profiles and summaries land in --out (default var/profile/).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import seed
from bench.http_scenarios import AGENT_METADATA
from bench.load import Http
from bench.run import ALL_SCOPES
from bench.stack import ROOT, Db, Stack

PYSPY = str(ROOT / ".venv" / "bin" / "py-spy")


def summarise(raw: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [f.split(" (")[0] + " (" + f.rsplit("/", 1)[-1] if " (" in f else f for f in stack.split(";")]
        frames = [f.rsplit(":", 1)[0] + ")" if f.endswith(")") else f for f in frames]
        own[frames[-1]] += n
        for name in set(frames):
            incl[name] += n

    def share(c: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in c.most_common(top)] if total else []

    return {"samples": total, "self": share(own), "inclusive": share(incl)}


def client_loop(http: Http, scenario: str, ctx: dict[str, Any], stop: threading.Event) -> int:
    n = 0
    while not stop.is_set():
        if scenario == "floor":
            http.call("floor", "GET", f"/execution-units/{ctx['unit']}", token=ctx["token"])
        elif scenario.startswith("hb"):
            body = {
                "currentLoad": len(ctx["tasks"]),
                "metadata": AGENT_METADATA,
                "tasks": [{"id": t, "attempt": 1, "progress": n % 100} for t in ctx["tasks"]],
            }
            status, reply = http.call("hb", "POST", f"/execution-units/{ctx['unit']}/heartbeat", body, ctx["token"])
            assert status == 200 and not reply["failedOver"] and not reply["commands"], (status, reply)
        else:
            units = ctx["units"]
            unit, token = units[ctx["current"]]
            status, reply = http.call("claim", "POST", f"/execution-units/{unit}/claim", {"max": ctx["batch"]}, token)
            assert status == 200, (status, reply)
            ctx["held"] += len(reply["items"])
            if ctx["held"] + ctx["batch"] > 1000:
                ctx["current"], ctx["held"] = ctx["current"] + 1, 0
            if not reply["items"]:
                break
        n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--only", default="floor,hb0,hb5,claim1,claim25")
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "profile")
    parser.add_argument("--app-dir", type=Path, default=ROOT)
    parser.add_argument("--db-name", default="bench_profile_hotpath")
    parser.add_argument("--redis-db", type=int, default=13)
    args = parser.parse_args()
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = args.out / stamp
    out.mkdir(parents=True, exist_ok=True)
    db = Db.from_env(args.db_name)
    stack = Stack(db=db, redis_db=args.redis_db, run_dir=out / "run", app_dir=args.app_dir.resolve())
    stack.setup()
    report: dict[str, Any] = {}
    try:
        stack.api_key("bench", ALL_SCOPES)
        conn = db.connect(autocommit=False)
        owner = seed.key_id(conn, "bench")
        stack.start_web(workers=1, threads=1)
        (worker,) = stack.web_workers()
        for scenario in args.only.split(","):
            kind = scenario.rstrip("0123456789")
            ctx: dict[str, Any] = {}
            if kind in ("floor", "hb"):
                unit = f"prof-{scenario}"
                ctx["unit"] = unit
                (ctx["token"],) = seed.insert_units(
                    conn, [unit], unit_type=scenario.upper(), capacity=50, owner_id=owner
                )
                n = int(scenario[2:]) if kind == "hb" else 0
                ctx["tasks"] = (
                    seed.insert_tasks(
                        conn, n, task_type=scenario.upper(), owner_id=owner, status="RUNNING", units=[unit]
                    )
                    if n
                    else []
                )
            else:
                batch = int(scenario[5:])
                ctx["batch"], ctx["current"], ctx["held"] = batch, 0, 0
                task_type = scenario.upper()
                pool = 40_000 if batch > 1 else 4_000
                seed.insert_tasks(conn, pool, task_type=task_type, owner_id=owner)
                ids = [f"prof-{scenario}-{i}" for i in range(pool // 1000 + 2)]
                tokens = seed.insert_units(conn, ids, unit_type=task_type, capacity=1000, owner_id=owner)
                ctx["units"] = list(zip(ids, tokens, strict=True))
            http = Http(stack.web_port)
            stop = threading.Event()
            # warm up, then record while the client keeps going
            warm = threading.Event()
            threading.Timer(1.0, warm.set).start()
            client_loop(http, scenario, ctx, warm)
            done: list[int] = []

            def loop(http: Http = http, scenario: str = scenario, ctx: dict[str, Any] = ctx) -> None:
                done.append(client_loop(http, scenario, ctx, stop))  # noqa: B023 - joined below

            thread = threading.Thread(target=loop)
            raw = out / f"{scenario}.txt"
            started = time.monotonic()
            thread.start()
            record = ["record", "--gil", "-r", "500", "-d", str(int(args.seconds)), "-p", str(worker)]
            subprocess.run(
                [PYSPY, *record, "--format", "raw", "-o", str(raw), "--nonblocking"],
                check=True,
                capture_output=True,
            )
            stop.set()
            thread.join()
            elapsed = time.monotonic() - started
            report[scenario] = {"requests": done[0], "perSecond": round(done[0] / elapsed, 1), **summarise(raw)}
            got = report[scenario]
            print(f"== {scenario}: {got['perSecond']} req/s under py-spy, {got['samples']} samples")
            for label in ("self", "inclusive"):
                print(f"  top {label}:")
                for name, pct in report[scenario][label][:20]:
                    print(f"    {pct:5.1f}%  {name}")
        conn.close()
    finally:
        stack.stop_all()
        with contextlib.suppress(Exception):
            db.drop()
    (out / "summary.json").write_text(json.dumps(report, indent=1))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
