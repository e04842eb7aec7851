from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from rest_framework.test import APIClient

from taskhub.apikeys.models import ALL_SCOPES
from taskhub.webhooks import subscriptions
from tests import factories

REQUIRE_SERVICES = os.environ.get("TASKHUB_REQUIRE_SERVICES") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """MariaDB-only tests run when DB_HOST is set. When CI asks for the services
    (TASKHUB_REQUIRE_SERVICES=1) they must run: a missing DB_HOST is an error, never a skip."""
    on_mysql = str(settings.DATABASES["default"]["ENGINE"]).endswith("mysql")
    if REQUIRE_SERVICES and not on_mysql:
        raise pytest.UsageError("TASKHUB_REQUIRE_SERVICES=1 but DB_HOST is not set: MariaDB tests would not run")
    if REQUIRE_SERVICES and not settings.REDIS_URL:
        raise pytest.UsageError("TASKHUB_REQUIRE_SERVICES=1 but REDIS_HOST is not set")
    skip_mysql = pytest.mark.skip(reason="needs MariaDB: set DB_HOST (CI runs these)")
    skip_redis = pytest.mark.skip(reason="needs Redis: set REDIS_HOST (CI runs these)")
    for item in items:
        if "mariadb" in item.keywords and not on_mysql:
            item.add_marker(skip_mysql)
        if "redis" in item.keywords and not settings.REDIS_URL:
            item.add_marker(skip_redis)


@pytest.fixture(
    params=[
        pytest.param("embedded", id="sqlite-embedded"),
        pytest.param("mariadb", id="mariadb-redis", marks=[pytest.mark.mariadb, pytest.mark.redis]),
    ]
)
def hub_backend(request: pytest.FixtureRequest) -> str:
    """A real-process test runs once per backend of testkit.hub.running_hub: the embedded default,
    and MariaDB + Redis (marked: it runs in the MariaDB pass, where a missing service is an error
    under TASKHUB_REQUIRE_SERVICES=1, and is skipped in the SQLite pass)."""
    return str(request.param)


@pytest.fixture(autouse=True)
def _clear_cache() -> Iterator[None]:
    cache.clear()
    subscriptions.invalidate()  # a rolled-back test's webhooks must not outlive it in the process cache
    yield


@pytest.fixture
def api() -> APIClient:
    return APIClient()


class JsonClient:
    """An API client with a bearer token that sends and returns JSON."""

    def __init__(self, token: str | None) -> None:
        self.client = APIClient()
        if token:
            self.client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")

    def _send(self, method: str, path: str, body: Any = None, **extra: Any) -> Any:
        kwargs: dict[str, Any] = {}
        if body is not None:
            kwargs["data"] = body if isinstance(body, str | bytes) else json.dumps(body)
            kwargs["content_type"] = "application/json"
        return getattr(self.client, method)(path, **kwargs, **extra)

    def get(self, path: str, **extra: Any) -> Any:
        return self._send("get", path, **extra)

    def post(self, path: str, body: Any = None, **extra: Any) -> Any:
        return self._send("post", path, {} if body is None else body, **extra)

    def put(self, path: str, body: Any = None, **extra: Any) -> Any:
        return self._send("put", path, body, **extra)

    def patch(self, path: str, body: Any = None, **extra: Any) -> Any:
        return self._send("patch", path, body, **extra)

    def delete(self, path: str, **extra: Any) -> Any:
        return self._send("delete", path, **extra)


@pytest.fixture
def make_client(db: None) -> Callable[..., JsonClient]:
    def make(name: str | None = None, scopes: tuple[str, ...] = ALL_SCOPES) -> JsonClient:
        _, secret = factories.api_key(name=name, scopes=scopes)
        client = JsonClient(secret)
        client.secret = secret  # type: ignore[attr-defined]
        return client

    return make


@pytest.fixture
def client_a(make_client: Callable[..., JsonClient]) -> JsonClient:
    return make_client("client-a")


@pytest.fixture
def client_b(make_client: Callable[..., JsonClient]) -> JsonClient:
    return make_client("client-b")


@pytest.fixture
def register_unit(client_a: JsonClient) -> Callable[..., tuple[JsonClient, dict[str, Any]]]:
    """Register a unit through the API with client A's key; returns (unit client, body)."""

    def register(
        unit_id: str = "worker-001", unit_type: str = "DATA_PROCESSING", capacity: int = 5, by: JsonClient | None = None
    ) -> tuple[JsonClient, dict[str, Any]]:
        response = (by or client_a).post(
            "/api/v1/execution-units/register",
            {
                "id": unit_id,
                "unitType": unit_type,
                "unitName": f"unit {unit_id}",
                "capacity": capacity,
                "endpoint": f"http://{unit_id}:8080",
            },
        )
        assert response.status_code in (200, 201), response.content
        body = response.json()
        return JsonClient(body["token"]), body

    return register


@pytest.fixture
def leased(
    client_a: JsonClient, register_unit: Callable[..., tuple[JsonClient, dict[str, Any]]]
) -> Callable[..., tuple[JsonClient, list[dict[str, Any]]]]:
    """The API's leased tasks: register a unit, create `n` tasks of its type with client A's key
    (POST /tasks/batch; `extra` goes into each) and let the unit claim them (POST .../claim).
    Returns (unit client, the claimed tasks by id)."""

    def make(
        n: int = 1, unit_id: str = "worker-001", unit_type: str = "DATA_PROCESSING", **extra: Any
    ) -> tuple[JsonClient, list[dict[str, Any]]]:
        unit, _ = register_unit(unit_id, unit_type, capacity=100)
        body = {"tasks": [{"name": f"r{i}", "taskType": unit_type, **extra} for i in range(n)]}
        created = client_a.post("/api/v1/tasks/batch", body)
        assert created.status_code == 201, created.content
        claimed = unit.post(f"/api/v1/execution-units/{unit_id}/claim", {"max": n}).json()["items"]
        assert len(claimed) == n, claimed
        return unit, sorted(claimed, key=lambda t: t["id"])

    return make


@pytest.fixture
def on_mysql() -> bool:
    return connection.vendor == "mysql"
