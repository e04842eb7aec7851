"""Configuration: a bad value stops start-up naming the variable; the two backends are chosen
by DB_HOST / REDIS_HOST; .env.example lists every variable settings reads."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _start(
    env_changes: dict[str, str], code: str = "import django; django.setup()"
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "REDIS_", "TASK_", "UNIT_", "API_"))}
    env |= {
        "DJANGO_SETTINGS_MODULE": "taskhub.settings",
        "VAR_DIR": "/tmp/taskhub-settings-test/var",
        "LOG_DIR": "/tmp/taskhub-settings-test/logs",
    } | env_changes
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DB_PORT", "not-a-port"),
        ("TASK_MAX_RETRY_COUNT", "three"),
        ("TASK_MAX_RETRY_COUNT", "-1"),
        ("UNIT_HEARTBEAT_TIMEOUT", "soon"),
        ("SWEEP_INTERVAL", "nan"),
        ("LOG_LEVEL", "loud"),
        ("APP_ENV", "staging-ish"),
        ("REDIS_PORT", "70000"),
        ("API_MAX_BODY_BYTES", "10"),
        ("DEBUG", "maybe"),
    ],
)
def test_bad_value_stops_startup_naming_the_variable(name, value):
    env = {name: value}
    if name == "DB_PORT":
        env["DB_HOST"] = "127.0.0.1"
    result = _start(env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert name in result.stderr.strip().splitlines()[-1]


def test_embedded_default_is_sqlite_locmem_and_filesystem_broker():
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.DATABASES['default']['ENGINE'], s.CACHES['default']['BACKEND'], s.CELERY_BROKER_URL, "
        "s.DATABASES['default']['OPTIONS']['transaction_mode'])"
    )
    out = _start({}, code).stdout.split()
    assert out == [
        "django.db.backends.sqlite3",
        "django.core.cache.backends.locmem.LocMemCache",
        "filesystem://localhost/",
        "IMMEDIATE",
    ]


def test_production_backends_are_mysql_and_redis():
    code = (
        # The settings module alone: django.setup() would import the MySQL driver, which only an
        # install with DB_HOST set has (the `mysql` extra).
        "import taskhub.settings as s; "
        "print(s.DATABASES['default']['ENGINE'], s.CACHES['default']['BACKEND'], s.CELERY_BROKER_URL)"
    )
    out = _start({"DB_HOST": "db.example", "REDIS_HOST": "cache.example", "REDIS_PORT": "6380"}, code).stdout.split()
    assert out == ["django.db.backends.mysql", "django_redis.cache.RedisCache", "redis://cache.example:6380/0"]


def test_sqlite_runs_in_wal_mode(db):
    from django.db import connection

    if connection.vendor != "sqlite":
        pytest.skip("SQLite only")
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        mode = cursor.fetchone()[0]
    # The test database may be in memory (no WAL there); a file database must be WAL.
    assert mode in ("wal", "memory")
    result = _start(
        {},
        "import django; django.setup(); from django.db import connection; c = connection.cursor(); "
        "c.execute('PRAGMA journal_mode'); print(c.fetchone()[0])",
    )
    assert result.stdout.strip() == "wal", result.stderr


def test_env_example_lists_every_variable_the_settings_read():
    source = (ROOT / "taskhub" / "settings.py").read_text()
    read = set(re.findall(r'env_(?:str|int|float|bool|choice|list)\(\s*"([A-Z_]+)"', source))
    listed = set(re.findall(r"^([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.MULTILINE))
    assert read - listed == set()
    for seed_name in [
        "DB_HOST",
        "DB_PORT",
        "DB_USERNAME",
        "DB_PASSWORD",
        "DB_DATABASE",
        "REDIS_HOST",
        "REDIS_PORT",
        "APP_ENV",
        "LOG_LEVEL",
        "TASK_MAX_RETRY_COUNT",
    ]:
        assert seed_name in listed


def test_dotenv_file_is_honoured(tmp_path):
    code = "import django; django.setup(); from django.conf import settings as s; print(s.TASK_MAX_RETRY_COUNT)"
    env_file = ROOT / ".env"
    if env_file.exists():
        pytest.skip("a developer .env exists; not touching it")
    env_file.write_text("TASK_MAX_RETRY_COUNT=9\n")
    try:
        assert _start({}, code).stdout.strip() == "9"
        assert _start({"TASK_MAX_RETRY_COUNT": "4"}, code).stdout.strip() == "4"  # real env wins
    finally:
        env_file.unlink()
