"""SQL statements per request, through the whole stack: `python -m bench.query_probe`.

Started by the harness with the bench database's environment. Drives each endpoint the benchmarks
use through Django's test client (every middleware, authentication, throttling, the view), once to
warm up and once counted, and prints one JSON line: {endpoint: {"queries": n, "sql": [...]}}.
BEGIN and COMMIT count as statements; the connection health check (a ping) does not.
"""

from __future__ import annotations

import json
import os
from typing import Any


def main() -> None:
    import django

    django.setup()
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from taskhub.apikeys.services import api_key_create

    _, key = api_key_create(name="query-probe", scopes=["tasks:read", "tasks:write", "units:register"])
    client = Client(HTTP_HOST="127.0.0.1")

    def call(method: str, path: str, body: Any = None, token: str = key) -> Any:
        kwargs: dict[str, Any] = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
        if body is not None:
            kwargs["data"] = json.dumps(body)
            kwargs["content_type"] = "application/json"
        response = getattr(client, method)(f"/api/v1{path}", **kwargs)
        if response.status_code >= 300:
            raise RuntimeError(f"{method.upper()} {path}: {response.status_code} {response.content[:300]!r}")
        return response.json()

    def counted(name: str, fn: Any) -> Any:
        fn()  # warm-up: first-use costs (connection, caches) are not per-request costs
        with CaptureQueriesContext(connection) as ctx:
            out = fn()
        results[name] = {"queries": len(ctx.captured_queries), "sql": [q["sql"][:120] for q in ctx.captured_queries]}
        return out

    results: dict[str, Any] = {}

    def register(unit_id: str) -> str:
        body = {"id": unit_id, "unitType": "PROBE", "unitName": unit_id, "capacity": 1000, "endpoint": ""}
        return str(call("post", "/execution-units/register", body)["token"])

    token, beater = register("probe-unit"), register("probe-beater")
    for n in range(80):
        call("post", "/tasks", {"name": f"probe {n}", "taskType": "PROBE", "priority": 1, "config": {}})
    new_task = {"name": "probe", "taskType": "PROBE", "priority": 1, "config": {}}
    counted("create task", lambda: call("post", "/tasks", new_task))
    counted("floor: GET unit", lambda: call("get", "/execution-units/probe-unit", token=token))
    counted("claim {max: 1}", lambda: call("post", "/execution-units/probe-unit/claim", {"max": 1}, token))
    counted("claim {max: 25}", lambda: call("post", "/execution-units/probe-unit/claim", {"max": 25}, token))
    held = call("post", "/execution-units/probe-beater/claim", {"max": 5}, beater)["items"]
    listed = [{"id": t["id"], "attempt": t["attempt"], "progress": 10} for t in held]
    heartbeat = {"currentLoad": len(listed), "metadata": {"agent": "probe"}, "tasks": listed}
    counted("heartbeat, 5 tasks", lambda: call("post", "/execution-units/probe-beater/heartbeat", heartbeat, beater))
    first, second = held[0], held[1]
    log = {"attempt": first["attempt"], "entries": [{"level": "INFO", "message": "probe"}]}
    counted("log", lambda: call("post", f"/tasks/{first['id']}/logs", log, beater))
    reports = iter([first, second])

    def complete() -> Any:
        task = next(reports)
        return call("post", f"/tasks/{task['id']}/complete", {"attempt": task["attempt"], "result": {}}, beater)

    counted("complete", complete)
    batch = {
        "tasks": [{"name": f"probe batch {n}", "taskType": "PROBE", "priority": 1, "config": {}} for n in range(25)]
    }
    counted("create batch of 25", lambda: call("post", "/tasks/batch", batch))

    def report_batch() -> Any:
        held = call("post", "/execution-units/probe-unit/claim", {"max": 25}, token)["items"]
        assert len(held) == 25, len(held)
        reports = [
            {
                "taskId": t["id"],
                "attempt": t["attempt"],
                "outcome": "complete",
                "result": {},
                "logs": [{"level": "INFO", "message": "probe"}],
            }
            for t in held
        ]
        with CaptureQueriesContext(connection) as ctx:
            call("post", "/tasks/reports", {"reports": reports}, token)
        return ctx

    report_batch()  # warm-up
    ctx = report_batch()
    results["report batch of 25 (log + complete)"] = {
        "queries": len(ctx.captured_queries),
        "sql": [q["sql"][:120] for q in ctx.captured_queries],
    }
    print(json.dumps(results))


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskhub.settings")
    main()
