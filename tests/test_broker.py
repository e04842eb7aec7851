"""The embedded default's broker: a worker never reads a message that is still being written."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection

from taskhub import broker
from taskhub.celery import app


def _channel(folder: Path) -> Any:
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder), "store_processed": False}
    return Connection("filesystem://localhost/", transport_options=options).channel()


def test_the_celery_app_uses_the_atomic_filesystem_transport(settings: Any) -> None:
    if settings.REDIS_URL:
        pytest.skip("the embedded default's broker (REDIS_HOST is set)")
    with app.connection_for_write() as connection:
        assert type(connection.transport) is broker.Transport


def test_a_message_file_appears_only_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """kombu's own `_put` creates the `.msg` file, then writes into it: a worker listing the folder
    in between read an empty file (JSONDecodeError, the worker died, `make run` stopped)."""
    channel = _channel(tmp_path)
    assert isinstance(channel, broker.Channel)
    seen_while_writing: list[list[str]] = []
    real_replace = os.replace

    def replace(src: str, dst: str) -> None:
        seen_while_writing.append(sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".msg")))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    channel._put("celery", {"body": "x" * 10_000})
    assert seen_while_writing == [[]]  # no reader could match the file before it was whole
    assert channel._size("celery") == 1
    assert channel._get("celery") == {"body": "x" * 10_000}
    assert list(tmp_path.iterdir()) == []
