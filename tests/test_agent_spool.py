"""The agent's outcome spool (taskhub_unit.spool), in process: durable files, one process per
spool, what the next process replays. The crash itself, with real processes: tests/test_agent_e2e.py."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from taskhub_unit.spool import Spool


def test_outcomes_are_kept_until_removed_and_read_back_as_report_items(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "u1")
    assert spool.open()
    spool.save(7, 2, "complete", {"attempt": 2, "result": {"rows": 3}})
    spool.save(9, 1, "fail", {"attempt": 1, "error": "boom", "retryable": False})
    files = sorted(p.name for p in (tmp_path / ".taskhub-unit" / "u1").glob("outcome-*"))
    assert files == ["outcome-7-2.json", "outcome-9-1.json"]
    assert all(os.stat(tmp_path / ".taskhub-unit" / "u1" / f).st_mode & 0o077 == 0 for f in files)
    spool.close()
    again = Spool(tmp_path, "u1")  # the next process
    assert again.open()
    assert again.pending() == [
        {"taskId": 7, "attempt": 2, "outcome": "complete", "result": {"rows": 3}},
        {"taskId": 9, "attempt": 1, "outcome": "fail", "error": "boom", "retryable": False},
    ]
    again.remove(7, 2)
    again.remove(7, 2)  # twice is fine
    assert [i["taskId"] for i in again.pending()] == [9]


def test_the_state_is_what_the_next_process_takes_over(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "u1")
    spool.open()
    assert spool.state("ek_enroll") == {}
    spool.save_state("abc123", "thu_secret-token-value", "ek_enroll")
    spool.close()
    stored = (tmp_path / ".taskhub-unit" / "u1" / "state.json").read_text()
    assert "secret-token" not in stored and "abc123" in stored  # the token only sealed
    nxt = Spool(tmp_path, "u1")
    nxt.open()
    assert nxt.state("ek_enroll") == {"instanceId": "abc123", "token": "thu_secret-token-value"}
    assert nxt.state("ek_another") == {"instanceId": "abc123"}  # sealed with another key: no token


def test_one_process_per_spool(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first, second = Spool(tmp_path, "u1"), Spool(tmp_path, "u1")
    assert first.open()
    with caplog.at_level(logging.WARNING, logger="taskhub_unit.agent"):
        assert not second.open()
    assert "another process uses the spool" in caplog.text
    second.save(1, 1, "complete", {"result": 1})  # a no-op without the spool
    assert [i["taskId"] for i in first.pending()] == []
    first.close()
    assert second.open()


def test_without_a_data_dir_there_is_no_spool_and_the_log_says_so(caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(None, "u1")
    with caplog.at_level(logging.WARNING, logger="taskhub_unit.agent"):
        assert not spool.open()
    assert "no --data-dir: results are not spooled" in caplog.text
    spool.save(1, 1, "complete", {"result": 1})
    assert spool.pending() == [] and spool.state("ek") == {}


def test_an_unreadable_outcome_is_dropped(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "u1")
    spool.open()
    (tmp_path / ".taskhub-unit" / "u1" / "outcome-3-1.json").write_text("{not json")
    assert spool.pending() == []
    assert not list((tmp_path / ".taskhub-unit" / "u1").glob("outcome-*"))
