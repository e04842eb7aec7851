"""API keys in the operator console: create (shown once, hash stored), scopes, revoke."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.db import connection
from django.test import Client

from taskhub.apikeys.models import ApiKey
from taskhub.apikeys.tokens import digest
from tests import factories
from tests.console_support import messages_of, operator, viewer

pytestmark = pytest.mark.django_db
LIST = "/admin/apikeys/apikey/"


@pytest.fixture
def op_client() -> Client:
    client = Client()
    client.force_login(operator())
    return client


def _create(client: Client, name: str, scopes: list[str]) -> tuple[Any, str]:
    response = client.post(f"{LIST}add/", {"name": name, "scopes": scopes})
    match = re.search(rb'id="th-new-key" class="th-key">([^<]+)<', response.content)
    return response, match.group(1).decode() if match else ""


def test_creating_a_key_shows_it_once_and_stores_only_its_hash(op_client: Client) -> None:
    response, secret = _create(op_client, "ci-runner", ["tasks:read", "tasks:write"])
    assert response.status_code == 200 and secret.startswith("thk_")
    assert "no-store" in response["Cache-Control"]
    key = ApiKey.objects.get(name="ci-runner")
    assert key.key_hash == digest(secret) and key.scopes == ["tasks:read", "tasks:write"]
    assert key.created_by is not None and key.created_by.username == "op"
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM api_keys")
        assert secret not in repr(cursor.fetchall())
    # Never again: not on the key's page, not in a message, not in the list.
    for url in (f"{LIST}{key.pk}/change/", LIST):
        assert secret.encode() not in op_client.get(url).content
    # And it works against the API, with its scopes.
    api = Client(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert api.get("/api/v1/tasks").status_code == 200
    assert api.get("/api/v1/execution-units").status_code == 403


def test_scopes_are_checkboxes_of_the_fixed_list_and_one_is_required(op_client: Client) -> None:
    form = op_client.get(f"{LIST}add/").content.decode()
    for scope in ("tasks:read", "tasks:write", "units:read", "units:write", "units:register"):
        assert f'type="checkbox" name="scopes" value="{scope}"' in form
    response, secret = _create(op_client, "no-scopes", [])
    assert secret == "" and b"This field is required" in response.content
    response, secret = _create(op_client, "bad-scope", ["root"])
    assert secret == "" and b"Select a valid choice" in response.content
    factories.api_key(name="taken")
    response, secret = _create(op_client, "taken", ["tasks:read"])
    assert secret == "" and b"already exists" in response.content
    assert not ApiKey.objects.filter(name__in=["no-scopes", "bad-scope"]).exists()


def test_revoke_action_revokes_and_reports_keys_already_revoked(op_client: Client) -> None:
    key, secret = factories.api_key(name="to-revoke")
    msgs = messages_of(
        op_client.post(LIST, {"action": "revoke_keys", "_selected_action": [key.pk], "index": "0"}, follow=True)
    )
    assert any(
        m.startswith("Revoked 1 API key.") and "Units registered with a revoked key are refused" in m for m in msgs
    )
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert Client(HTTP_AUTHORIZATION=f"Bearer {secret}").get("/api/v1/tasks").status_code == 401
    msgs = messages_of(
        op_client.post(LIST, {"action": "revoke_keys", "_selected_action": [key.pk], "index": "0"}, follow=True)
    )
    assert f"Not changed: 1 API key (#{key.pk}): already revoked." in msgs
    listing = op_client.get(LIST).content.decode()
    assert "revoked" in listing and "last used" in listing.lower()


def test_viewer_sees_keys_but_cannot_create_or_revoke() -> None:
    client = Client()
    client.force_login(viewer())
    key, _ = factories.api_key(name="visible")
    assert client.get(LIST).status_code == 200
    assert client.get(f"{LIST}add/").status_code == 403
    client.post(LIST, {"action": "revoke_keys", "_selected_action": [key.pk], "index": "0"})
    key.refresh_from_db()
    assert key.revoked_at is None


def test_a_key_is_created_in_a_pool_and_a_bad_pool_is_refused(op_client: Client) -> None:
    response = op_client.post(f"{LIST}add/", {"name": "tenant-key", "scopes": ["tasks:read"], "pool": "tenant-x"})
    assert response.status_code == 200
    assert ApiKey.objects.get(name="tenant-key").pool == "tenant-x"
    _, secret = _create(op_client, "no-pool", ["tasks:read"])
    assert secret and ApiKey.objects.get(name="no-pool").pool == "default"
    bad = op_client.post(f"{LIST}add/", {"name": "bad-pool", "scopes": ["tasks:read"], "pool": "two words"})
    assert bad.status_code == 200 and not ApiKey.objects.filter(name="bad-pool").exists()
    assert b"letters, digits" in bad.content
