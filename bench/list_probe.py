"""Operator task lists at scale, in-process: `python -m bench.list_probe`.

An operator (a staff user's session: every owner's tasks) has no bearer token for the HTTP
client, so these lists go through Django's test client in this process: the same view, query and
serializer, without gunicorn and the socket. Started by the harness with the bench database's
environment; reads the queries as JSON from BENCH_LIST_PROBE; prints one JSON line.
"""

from __future__ import annotations

import json
import os
import time

import django


def main() -> None:
    django.setup()
    from django.contrib.auth import get_user_model
    from django.test import Client

    from bench.load import percentile

    queries = json.loads(os.environ["BENCH_LIST_PROBE"])
    from django.contrib.auth.models import Group

    from taskhub.console.roles import OPERATORS, sync_roles

    sync_roles()
    user, _ = get_user_model().objects.get_or_create(username="bench-operator", defaults={"is_staff": True})
    user.groups.add(Group.objects.get(name=OPERATORS))
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(user)
    out = []
    for name, query, repeat in queries:
        for _ in range(min(3, repeat)):  # warm-up, not recorded
            client.get(f"/api/v1/tasks?{query}")
        lat, statuses = [], []
        for _ in range(repeat):
            started = time.perf_counter()
            response = client.get(f"/api/v1/tasks?{query}")
            lat.append(time.perf_counter() - started)
            statuses.append(response.status_code)
        out.append(
            {
                "query": name,
                "url": f"/api/v1/tasks?{query}",
                "requests": len(lat),
                "ok": statuses.count(200),
                "unexpected": len(statuses) - statuses.count(200),
                "p50ms": percentile(lat, 50) * 1000,
                "p99ms": percentile(lat, 99) * 1000,
            }
        )
    print(json.dumps(out))


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskhub.settings")
    main()
