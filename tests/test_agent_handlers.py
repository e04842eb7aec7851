"""Built-in handlers (DATA_PROCESSING as the seed means it, sleep, echo), handler lookup, and the
`taskhub-unit` command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from taskhub_unit import NonRetryableError, TaskContext, cli
from taskhub_unit.agent import Agent, UnitInUse
from taskhub_unit.cli import build_parser, main
from taskhub_unit.handlers import data_processing, echo, resolve_handler, sleep
from testkit.ports import free_port
from testkit.waiting import wait_for


def context(config: dict[str, Any], data_dir: Path | None = None, attempt: int = 1) -> TaskContext:
    task = {"id": 1, "name": "t", "taskType": "DATA_PROCESSING", "config": config, "attempt": attempt}
    return TaskContext(task, unit_id="w1", data_dir=data_dir)


def log_lines(ctx: TaskContext) -> list[str]:
    return [line["message"] for line in ctx.logger.take(1000)]


# --- DATA_PROCESSING -----------------------------------------------------------------------------


def test_seed_example_converts_csv_to_json(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("name,score\nada,3\nbob,5\n", encoding="utf-8")
    ctx = context({"inputFile": "data.csv", "outputFormat": "json"}, tmp_path)
    result = data_processing(ctx)
    assert json.loads((tmp_path / "data.json").read_text()) == [
        {"name": "ada", "score": "3"},
        {"name": "bob", "score": "5"},
    ]
    assert result == {
        "inputFile": "data.csv",
        "outputFile": "data.json",
        "outputFormat": "json",
        "records": 2,
        "columns": ["name", "score"],
        "bytes": (tmp_path / "data.json").stat().st_size,
    }
    assert ctx.current_progress == 100
    assert any("read 2 record" in line for line in log_lines(ctx))


def test_json_to_csv_with_an_output_file(tmp_path: Path) -> None:
    (tmp_path / "in.json").write_text(json.dumps([{"a": 1, "b": [1, 2]}, {"a": 2, "c": "x"}]))
    ctx = context({"inputFile": "in.json", "outputFormat": "CSV", "outputFile": "out/result.csv"}, tmp_path)
    result = data_processing(ctx)
    assert (tmp_path / "out" / "result.csv").read_text().splitlines() == ["a,b,c", '1,"[1, 2]",', "2,,x"]
    assert result["outputFile"] == "out/result.csv"


def test_same_format_does_not_overwrite_the_input(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text('{"a": 1}\n\n{"a": 2}\n')
    result = data_processing(context({"inputFile": "rows.jsonl", "outputFormat": "jsonl"}, tmp_path))
    assert result["outputFile"] == "rows.out.jsonl"
    assert (tmp_path / "rows.jsonl").read_text() == '{"a": 1}\n\n{"a": 2}\n'


def test_missing_input_file_is_a_clear_non_retryable_failure(tmp_path: Path) -> None:
    with pytest.raises(NonRetryableError, match=r"input file not found: data\.csv"):
        data_processing(context({"inputFile": "data.csv", "outputFormat": "json"}, tmp_path))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "inputFile is required"),
        ({"inputFile": "../etc/passwd.csv"}, "outside the unit's data directory"),
        ({"inputFile": "/etc/hosts.csv"}, "outside the unit's data directory"),
        ({"inputFile": "a.csv", "outputFormat": "xml"}, "outputFormat 'xml'"),
        ({"inputFile": "a.xlsx"}, "known input types"),
        ({"inputFile": "a.csv", "outputFile": "../escape.json"}, "outside the unit's data directory"),
    ],
)
def test_bad_config_is_non_retryable(tmp_path: Path, config: dict[str, Any], message: str) -> None:
    (tmp_path / "a.csv").write_text("x\n1\n")
    with pytest.raises(NonRetryableError, match=message):
        data_processing(context(config, tmp_path))


def test_unparsable_input_is_non_retryable(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(NonRetryableError, match=r"cannot parse bad\.json"):
        data_processing(context({"inputFile": "bad.json", "outputFormat": "csv"}, tmp_path))


# --- sleep / echo --------------------------------------------------------------------------------


def test_sleep_reports_progress_and_returns_where_it_ran() -> None:
    ctx = context({"seconds": 0.01, "steps": 4})
    assert sleep(ctx) == {"slept": 0.01, "unit": "w1", "attempt": 1}
    assert ctx.current_progress == 100


def test_sleep_stops_early_when_cancelled() -> None:
    ctx = context({"seconds": 30, "steps": 3})
    threading.Timer(0.05, ctx._stop, args=("cancel", "task was cancelled")).start()
    assert sleep(ctx) is None
    assert ctx.current_progress == 0
    assert "stopped early: task was cancelled" in log_lines(ctx)


def test_sleep_fails_on_purpose() -> None:
    with pytest.raises(NonRetryableError):
        sleep(context({"seconds": 0, "fail": "permanent"}))
    with pytest.raises(RuntimeError):
        sleep(context({"seconds": 0, "fail": "retryable"}))
    with pytest.raises(RuntimeError):
        sleep(context({"seconds": 0, "failAttempts": 2}, attempt=2))
    assert sleep(context({"seconds": 0, "failAttempts": 2}, attempt=3)) is not None


def test_echo_returns_its_config() -> None:
    ctx = context({"message": "hello"})
    assert echo(ctx) == {"echo": {"message": "hello"}, "unit": "w1"}
    assert log_lines(ctx) == ["echo: hello"]


def test_progress_is_clamped_and_never_goes_down() -> None:
    ctx = context({})
    for value in (10, 150, 40):
        ctx.progress(value)
    assert ctx.current_progress == 100


def test_task_logger_formats_batches_and_bounds_lines() -> None:
    ctx = context({})
    ctx.logger.warning("rows: %d", 3)
    ctx.logger.info("x" * 20_000)
    lines = ctx.logger.take(10)
    assert lines[0]["level"] == "WARN" and lines[0]["message"] == "rows: 3"
    assert len(lines[1]["message"]) <= 10_000
    assert lines[0]["timestamp"].endswith("+00:00")


# --- handler lookup ------------------------------------------------------------------------------


def test_handler_lookup() -> None:
    assert resolve_handler("sleep", "ANY") is sleep
    assert resolve_handler(None, "DATA_PROCESSING") is data_processing
    assert resolve_handler("taskhub_unit.handlers:echo", "ANY") is echo
    with pytest.raises(ValueError, match="no built-in handler for unit type EMAIL"):
        resolve_handler(None, "EMAIL")
    with pytest.raises(ValueError, match="cannot import"):
        resolve_handler("no_such_module_xyz:run", "ANY")
    with pytest.raises(ValueError, match="has no attribute"):
        resolve_handler("taskhub_unit.handlers:nope", "ANY")
    with pytest.raises(ValueError, match=r"package\.module:function"):
        resolve_handler("just_a_name", "ANY")


# --- command line --------------------------------------------------------------------------------


def test_every_flag_has_an_environment_fallback() -> None:
    env = {
        "TASKHUB_SERVER": "http://hub:8000",
        "TASKHUB_ENROLL_KEY": "thk_x",
        "TASKHUB_UNIT_ID": "worker-001",
        "TASKHUB_UNIT_TYPE": "DATA_PROCESSING",
        "TASKHUB_CAPACITY": "5",
        "TASKHUB_HANDLER": "sleep",
        "TASKHUB_DRAIN_TIMEOUT": "12.5",
        "TASKHUB_METADATA": '{"zone": "a"}',
    }
    args = build_parser(env).parse_args([])
    assert (args.server, args.enroll_key, args.id, args.type, args.capacity, args.handler) == (
        "http://hub:8000",
        "thk_x",
        "worker-001",
        "DATA_PROCESSING",
        5,
        "sleep",
    )
    assert args.drain_timeout == 12.5 and args.metadata == {"zone": "a"}
    assert build_parser(env).parse_args(["--capacity", "2"]).capacity == 2  # the flag wins


def test_replace_and_the_status_interval_come_from_flags_or_the_environment() -> None:
    args = build_parser({}).parse_args([])
    assert (args.replace, args.status_interval) == (False, 30.0)
    args = build_parser({"TASKHUB_REPLACE": "true", "TASKHUB_STATUS_INTERVAL": "0"}).parse_args([])
    assert (args.replace, args.status_interval, args._env_errors) == (True, 0.0, [])
    assert build_parser({}).parse_args(["--replace", "--status-interval", "5"]).replace is True
    problems = build_parser({"TASKHUB_REPLACE": "maybe", "TASKHUB_STATUS_INTERVAL": "-1"}).parse_args([])._env_errors
    assert problems == [
        "environment variable TASKHUB_REPLACE='maybe': use 1/0, true/false, yes/no or on/off",
        "environment variable TASKHUB_STATUS_INTERVAL='-1': must be 0 (off) or a positive number",
    ]


def test_a_unit_id_held_by_another_process_exits_with_code_4(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def in_use(self: Agent) -> int:
        raise UnitInUse("another process is registered as w1 (instance abc, last heartbeat 1.0s ago); stopping")

    monkeypatch.setattr(Agent, "run", in_use)
    monkeypatch.setattr(cli, "_install_signals", lambda agent, timeout: None)
    code = main(["--server", "http://hub.test", "--enroll-key", "thk_x", "--id", "w1", "--handler", "echo"])
    assert code == cli.EXIT_IN_USE == 4
    assert "another process is registered as w1" in caplog.text


def test_a_bad_environment_value_names_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser({"TASKHUB_CAPACITY": "lots", "TASKHUB_ENROLL_KEY": "thk_hidden"})
    args = parser.parse_args([])
    assert args._env_errors == [
        "environment variable TASKHUB_CAPACITY='lots': invalid literal for int() with base 10: 'lots'"
    ]


def test_help_never_shows_the_enroll_key(capsys: pytest.CaptureFixture[str]) -> None:
    help_text = build_parser({"TASKHUB_ENROLL_KEY": "thk_secret_value"}).format_help()
    assert "thk_secret_value" not in help_text
    assert "TASKHUB_ENROLL_KEY; now: set" in " ".join(help_text.split())


def test_server_and_enroll_key_are_required(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("TASKHUB_SERVER", "TASKHUB_ENROLL_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as caught:
        main(["--id", "w1"])
    assert caught.value.code == 2
    assert "--server (or TASKHUB_SERVER) is required" in capsys.readouterr().err


def test_the_agent_imports_no_django() -> None:
    code = (
        "import sys, taskhub_unit.cli, taskhub_unit.agent; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'taskhub', 'tasks', 'units')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_sigterm_stops_a_unit_that_never_reached_the_hub(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKHUB_")}
    env.update(TASKHUB_ENROLL_KEY="thk_never_logged", PYTHONUNBUFFERED="1")
    log_path = tmp_path / "unit.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "taskhub_unit", "--server", f"http://127.0.0.1:{port}", "--id", "w1"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "cannot reach the hub" in log_path.read_text(), 20, "the unit to say it cannot reach the hub")
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    finally:
        proc.kill()
    output = log_path.read_text()
    assert proc.returncode == 0, output
    assert "registration interrupted" in output
    assert "thk_never_logged" not in output


def test_log_batches_stay_well_under_the_hubs_body_limit() -> None:
    ctx = context({})
    for _ in range(200):
        ctx.logger.info("y" * 9_000)
    batches = []
    while lines := ctx.logger.take(500):
        batches.append(lines)
    assert sum(len(b) for b in batches) == 200
    assert all(sum(len(line["message"]) for line in batch) < 300_000 for batch in batches)
