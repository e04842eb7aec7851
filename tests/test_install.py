"""What each make target installs (a dry run of the Makefile on a copy, with a stand-in .venv), and
the packaging metadata pip reads. `.ci/fresh_install.sh` proves the real install from wheels alone."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in ("Makefile", "pyproject.toml", "clients/unit/pyproject.toml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    return tmp_path


def _dry_run(tree: Path, target: str, **env: str) -> list[str]:
    """The pip installs `make -n target` would run, as the extras they install ('' is runtime only)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("DB_HOST", "MAKEFLAGS", "MFLAGS")}
    done = subprocess.run(
        ["make", "-n", "--no-print-directory", target], cwd=tree, env=clean | env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return [line.split("-e '.", 1)[1].split("'", 1)[0] for line in done.stdout.splitlines() if "pip install" in line]


def _stamp(tree: Path, *levels: str) -> None:
    later = time.time() + 5
    for level in levels:
        stamp = tree / ".venv" / f".installed-{level}"
        stamp.touch()
        os.utime(stamp, (later, later))


def test_each_target_installs_its_own_level_and_mysqlclient_only_with_db_host(tree):
    assert _dry_run(tree, "run") == [""]
    assert _dry_run(tree, "demo") == [""]
    assert _dry_run(tree, "test") == ["[test]"]
    assert _dry_run(tree, "lint") == ["[dev]"]
    assert _dry_run(tree, "run", DB_HOST="db.example") == ["", "[mysql]"]
    assert _dry_run(tree, "test", DB_HOST="db.example") == ["[test]", "[mysql]"]
    assert _dry_run(tree, "run", DB_HOST="") == [""]  # empty: the embedded default, as in settings
    (tree / ".env").write_text("# from .env.example\nDB_HOST=127.0.0.1\n")
    assert _dry_run(tree, "run") == ["", "[mysql]"]
    assert _dry_run(tree, "run", DB_HOST="") == [""]  # the environment wins over .env, as in settings


def test_a_higher_level_satisfies_the_lower_ones_until_pyproject_changes(tree):
    _stamp(tree, "runtime", "test")  # what `make test` leaves behind
    assert _dry_run(tree, "run") == [] and _dry_run(tree, "test") == []
    assert _dry_run(tree, "lint") == ["[dev]"]
    later = time.time() + 60
    os.utime(tree / "pyproject.toml", (later, later))
    assert _dry_run(tree, "run") == [""]


def test_every_level_installs_the_unit_sdk_beside_the_hub_and_again_when_its_pyproject_changes(tree):
    done = subprocess.run(["make", "-n", "--no-print-directory", "test"], cwd=tree, capture_output=True, text=True)
    installs = [line for line in done.stdout.splitlines() if "pip install" in line]
    assert installs and all("-e ./clients/unit" in line for line in installs), installs
    # A pip command of its own, after the hub's: one command for both, upgrading a venv whose hub still
    # shipped the taskhub-unit script, uninstalled the old hub after installing the unit, and the script.
    for line in installs:
        hub, unit = line.split("-e ./clients/unit")[0].rsplit("&&", 1)
        assert "-e '." in hub and "pip install" in unit and "-e '." not in unit, line
    _stamp(tree, "runtime", "test")
    assert _dry_run(tree, "run") == []
    later = time.time() + 60
    os.utime(tree / "clients" / "unit" / "pyproject.toml", (later, later))
    assert _dry_run(tree, "run") == [""]


def test_install_says_what_it_does_one_line_per_step(tree):
    done = subprocess.run(["make", "-n", "test"], cwd=tree, capture_output=True, text=True, check=True)
    assert 'echo "installing test dependencies (pytest, Playwright, schemathesis, ...) into .venv ..."' in done.stdout
    assert "pip install -q" in done.stdout and "done in $(( $(date +%s) - started ))s" in done.stdout


def test_runtime_dependencies_need_no_compiler_and_the_extras_are_split():
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"]
    assert not any(dep.startswith("mysqlclient") for dep in project["dependencies"])
    assert [dep for dep in extras["mysql"]] == ["mysqlclient>=2.2"]
    assert not any(dep.startswith("mysqlclient") for name in ("test", "dev") for dep in extras[name])
    assert {"pytest", "pytest-django", "time-machine", "hypothesis", "playwright", "schemathesis", "pyyaml"} <= {
        dep.split(">")[0].split("<")[0].split("[")[0] for dep in extras["test"]
    }
    assert "taskhub[test]" in extras["dev"] and any(dep.startswith("ruff") for dep in extras["dev"])


def test_license_is_an_spdx_string_that_the_build_backend_understands():
    assert PYPROJECT["project"]["license"] == "MIT"
    assert PYPROJECT["build-system"]["requires"] == ["setuptools>=77"]  # SPDX license strings: setuptools 77
