"""One table for the run, the honesty verdict, and the JSON copy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HONESTY_KEYS = ("double", "lost", "lockErrors")
# Issue 14: the lifecycle with long-poll units at least the figure before them (1.57 x Celery).
LIFECYCLE_TARGET = 1.57
# "A few claim queries" (issue 14) for one created task, however many units wait on its type.
WAITER_CLAIMS = 3
# "Claim p99 unaffected beyond noise" (issue 15), read as: at most this much above the claims alone.
PRUNE_NOISE = 1.5
OTHER_FAULTS = ("serverErrors", "transportErrors", "unexpected", "brokenChains", "clientErrors")


def _by(items: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for item in items:
        if all(item.get(k) == v for k, v in match.items()):
            return item
    return None


def _verdict(value: float, limit: float, *, at_least: bool) -> str:
    ok = value >= limit if at_least else value <= limit
    return "met" if ok else "MISSED"


def rows(results: dict[str, Any]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []

    def add(scenario: str, conc: str, result: str, ratio: str = "", target: str = "", verdict: str = "") -> None:
        out.append(
            {"scenario": scenario, "conc": conc, "result": result, "ratio": ratio, "target": target, "verdict": verdict}
        )

    raw = results.get("raw", [])
    for r in raw:
        unit = "claims/s" if r["batch"] == 1 else "tasks/s"
        add(f"1 raw claim SQL, LIMIT {r['batch']}", str(r["concurrency"]), f"{r['tasksPerSecond']:,.0f} {unit}")
    floors = results.get("floor", [])
    for f in floors:
        add("2 HTTP floor: GET unit (unit token)", str(f["concurrency"]), f"{f['perSecond']:,.0f} req/s")
    for h in results.get("heartbeat", []):
        f = _by(floors, concurrency=h["concurrency"])
        ratio = h["perSecond"] / f["perSecond"] if f and f["perSecond"] else 0.0
        label = f"3 heartbeat, {h['tasksPerUnit']} tasks listed"
        add(
            label,
            str(h["concurrency"]),
            f"{h['perSecond']:,.0f} req/s",
            f"{ratio:.2f} x floor",
            ">= 0.8 x floor",
            _verdict(ratio, 0.8, at_least=True),
        )
    for c in results.get("claim", []):
        r = _by(raw, concurrency=c["concurrency"], batch=c["batch"])
        ratio = c["tasksPerSecond"] / r["tasksPerSecond"] if r and r["tasksPerSecond"] else 0.0
        need = 0.6 if c["batch"] == 1 else 0.9
        add(
            f"4 claim {{max: {c['batch']}}}",
            str(c["concurrency"]),
            f"{c['tasksPerSecond']:,.0f} tasks/s",
            f"{ratio:.2f} x raw",
            f">= {need} x raw",
            _verdict(ratio, need, at_least=True),
        )
    life, cel = results.get("lifecycle"), results.get("celery")
    if life:
        ratio = life["tasksPerSecond"] / cel["tasksPerSecond"] if cel and cel["tasksPerSecond"] else 0.0
        how = (
            f"batch forms, claim {{max: {life['batch']}}}"
            if life.get("mode", "single") == "batch"
            else "one request per step"
        )
        if life.get("claimWait"):
            how += f", long polls {life['claimWait']:g} s"
        add(
            f"5 lifecycle over HTTP (M={life['tasks']}), {how}",
            f"K={life['units']}",
            f"{life['tasksPerSecond']:,.0f} tasks/s",
            f"{ratio:.3f} x Celery",
            f">= {LIFECYCLE_TARGET} x Celery",
            _verdict(ratio, LIFECYCLE_TARGET, at_least=True),
        )
    polled = results.get("lifecyclePolling")
    if polled:
        ratio = polled["tasksPerSecond"] / cel["tasksPerSecond"] if cel and cel["tasksPerSecond"] else 0.0
        add(
            f"5 lifecycle over HTTP (M={polled['tasks']}), batch forms, claim {{max: {polled['batch']}}}, polling",
            f"K={polled['units']}",
            f"{polled['tasksPerSecond']:,.0f} tasks/s",
            f"{ratio:.3f} x Celery",
        )
    for ab in results.get("lifecycleAB", []):
        waits = sorted(float(k[4:-14]) for k in ab if k.startswith("wait") and k.endswith("TasksPerSecond"))
        figures = ", ".join(f"wait {w:g} s {ab[f'wait{w:g}TasksPerSecond']:,.0f}" for w in waits)
        ratios = ", ".join(f"{ab[f'wait{w:g}xCelery']:.2f}" for w in waits)
        cpu = ", ".join(f"{ab.get(f'wait{w:g}WebCpuMsPerTask', 0):.2f}" for w in waits)
        add(
            f"5 lifecycle A/B round {ab['round']} ({' -> '.join(str(o) for o in ab['order'])})",
            "",
            f"{figures}, Celery {ab['celeryTasksPerSecond']:,.0f} tasks/s; CPU ms/task: web {cpu},"
            f" Celery+Redis {ab.get('celeryCpuMsPerTask', 0):.2f}",
            f"{ratios} x Celery" + (f"; long/poll {ab['longPollxPolling']:.2f}" if "longPollxPolling" in ab else ""),
        )
    single = results.get("lifecycleSingle")
    if single:
        ratio = single["tasksPerSecond"] / cel["tasksPerSecond"] if cel and cel["tasksPerSecond"] else 0.0
        add(
            f"5 lifecycle over HTTP (M={single['tasks']}), one request per step, claim {{max: {single['batch']}}}",
            f"K={single['units']}",
            f"{single['tasksPerSecond']:,.0f} tasks/s",
            f"{ratio:.3f} x Celery",
        )
    if cel:
        add(
            f"5 Celery+Redis no-op (M={cel['tasks']})",
            f"w={cel['workerConcurrency']}",
            f"{cel['tasksPerSecond']:,.0f} tasks/s",
        )
    fo = results.get("failover")
    if fo:
        limit = fo["bound"] + 1
        add(
            f"6 failover, {fo['tasks']} tasks of {fo['victims']} silent units",
            "",
            f"p50 {fo['p50s']:.2f} s, p99 {fo['p99s']:.2f} s",
            f"bound {fo['bound']:g} s",
            f"p99 <= {limit:g} s",
            _verdict(fo["p99s"], limit, at_least=False),
        )
    scale = results.get("scale", {})
    for q in scale.get("lists", []):
        add(
            f"7 list: {q['query']}",
            "1",
            f"p50 {q['p50ms']:.1f} ms, p99 {q['p99ms']:.1f} ms",
            "",
            "p99 < 50 ms",
            _verdict(q["p99ms"], 50, at_least=False) if q["p99ms"] >= 50 else "met",
        )
    hh = scale.get("heartbeatHistory")
    if hh:
        for name in ("rookie", "veteran"):
            h = hh[name]
            add(
                f"7 heartbeat, unit with {h['finishedTasks']:,} finished tasks",
                "1",
                f"p50 {h['p50ms']:.1f} ms, p99 {h['p99ms']:.1f} ms",
            )
    sw = scale.get("sweeper")
    if sw:
        add(
            f"7 sweeper: {sw['units']:,} units, {sw['tasks']:,} RUNNING, {sw['deadUnits']:,} dead",
            "",
            f"{sw['seconds']:.2f} s, {sw['queries']} queries",
            f"{sw['result'].get('failedOver', 0):,} failed over",
            "< 5 s, bounded",
            _verdict(sw["seconds"], 5, at_least=False) if sw["seconds"] >= 5 else "met",
        )
    _push_rows(results, add)
    mem = results.get("memory", {})
    if "gunicornWorkerPeakMb" in mem:
        add(
            "7 gunicorn worker peak RSS",
            "",
            f"{mem['gunicornWorkerPeakMb']:.0f} MB",
            "",
            "< 150 MB",
            "met" if mem["gunicornWorkerPeakMb"] < 150 else "MISSED",
        )
    agent = mem.get("agent")
    if agent:
        if agent.get("usable"):
            add(f"7 taskhub-unit peak RSS, {agent['running']} running", "", f"{agent['peakRssMb']:.0f} MB")
        else:
            add("7 taskhub-unit peak RSS", "", "not measured", "", "", str(agent.get("error", ""))[:60])
    return out


def _push_rows(results: dict[str, Any], add: Any) -> None:
    """Issue 14 (push-speed dispatch) and issue 15 (queue control): bench.push_queue's rows."""
    d = results.get("dispatch")
    if d:
        t, c = d["taskhub"], d["celery"]
        ratio = d.get("p99Ratio", 0.0)
        ok = t["p50ms"] <= 10 and t["p99ms"] <= 50 and ratio <= 2 and t["started"] == t["tasks"]
        add(
            f"8 dispatch latency, {t['units']} idle taskhub-unit (long polls), {t['started']}/{t['tasks']} started",
            f"K={t['units']}",
            f"p50 {t['p50ms']:.1f}, p90 {t['p90ms']:.1f}, p99 {t['p99ms']:.1f} ms",
            f"p99 {ratio:.2f} x Celery",
            "p50 <= 10, p99 <= 50 ms, p99 <= 2 x Celery",
            "met" if ok else "MISSED",
        )
        b = t.get("breakdown")
        if b and b["matched"]:
            cr, rc, tail = b["createToRing"], b["ringToClaim"], b["slowestTenth"]
            floor = t.get("commitFloor", {})
            add(
                "8 dispatch latency split at the ring: create -> ring delivered; ring -> claim starts",
                "",
                f"p50 {cr['p50ms']:.1f} / {rc['p50ms']:.1f}, p99 {cr['p99ms']:.1f} / {rc['p99ms']:.1f} ms;"
                f" slowest 10 % {tail['createToRingMeanMs']:.1f} / {tail['ringToClaimMeanMs']:.1f} ms",
                f"bare INSERT+COMMIT p50 {floor.get('p50ms', 0):.1f}, p99 {floor.get('p99ms', 0):.1f} ms;"
                f" web CPU {t['webCpuMsPerTask']:.1f} ms/task",
            )
        add(
            f"8 dispatch latency, Celery+Redis apply_async -> start ({c['tasks']} tasks)",
            "",
            f"p50 {c['p50ms']:.1f}, p90 {c['p90ms']:.1f}, p99 {c['p99ms']:.1f} ms",
        )
    w = results.get("waiters")
    if w:
        label = f"9 one created task, {w['waiters']:,} long polls waiting on its type"
        if w["created"] != 201 or not w.get("settled", False):
            why = "counters never settled" if w["created"] == 201 else f"the create answered {w['created']}"
            add(label, str(w["waiters"]), f"{why}: not measured", "", f"O(1): <= {WAITER_CLAIMS} claims", "FAILED")
        else:
            claims = w["claimsForOneTask"]
            outcomes = ", ".join(f"{v:g} {k}" for k, v in w["claimsByOutcome"].items())
            add(
                label,
                str(w["waiters"]),
                f"{claims:g} claims woken ({outcomes}), {w['statementsForOneTask']} SQL statements,"
                f" {w['replies']} reply",
                f"net of the create's own {w['createStatements']} and the probes' {w['backgroundStatements']}",
                f"O(1): <= {WAITER_CLAIMS} claims",
                _verdict(claims, WAITER_CLAIMS, at_least=False),
            )
    for f in results.get("fleet", []):
        p99 = max(f["heartbeat"]["p99ms"], f["claimBeyondWait"]["p99ms"])
        cpu = f["hubWebCpuMsPerUnitSecond"]
        ok = p99 < 250 and f["errors"] == 0 and cpu <= 0.3
        add(
            f"10 idle fleet, N={f['units']:,} (long polls {f['claimWait']:g} s, heartbeats at the hub's idle interval)",
            str(f["units"]),
            f"{f['requestsPerSecond']:,.0f} req/s, {cpu:.3f} ms CPU/unit/s, p99 {p99:.0f} ms, {f['errors']} errors",
            f"loadgen {f['loadgenCpuShare']:.0%}",
            "p99 < 250 ms, 0 errors, <= 0.3 ms/unit/s",
            "met" if ok else "MISSED",
        )
    r = results.get("results")
    if r:
        for name, label in (("wait", "producer wait (waitFor=terminal)"), ("sse", "SSE /events")):
            x = r[name]
            add(
                f"11 {label}: completion -> client, n={x['n']}",
                "1",
                f"p50 {x['p50ms']:.0f}, p99 {x['p99ms']:.0f} ms",
            )
        h = r["webhooks"]
        lat = h["latency"]
        add(
            f"11 webhooks, {h['events']} events, receiver failing 20 % ({h['failed_requests']} of {h['requests']})",
            "",
            f"{h['throughput_per_s']:g} events/s, p50 {lat['p50ms']:.0f}, p99 {lat['p99ms']:.0f} ms",
            f"{h['events'] - h['lost']} delivered, {h['double']} twice",
            "every event, none twice",
            "met" if h["lost"] == 0 and h["double"] == 0 else "MISSED",
        )
    q = results.get("queues")
    if q:
        add(
            "12 claim with maxRunning + perKeyConcurrency + rateLimit vs none",
            str(q["limited"]["processes"]),
            f"{q['limited']['tasksPerSecond']:,.0f} vs {q['none']['tasksPerSecond']:,.0f} tasks/s",
            f"{q['ratio']:.2f} x none ({q['claimRatio']:.2f} in the claim)",
            ">= 0.8 x none",
            _verdict(q["ratio"], 0.8, at_least=True),
        )
    sch = results.get("schedules")
    if sch:
        add(
            f"12 schedules: {sch['schedules']:,} firing in one minute, {sch['beats']} beats",
            "",
            f"{sch['distinctSchedulesFired']:,} fired, {sch['fires']:,} fires; lag p50 {sch['lagP50s']:.2f},"
            f" p99 {sch['lagP99s']:.2f} s",
            "exactly once" if sch["exactlyOnce"] else "NOT exactly once",
            "exactly once, lag p99 < 1 s",
            "met" if sch["exactlyOnce"] and sch["lagP99s"] < 1 else "MISSED",
        )
    pr = results.get("prune")
    if pr:
        alone, beside = pr["claimP99msAlone"], pr["claimP99msWithPruning"]
        ratio = beside / alone if alone else 0.0
        add(
            f"12 prune, {pr['tableRows']:,}-row table ({pr['claimers']} claimers running)",
            "",
            f"{pr['pruneRowsPerSecond']:,} rows/s; claim p99 {alone:.1f} -> {beside:.1f} ms",
            f"claim p99 {ratio:.2f} x alone",
            f"claim p99 <= {PRUNE_NOISE} x alone",
            _verdict(ratio, PRUNE_NOISE, at_least=False),
        )
    for name, error in results.get("meta", {}).get("failedRows", {}).items():
        add(f"{name}: not measured", "", error.splitlines()[0][:70] if error else "", "", "", "FAILED")


def honesty(results: dict[str, Any]) -> dict[str, Any]:
    """Sum the honesty counters over every scenario; any fault fails the run."""
    totals = {k: 0 for k in HONESTY_KEYS + OTHER_FAULTS}
    where: list[str] = []

    def visit(name: str, item: Any) -> None:
        if isinstance(item, list):
            for i, sub in enumerate(item):
                visit(f"{name}[{i}]", sub)
            return
        if not isinstance(item, dict):
            return
        for key in totals:
            value = item.get(key)
            if isinstance(value, int) and value:
                totals[key] += value
                where.append(f"{name}.{key}={value}")
        for key, sub in item.items():
            if isinstance(sub, dict | list) and key not in ("cpu", "result", "errors"):
                visit(f"{name}.{key}", sub)

    for name, item in results.items():
        if name not in ("meta", "honesty", "table"):
            visit(name, item)
    totals["lockErrors"] += int(results.get("meta", {}).get("lockErrorsInServerLogs", 0))
    passed = all(v == 0 for v in totals.values())
    return {**totals, "pass": passed, "faults": where}


def render(results: dict[str, Any]) -> str:
    table = results["table"]
    headers = {"scenario": "scenario", "conc": "conc", "result": "result", "ratio": "ratio", "target": "target"}
    headers["verdict"] = "verdict"
    widths = {k: max(len(headers[k]), *(len(r[k]) for r in table)) if table else len(headers[k]) for k in headers}
    line = "  ".join(headers[k].ljust(widths[k]) for k in headers)
    lines = [line, "  ".join("-" * widths[k] for k in headers)]
    for r in table:
        lines.append("  ".join(r[k].ljust(widths[k]) for k in headers).rstrip())
    meta = results.get("meta", {})
    h = results["honesty"]
    lines.append("")
    share = meta.get("loadgenCpuShare")
    if share:
        lines.append(
            f"load generator CPU share of the {meta.get('cpus')} cores: HTTP clients {share:.1%} on average "
            f"(worst scenario {meta.get('loadgenCpuShareMax', 0):.1%}); raw-claim client loops up to "
            f"{meta.get('rawClientCpuShareMax', 0):.1%}; Celery producers {meta.get('celeryProducerCpuShare', 0):.1%}"
        )
        lines.append(f"other processes on the machine (not this run) used {meta.get('otherCpuShare', 0):.1%} of it")
    ceilings = []
    for f in results.get("floor", []):
        r = _by(results.get("raw", []), concurrency=f["concurrency"], batch=1)
        if r and r["tasksPerSecond"]:
            ceilings.append(f"c={f['concurrency']} {f['perSecond'] / r['tasksPerSecond']:.2f}")
    if ceilings:
        lines.append("HTTP floor / raw claim LIMIT 1 (no HTTP claim can beat the floor): " + ", ".join(ceilings))
    pr = results.get("prune")
    if pr and pr.get("requestedRows", 0) < 1_000_000:
        lines.append(
            f"prune: a {pr['tableRows']:,}-row table in this profile; `make bench-scale` (profile scale) prunes 1M"
        )
    queries = results.get("queries")
    if queries:
        lines.append("SQL statements per request: " + ", ".join(f"{k} {v['queries']}" for k, v in queries.items()))
    verdict = "PASS" if h["pass"] else "FAIL"
    lines.append(
        f"HONESTY {verdict}: double claims {h['double']}, lost {h['lost']}, lock errors reaching clients "
        f"{h['lockErrors']}; 5xx {h['serverErrors']}, transport errors {h['transportErrors']}, unexpected "
        f"statuses {h['unexpected']}, broken history chains {h['brokenChains']}"
    )
    if h["faults"]:
        lines.append("  faults: " + ", ".join(h["faults"][:20]))
    return "\n".join(lines)


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
