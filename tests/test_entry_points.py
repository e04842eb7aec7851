"""What a newcomer's first requests meet: /api/v1 answers with an index of links (no key needed),
`/` leads to the docs, and a browser's /favicon.ico is not a 404."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("path", ["/api/v1", "/api/v1/"])
def test_api_root_is_a_public_json_index_of_links(api, path):
    response = api.get(path)
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    body = response.json()
    assert body["name"] == "taskhub" and body["version"] == "1.0.0"
    links = body["links"]
    assert links["tasks"] == "/api/v1/tasks" and links["executionUnits"] == "/api/v1/execution-units"
    assert links["docs"] == "/api-docs" and links["health"] == "/api/v1/health" and links["console"] == "/admin/"
    for name, link in links.items():
        assert api.get(link).status_code in (200, 302, 401), name  # every link leads somewhere


def test_api_root_is_documented_once_in_the_schema(api):
    schema = json.loads(api.get("/api/v1/schema?format=json").content)
    assert "/api/v1" not in schema["paths"]
    index = schema["paths"]["/api/v1/"]["get"]
    assert index["operationId"] == "getApiIndex" and "security" not in index
    assert index["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/ApiIndex")


def test_the_bare_address_leads_to_the_docs(api):
    response = api.get("/")
    assert response.status_code == 302 and response["Location"] == "/api-docs"
    assert api.get(response["Location"]).status_code == 200


def test_favicon_is_no_content_rather_than_a_404(api):
    response = api.get("/favicon.ico")
    assert response.status_code == 204 and "max-age" in response["Cache-Control"]
