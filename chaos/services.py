"""The shared services the chaos run stops and starts: MariaDB and Redis (as .ci/services.sh runs
them), and the run's own database and Redis DB number."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


class ServiceError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: object, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise ServiceError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def _quiet(*command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


# --- MariaDB ---------------------------------------------------------------------------------


def mariadb_up() -> bool:
    return _quiet("mysqladmin", "--protocol=socket", "-uroot", "ping", timeout=10).returncode == 0


def stop_mariadb() -> None:
    _quiet("mysqladmin", "--protocol=socket", "-uroot", "shutdown", timeout=120)
    wait_for(lambda: not mariadb_up(), 60, "MariaDB to stop")


def start_mariadb() -> None:
    if mariadb_up():
        return
    Path("/run/mysqld").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/mysqld", "mysql", "mysql")
    started = _quiet(
        "start-stop-daemon", "--start", "--oknodo", "--background", "--exec", "/usr/sbin/mariadbd", timeout=60
    )
    if started.returncode != 0:
        raise ServiceError(f"could not start MariaDB: {started.stderr.strip()}")
    wait_for(mariadb_up, 120, "MariaDB to answer")


def recreate_database(*, host: str, port: int, user: str, password: str, name: str) -> None:
    import MySQLdb

    wait_for(mariadb_up, 60, "MariaDB")
    conn = MySQLdb.connect(host=host, port=port, user=user, passwd=password)
    try:
        cursor = conn.cursor()
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    finally:
        conn.close()


# --- Redis -----------------------------------------------------------------------------------


def redis_up(port: int) -> bool:
    out = _quiet("redis-cli", "-h", "127.0.0.1", "-p", str(port), "ping", timeout=10)
    return out.stdout.strip() == "PONG"


def stop_redis(port: int) -> None:
    _quiet("redis-cli", "-h", "127.0.0.1", "-p", str(port), "shutdown", "nosave", timeout=30)
    wait_for(lambda: not redis_up(port), 30, "Redis to stop")


def start_redis(port: int) -> None:
    if redis_up(port):
        return
    started = _quiet(
        "redis-server",
        "--daemonize",
        "yes",
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
    )
    if started.returncode != 0:
        raise ServiceError(f"could not start Redis: {started.stderr.strip()}")
    wait_for(lambda: redis_up(port), 30, "Redis to answer")


def flush_redis_db(port: int, db: int) -> None:
    _quiet("redis-cli", "-h", "127.0.0.1", "-p", str(port), "-n", str(db), "flushdb", timeout=30)
