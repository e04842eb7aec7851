"""Deployment artefacts: docker-compose.yml, Dockerfile, the gunicorn config, production settings.

CI has no Docker engine, so these check what can be checked without one: the compose file's shape,
pins and variables; the Dockerfile's stages and build steps; and, in real subprocesses, the commands
the image runs (collectstatic, `check --deploy`, gunicorn with its config file, the health check)
under production settings.
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from testkit.hub import gunicorn_argv
from testkit.ports import free_port
from testkit.processes import Process
from testkit.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
APP_SERVICES = ("migrate", "web", "worker", "beat")
SERVICES = ("mysql", "redis", *APP_SERVICES)


# --- helpers ---------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _command(service: dict[str, Any]) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else str(command)


def _env_example() -> dict[str, str]:
    return dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", ENV_EXAMPLE.read_text(), re.MULTILINE))


def _compose_variables(text: str) -> set[str]:
    """Names compose interpolates: `${NAME}`, `${NAME:-default}`, `${NAME:?err}`, `$NAME`; `$$` is
    an escaped dollar left for the container's shell."""
    names = set()
    for match in re.finditer(r"\$(\$|\{([A-Za-z_][A-Za-z0-9_]*)|([A-Za-z_][A-Za-z0-9_]*))", text):
        if match.group(1) != "$":
            names.add(match.group(2) or match.group(3))
    return names


def _is_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    # A ":" before the last "/" is a registry port, not a tag.
    if not name or "/" in tag:
        return False
    return bool(tag) and tag != "latest"


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, rest = current.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    assert not current, "Dockerfile ends inside a continued line"
    return instructions


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, rest in _dockerfile_instructions():
        if keyword == "FROM":
            stages.append([])
        assert stages, "instruction before the first FROM"
        stages[-1].append((keyword, rest))
    return stages


def _apt_packages(stage: list[tuple[str, str]]) -> set[str]:
    packages: set[str] = set()
    for keyword, rest in stage:
        if keyword == "RUN":
            for args in re.findall(r"apt-get install ([^&;|]+)", rest):
                packages |= {word for word in args.split() if not word.startswith("-")}
    return packages


def _isolated_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """This process's environment with every taskhub variable set empty, which settings read as
    "use the default" and which keeps a developer's .env out (real variables win over the file),
    plus throwaway runtime folders and the given overrides."""
    env = dict(os.environ)
    env.update(dict.fromkeys(_env_example(), ""))
    # prometheus_client reads this one itself, and takes an empty value as "the current directory".
    (tmp_path / "metrics").mkdir(exist_ok=True)
    env.update(
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
        DJANGO_SETTINGS_MODULE="taskhub.settings",
        VAR_DIR=str(tmp_path / "var"),
        LOG_DIR=str(tmp_path / "logs"),
        SQLITE_PATH=str(tmp_path / "taskhub.sqlite3"),
        STATIC_ROOT=str(tmp_path / "static"),
        # gunicorn parses this one itself at import and cannot take it empty.
        WEB_CONCURRENCY="1",
    )
    env.update(overrides)
    return env


def _production_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    production = {
        "APP_ENV": "production",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "taskhub.example.com",
    }
    return _isolated_env(tmp_path, **(production | overrides))


def _manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def _healthcheck_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("taskhub_docker_healthcheck", ROOT / "docker" / "healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- docker-compose.yml ----------------------------------------------------------------------


def test_compose_file_parses_and_defines_every_service():
    services = _services()
    assert set(SERVICES) <= set(services), f"missing: {set(SERVICES) - set(services)}"
    assert "version" not in _compose(), "the Compose specification has no version key"


def test_compose_images_are_pinned_to_the_requested_major_versions():
    services = _services()
    for name, service in services.items():
        assert "image" in service or "build" in service, f"{name} has neither image nor build"
        if "image" in service:
            assert _is_pinned(service["image"]), f"{name}: image {service['image']!r} is not pinned to a tag"
    assert services["mysql"]["image"].startswith("mysql:8.")
    assert services["redis"]["image"].startswith("redis:7.")
    for name in APP_SERVICES:
        assert "build" in services[name], f"{name} must build the project's image"


@pytest.mark.parametrize(
    ("image", "pinned"),
    [
        ("mysql:8.4", True),
        ("redis:7.4-alpine", True),
        ("registry.local:5000/taskhub:1.2", True),
        ("mysql@sha256:" + "0" * 64, True),
        ("mysql", False),
        ("mysql:latest", False),
        ("registry.local:5000/taskhub", False),
    ],
)
def test_pin_rule_itself(image, pinned):
    assert _is_pinned(image) is pinned


def test_every_compose_variable_is_listed_in_env_example():
    used = _compose_variables(COMPOSE.read_text())
    assert {"DB_PASSWORD", "DB_DATABASE", "PORT"} <= used  # the scan does find them
    missing = used - set(_env_example())
    assert not missing, f"used in docker-compose.yml but not in .env.example: {sorted(missing)}"


def test_compose_variable_scan_skips_escaped_dollars():
    text = 'a: ${ONE:-1}\nb: "$$NOT_ME $TWO $${NOR_ME}"\nc: ${THREE:?needed}'
    assert _compose_variables(text) == {"ONE", "TWO", "THREE"}


def test_databases_have_health_checks_volumes_and_stay_on_loopback():
    services = _services()
    volumes = _compose().get("volumes") or {}
    for name in ("mysql", "redis"):
        service = services[name]
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
        mounts = service.get("volumes") or []
        assert mounts, f"{name} keeps its data in the container"
        assert all(str(m).split(":")[0] in volumes for m in mounts), f"{name} uses an undeclared volume"
        assert all(str(p).startswith("127.0.0.1:") for p in service.get("ports", [])), (
            f"{name} is published beyond loopback"
        )
    assert "utf8mb4" in _command(services["mysql"])


def test_app_services_read_env_and_reach_the_databases_by_service_name():
    services = _services()
    for name in APP_SERVICES:
        service = services[name]
        env_file = service.get("env_file")
        assert env_file == ".env" or env_file == [".env"], f"{name} does not read .env"
        environment = service.get("environment") or {}
        assert environment.get("DB_HOST") == "mysql", name
        # An empty value from .env would make prometheus_client write into the read-only /app.
        assert environment.get("PROMETHEUS_MULTIPROC_DIR"), name
        assert environment.get("REDIS_HOST") == "redis", name
        depends = service.get("depends_on") or {}
        for database in ("mysql", "redis"):
            assert depends.get(database, {}).get("condition") == "service_healthy", f"{name} -> {database}"


def test_migrations_run_once_in_the_migrate_service_and_nowhere_else():
    services = _services()
    migrate = _command(services["migrate"])
    assert "manage.py migrate" in migrate and "manage.py setup_beat" in migrate
    assert migrate.index("migrate --noinput") < migrate.index("setup_beat")
    assert services["migrate"].get("restart") == "no"
    for name in ("web", "worker", "beat"):
        assert "migrate" not in _command(services[name]), name
        condition = services[name]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully", name
    cmd = dict(_stages()[-1]).get("CMD", "")
    assert "migrate" not in cmd, "the image must not migrate implicitly on start"


def test_worker_and_single_beat_run_celery_with_the_database_scheduler():
    services = _services()
    assert "celery -A taskhub worker" in _command(services["worker"])
    beat = _command(services["beat"])
    assert "celery -A taskhub beat" in beat
    assert "--scheduler django_celery_beat.schedulers:DatabaseScheduler" in beat
    assert (services["beat"].get("deploy") or {}).get("replicas", 1) == 1


def test_web_listens_on_all_interfaces_inside_its_container_but_publishes_on_loopback_by_default():
    web = _services()["web"]
    assert web["environment"]["HOST"] == "0.0.0.0"
    assert web["environment"]["PORT"] == "8000"
    assert [str(p) for p in web["ports"]] == ["${WEB_PUBLISH_ADDRESS:-127.0.0.1}:${PORT:-8000}:8000"]


# --- Dockerfile ------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_with_pinned_base_images():
    stages = _stages()
    assert len(stages) >= 2
    for stage in stages:
        image = stage[0][1].split()[0]
        assert _is_pinned(image), f"base image {image!r} is not pinned"
        assert "slim" in image, f"base image {image!r} is not a slim one"


def test_dockerfile_build_stage_installs_what_ci_installs_for_mysqlclient():
    build = _apt_packages(_stages()[0])
    assert {"build-essential", "pkg-config"} <= build
    assert build & {"libmariadb-dev", "default-libmysqlclient-dev"}
    ci_list = re.search(r"for pkg in ([^;]+);", (ROOT / ".ci" / "run").read_text())
    assert ci_list is not None, "CI's package list moved: update this test"
    assert {"build-essential", "pkg-config", "libmariadb-dev"} <= set(ci_list.group(1).split()), (
        "CI changed: see Dockerfile"
    )


def test_dockerfile_runtime_stage_is_slim_non_root_and_healthchecked():
    runtime = _stages()[-1]
    keywords = [keyword for keyword, _ in runtime]
    runtime_apt = _apt_packages(runtime)
    assert "libmariadb3" in runtime_apt, "mysqlclient needs the client library at run time"
    assert not runtime_apt & {"build-essential", "gcc", "pkg-config", "libmariadb-dev"}, "compilers in the final image"
    users = [rest for keyword, rest in runtime if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must not run as root"
    assert keywords.index("USER") < keywords.index("CMD")
    assert any("--from=build" in rest for keyword, rest in runtime if keyword == "COPY")
    assert any("collectstatic" in rest for keyword, rest in runtime if keyword == "RUN")
    healthcheck = dict(runtime).get("HEALTHCHECK", "")
    assert "docker/healthcheck.py" in healthcheck
    cmd = dict(runtime)["CMD"]
    assert "gunicorn" in cmd and "taskhub/gunicorn.conf.py" in cmd


def test_dockerfile_installs_the_unit_sdk_into_the_image_venv():
    # taskhub_unit is a distribution of its own (clients/unit): PYTHONPATH=/app no longer finds it.
    build = _stages()[0]
    assert ("COPY", "clients/unit ./clients/unit") in build
    assert any(keyword == "RUN" and "pip install ./clients/unit" in rest for keyword, rest in build)


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_image():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".env", ".git", ".venv", "var", "logs"} <= ignored


# --- production settings ---------------------------------------------------------------------


def test_check_deploy_passes_under_production_settings(tmp_path):
    result = _manage(_production_env(tmp_path), "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize(
    ("name", "value", "warning"),
    [("SECURE_SSL_REDIRECT", "false", "security.W008"), ("SECURE_HSTS_SECONDS", "0", "security.W004")],
)
def test_check_deploy_fails_when_hardening_is_switched_off(tmp_path, name, value, warning):
    result = _manage(_production_env(tmp_path, **{name: value}), "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode != 0
    assert warning in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"SECRET_KEY": ""}, "SECRET_KEY"),
        ({"SECRET_KEY": "   "}, "SECRET_KEY"),
        ({"ALLOWED_HOSTS": ""}, "ALLOWED_HOSTS"),
        ({"ALLOWED_HOSTS": " , "}, "ALLOWED_HOSTS"),
    ],
)
def test_production_start_up_refuses_without_secret_key_or_allowed_hosts(tmp_path, overrides, variable):
    result = _manage(_production_env(tmp_path, **overrides), "check")
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("django.core.exceptions.ImproperlyConfigured:"), result.stderr[-2000:]
    assert variable in last_line


def test_production_settings_are_hardened(tmp_path):
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.DEBUG, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_SSL_REDIRECT, "
        "s.MIDDLEWARE[s.MIDDLEWARE.index('django.middleware.security.SecurityMiddleware') + 1])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=_production_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True", "True", "True", "whitenoise.middleware.WhiteNoiseMiddleware"]


# --- gunicorn config -------------------------------------------------------------------------


def _gunicorn_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gunicorn", "--config", "taskhub/gunicorn.conf.py", "--print-config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_gunicorn_config_takes_its_knobs_from_the_environment(tmp_path):
    env = _isolated_env(
        tmp_path, WEB_CONCURRENCY="3", GUNICORN_THREADS="5", HOST="0.0.0.0", PORT="9123", GUNICORN_ACCESS_LOG="off"
    )
    result = _gunicorn_config(env)
    assert result.returncode == 0, result.stderr
    config = dict(re.findall(r"^(\w+)\s+= (.*)$", result.stdout, re.MULTILINE))
    assert config["workers"] == "3"
    assert config["threads"] == "5"
    assert config["worker_class"] == "taskhub.uvicorn_worker.Worker"
    assert config["bind"] == "['0.0.0.0:9123']"
    assert config["accesslog"] == "None"
    assert config["wsgi_app"] == "taskhub.asgi:application"


def test_gunicorn_config_serves_wsgi_with_gthread_when_asked(tmp_path):
    result = _gunicorn_config(_isolated_env(tmp_path, WEB_WORKER="wsgi", GUNICORN_THREADS="5"))
    assert result.returncode == 0, result.stderr
    config = dict(re.findall(r"^(\w+)\s+= (.*)$", result.stdout, re.MULTILINE))
    assert config["worker_class"] == "gthread"
    assert config["wsgi_app"] == "taskhub.wsgi:application"


def test_gunicorn_config_defaults_to_loopback_and_stdout_access_log(tmp_path):
    result = _gunicorn_config(_isolated_env(tmp_path))
    assert result.returncode == 0, result.stderr
    config = dict(re.findall(r"^(\w+)\s+= (.*)$", result.stdout, re.MULTILINE))
    assert config["bind"] == "['127.0.0.1:8000']"
    assert config["threads"] == "4"
    assert config["accesslog"] == "-"


def test_gunicorn_config_refuses_a_bad_value_naming_it(tmp_path):
    result = _gunicorn_config(_isolated_env(tmp_path, GUNICORN_THREADS="many"))
    assert result.returncode != 0
    assert "GUNICORN_THREADS must be an integer" in result.stderr


# --- the image's commands, end to end --------------------------------------------------------


@pytest.mark.parametrize(
    ("allowed_hosts", "host"),
    [("", "localhost"), ("*", "localhost"), (".example.com", "example.com"), (" , a.example, b", "a.example")],
)
def test_healthcheck_probes_with_a_host_the_app_allows(allowed_hosts, host):
    assert _healthcheck_module().probe_host(allowed_hosts) == host


@pytest.mark.slow
def test_production_gunicorn_serves_health_and_static_files_as_the_image_runs_it(tmp_path):
    env = _production_env(tmp_path, HOST="127.0.0.1", PORT=str(free_port()), WEB_CONCURRENCY="1")
    collected = _manage(env, "collectstatic", "--noinput", "-v0")
    assert collected.returncode == 0, collected.stderr
    web = Process("gunicorn", gunicorn_argv(), env=env, log_path=tmp_path / "gunicorn.log").start()

    def healthcheck(**overrides: str) -> int:
        return subprocess.run(
            [sys.executable, "docker/healthcheck.py"], cwd=ROOT, env=env | overrides, capture_output=True, timeout=30
        ).returncode

    def get(path: str, headers: dict[str, str]) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{env['PORT']}{path}", headers=headers)
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return error.code

    def passes() -> bool:
        assert web.running, "gunicorn exited"
        return healthcheck() == 0

    try:
        wait_for(passes, 60, "the health check to pass", interval=0.3)
        proxied = {"Host": "taskhub.example.com", "X-Forwarded-Proto": "https"}
        assert get("/static/admin/css/base.css", proxied) == 200  # WhiteNoise, from STATIC_ROOT
        assert get("/api/v1/health", {"Host": "taskhub.example.com"}) == 301  # plain HTTP goes to HTTPS
        assert healthcheck(ALLOWED_HOSTS="other.example") == 1  # a Host the server refuses is unhealthy
    finally:
        web.stop(grace=30)
        print(web.output()[-3000:])


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@pytest.mark.mariadb
def test_init_sql_creates_a_utf8mb4_database_on_the_server(tmp_path):
    import MySQLdb
    from django.conf import settings

    sql = (ROOT / "docker" / "init.sql").read_text()
    statement = re.search(r"^CREATE DATABASE[^;]+;", sql, re.MULTILINE | re.DOTALL)
    assert statement is not None
    assert f"IF NOT EXISTS {_env_example()['DB_DATABASE']}" in statement.group(0)
    name = f"taskhub_initsql_{os.getpid()}"
    db = settings.DATABASES["default"]
    conn = MySQLdb.connect(host=db["HOST"], port=int(str(db["PORT"])), user=db["USER"], password=db["PASSWORD"])
    try:
        cursor = conn.cursor()
        cursor.execute(statement.group(0).replace(_env_example()["DB_DATABASE"], name))
        cursor.execute(
            "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA "
            "WHERE SCHEMA_NAME = %s",
            [name],
        )
        assert cursor.fetchone() == ("utf8mb4", "utf8mb4_unicode_ci")
    finally:
        conn.cursor().execute(f"DROP DATABASE IF EXISTS {name}")
        conn.close()
