"""The MariaDB and Redis servers, as .ci/services.sh runs them: stopped and started again for the
outage tests and the chaos run (which disturbs everyone using them: callers opt in), and a
database or Redis DB number of a run's own, made fresh and dropped."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from testkit.waiting import wait_for


class ServiceError(RuntimeError):
    pass


def _quiet(*command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


# --- MariaDB (the local server, administered over its socket as root) ---------------------------


def mariadb_up() -> bool:
    return _quiet("mysqladmin", "--protocol=socket", "-uroot", "ping", timeout=10).returncode == 0


def stop_mariadb() -> None:
    _quiet("mysqladmin", "--protocol=socket", "-uroot", "shutdown", timeout=120)
    wait_for(lambda: not mariadb_up(), 60, "MariaDB to stop", interval=0.2)


def start_mariadb() -> None:
    """Start it as .ci/services.sh does (if it is down), and wait until it answers."""
    if mariadb_up():
        return
    Path("/run/mysqld").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/mysqld", "mysql", "mysql")
    started = _quiet(
        "start-stop-daemon", "--start", "--oknodo", "--background", "--exec", "/usr/sbin/mariadbd", timeout=60
    )
    if started.returncode != 0:
        raise ServiceError(f"could not start MariaDB: {started.stderr.strip()}")
    wait_for(mariadb_up, 120, "MariaDB to answer", interval=0.2)


def _connect(host: str, port: int, user: str, password: str) -> Any:
    import MySQLdb

    return MySQLdb.connect(host=host, port=port, user=user, password=password, charset="utf8mb4", connect_timeout=5)


def recreate_database(*, host: str, port: int, user: str, password: str, name: str) -> None:
    """Drop `name` if it exists and create it empty (utf8mb4, as docker/init.sql does)."""
    conn = _connect(host, port, user, password)
    try:
        cursor = conn.cursor()
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    finally:
        conn.close()


def drop_database(*, host: str, port: int, user: str, password: str, name: str) -> None:
    conn = _connect(host, port, user, password)
    try:
        conn.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        conn.close()


# --- Redis ---------------------------------------------------------------------------------------


def redis_up(port: int) -> bool:
    out = _quiet("redis-cli", "-h", "127.0.0.1", "-p", str(port), "ping", timeout=10)
    return out.stdout.strip() == "PONG"


def stop_redis(port: int) -> None:
    _quiet("redis-cli", "-h", "127.0.0.1", "-p", str(port), "shutdown", "nosave", timeout=30)
    wait_for(lambda: not redis_up(port), 30, "Redis to stop", interval=0.1)


def start_redis(port: int) -> None:
    """A Redis on 127.0.0.1:port (if none answers there) that keeps nothing on disk."""
    if redis_up(port):
        return
    started = _quiet(
        "redis-server",
        *("--daemonize", "yes", "--bind", "127.0.0.1", "--port", str(port)),
        *("--save", "", "--appendonly", "no"),
    )
    if started.returncode != 0:
        raise ServiceError(f"could not start Redis: {started.stderr.strip()}")
    wait_for(lambda: redis_up(port), 30, "Redis to answer", interval=0.1)


def flush_redis_db(*, host: str, port: int, db: int) -> None:
    """Empty one Redis DB number (never the whole server: others use the rest)."""
    import redis

    client = redis.Redis(host=host, port=port, db=db)
    try:
        client.flushdb()
    finally:
        client.close()
