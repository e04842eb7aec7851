"""The examples of docs/clients.md run as written against the real hub (its address swapped in),
with a unit completing their DATA_PROCESSING tasks."""

from __future__ import annotations

import re
import threading

import pytest

from hub import ROOT, Hub

pytestmark = pytest.mark.hub


def test_the_producer_sdk_example_runs(hub: Hub, capsys: pytest.CaptureFixture[str]) -> None:
    text = (ROOT / "docs" / "clients.md").read_text()
    producer = text.split("\n## ")[1]  # the producer SDK's section (the Django one is tested end to end)
    [example] = re.findall(r"```python\n(.*?)```", producer, flags=re.DOTALL)
    unit = hub.unit("docs-unit", "DATA_PROCESSING")
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            for task in unit.claim(10):
                unit.report(task, "complete", result={"ok": True})
            stop.wait(0.1)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
        exec(compile(example.replace("http://127.0.0.1:8000", hub.url), "docs/clients.md", "exec"), {"key": hub.key})
    finally:
        stop.set()
        worker.join(10)
    completed, refused, completed_async = capsys.readouterr().out.splitlines()
    assert (completed, completed_async) == ("COMPLETED {'ok': True}", "COMPLETED")
    assert refused.startswith("illegal_transition ") and refused.endswith(" ()"), refused
