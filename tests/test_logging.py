"""Log files: access.log (method, path, status, duration, who), app.log, error.log, JSON lines,
LOG_DIR / LOG_LEVEL / LOG_FORMAT from the environment, rotation."""

from __future__ import annotations

import copy
import json
import logging
import logging.config
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import Client

from tests import factories
from tests.console_support import operator

pytestmark = pytest.mark.django_db
BASE_DIR = Path(settings.BASE_DIR)


def _config_into(directory: Path, *, fmt: str | None = None) -> dict[str, Any]:
    """The project's LOGGING, with its files moved to `directory` (and, optionally, another format)."""
    config: dict[str, Any] = copy.deepcopy(settings.LOGGING)
    for handler in config["handlers"].values():
        if "filename" in handler:
            handler["filename"] = str(directory / Path(handler["filename"]).name)
        if fmt is not None and "formatter" in handler:
            handler["formatter"] = fmt
    return config


@pytest.fixture
def log_dir(tmp_path: Path) -> Iterator[Path]:
    logging.config.dictConfig(_config_into(tmp_path))
    yield tmp_path
    logging.config.dictConfig(settings.LOGGING)


@pytest.fixture
def json_log_dir(tmp_path: Path) -> Iterator[Path]:
    logging.config.dictConfig(_config_into(tmp_path, fmt="json"))
    yield tmp_path
    logging.config.dictConfig(settings.LOGGING)


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def test_access_log_names_method_path_status_duration_and_who(log_dir: Path) -> None:
    _, secret = factories.api_key(name="log-client")
    Client(HTTP_AUTHORIZATION=f"Bearer {secret}").get("/api/v1/tasks?limit=5")
    Client().get("/api/v1/tasks")
    admin = Client()
    admin.force_login(operator("log-op"))
    admin.get("/admin/tasks/task/")
    access = lines(log_dir / "access.log")
    assert re.search(r"INFO taskhub\.access GET /api/v1/tasks\?limit=5 200 \d+\.\dms key:log-client$", access[0])
    assert re.search(r"GET /api/v1/tasks 401 \d+\.\dms anonymous$", access[1])
    assert re.search(r"GET /admin/tasks/task/ 200 \d+\.\dms user:log-op$", access[2])
    # Access lines stay out of app.log; errors go to error.log as well as app.log.
    assert not any("taskhub.access" in line for line in lines(log_dir / "app.log"))


def test_errors_go_to_error_log_and_app_log_but_info_only_to_app_log(log_dir: Path) -> None:
    log = logging.getLogger("taskhub.test")
    log.info("an ordinary event")
    log.error("something broke")
    app, error = lines(log_dir / "app.log"), lines(log_dir / "error.log")
    assert any("an ordinary event" in line for line in app) and any("something broke" in line for line in app)
    assert any("something broke" in line for line in error)
    assert not any("an ordinary event" in line for line in error)


def test_json_format_writes_one_parseable_object_per_line(json_log_dir: Path) -> None:
    _, secret = factories.api_key(name="json-client")
    Client(HTTP_AUTHORIZATION=f"Bearer {secret}").get("/api/v1/tasks")
    try:
        raise ValueError("bad thing")
    except ValueError:
        logging.getLogger("taskhub.test").exception("it failed")
    [access] = [json.loads(line) for line in lines(json_log_dir / "access.log")]
    assert access["logger"] == "taskhub.access" and access["level"] == "INFO"
    assert (access["method"], access["path"], access["status"], access["who"]) == (
        "GET",
        "/api/v1/tasks",
        200,
        "key:json-client",
    )
    assert isinstance(access["duration_ms"], float) and access["time"].endswith("+00:00")
    [error] = [json.loads(line) for line in lines(json_log_dir / "error.log")]
    assert error["message"] == "it failed" and "ValueError: bad thing" in error["exc"]


def _run_with_env(tmp_path: Path, code: str, **env: str) -> None:
    full_env = {**os.environ, "DJANGO_SETTINGS_MODULE": "taskhub.settings", **env}
    full_env.pop("PYTEST_CURRENT_TEST", None)
    subprocess.run(
        [sys.executable, "-c", "import django; django.setup()\n" + textwrap.dedent(code)],
        env=full_env,
        cwd=BASE_DIR,
        check=True,
        timeout=60,
    )


def test_log_dir_level_and_format_come_from_the_environment(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    _run_with_env(
        tmp_path,
        """
        import logging
        log = logging.getLogger("taskhub.envtest")
        log.info("too chatty for warn")
        log.warning("worth a look")
        """,
        LOG_DIR=str(target),
        LOG_LEVEL="warn",
        LOG_FORMAT="json",
    )
    records = [json.loads(line) for line in lines(target / "app.log")]
    assert [r["message"] for r in records if r["logger"] == "taskhub.envtest"] == ["worth a look"]
    assert records[-1]["level"] == "WARNING"


def test_log_files_rotate_at_the_configured_size(tmp_path: Path) -> None:
    _run_with_env(
        tmp_path,
        """
        import logging
        log = logging.getLogger("taskhub.rotation")
        for i in range(200):
            log.warning("line %03d %s", i, "x" * 60)
        """,
        LOG_DIR=str(tmp_path),
        LOG_MAX_BYTES="2048",
        LOG_BACKUP_COUNT="2",
    )
    files = sorted(p.name for p in tmp_path.glob("app.log*"))
    assert files == ["app.log", "app.log.1", "app.log.2"]
    assert all(p.stat().st_size <= 2048 for p in tmp_path.glob("app.log*"))
    assert "line 199" in (tmp_path / "app.log").read_text()
