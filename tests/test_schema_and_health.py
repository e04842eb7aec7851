"""OpenAPI schema and Swagger UI (no internet), health endpoints (200 / 503, JSON)."""

from __future__ import annotations

import json

import pytest
from django.core.management import call_command

pytestmark = pytest.mark.django_db


def _schema(api):
    response = api.get("/api/v1/schema?format=json")
    assert response.status_code == 200
    return json.loads(response.content)


def test_schema_documents_every_operation_with_bodies_errors_and_auth(api):
    schema = _schema(api)
    paths = schema["paths"]
    for path in [
        "/api/v1/tasks",
        "/api/v1/tasks/{id}",
        "/api/v1/tasks/{id}/status",
        "/api/v1/tasks/{id}/history",
        "/api/v1/tasks/{id}/logs",
        "/api/v1/tasks/stats",
        "/api/v1/tasks/{id}/progress",
        "/api/v1/tasks/{id}/complete",
        "/api/v1/tasks/{id}/fail",
        "/api/v1/execution-units/register",
        "/api/v1/execution-units/{id}/heartbeat",
        "/api/v1/execution-units/{id}/claim",
        "/api/v1/execution-units",
        "/api/v1/execution-units/{id}",
        "/api/v1/execution-units/stats",
    ]:
        assert path in paths, path
    assert "bearerAuth" in schema["components"]["securitySchemes"]
    public = [
        (path, method) for path, methods in paths.items() for method, op in methods.items() if not op.get("security")
    ]
    assert public == [("/api/v1/", "get")]  # the index; health and the schema itself are not API operations
    for path, methods in paths.items():
        for method, op in methods.items():
            responses = op["responses"]
            assert any(code.startswith("2") for code in responses), (path, method)
            assert "400" in responses, (path, method)
            if (path, method) not in public:
                assert "401" in responses and "403" in responses, (path, method)
            error_ref = responses["400"]["content"]["application/json"]["schema"]["$ref"]
            assert error_ref.endswith("/Error"), error_ref
            if method in ("post", "put", "patch"):
                assert "413" in responses, (path, method)
    create = paths["/api/v1/tasks"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("TaskCreateRequest")
    assert any(p["name"] == "Idempotency-Key" for p in create["parameters"])


def test_spectacular_fails_on_no_warning(tmp_path):
    call_command("spectacular", "--fail-on-warn", "--validate", "--file", str(tmp_path / "schema.yaml"))
    assert (tmp_path / "schema.yaml").read_text().startswith("openapi: 3")


def test_swagger_ui_is_served_locally_without_a_cdn(api):
    response = api.get("/api-docs")
    assert response.status_code == 200
    html = response.content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in html
    assert "cdn." not in html and "unpkg" not in html and "jsdelivr" not in html
    assert "/api/v1/schema" in html


def test_health_reports_checks_as_json(api):
    body = api.get("/api/v1/health").json()
    assert body["status"] == "ok" and body["component"] == "app"
    assert any("Database" in name for name in body["checks"])


def test_database_health_is_503_when_the_database_fails(api, monkeypatch):
    from health_check.checks import Database
    from health_check.exceptions import ServiceUnavailable

    def broken(self):
        raise ServiceUnavailable("connection refused")

    monkeypatch.setattr(Database, "run", broken)
    response = api.get("/api/v1/health/database")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "error" and "connection refused" in json.dumps(body["checks"])
    assert api.get("/api/v1/health").status_code == 503


@pytest.mark.redis
def test_redis_health_is_200_when_redis_answers(api):
    body = api.get("/api/v1/health/redis").json()
    assert body["status"] == "ok" and body["checks"]


def test_redis_health_is_503_when_redis_is_unreachable(api, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    from asgiref.sync import async_to_sync
    from django.test import RequestFactory

    from taskhub.api.health import redis_health

    response = async_to_sync(redis_health())(RequestFactory().get("/api/v1/health/redis"))
    assert response.status_code == 503
    assert json.loads(response.content)["status"] == "error"
