"""The unit SDK's example in docs/clients.md runs as written against a real hub (its address and key
swapped in, `worker.run()` in a thread so the test can stop it)."""

from __future__ import annotations

import re
import sys
import threading
import types

import pytest
import testkit.hub

from conftest import ROOT
from test_worker import done, submit, wait_for

pytestmark = pytest.mark.hub


def test_the_unit_sdk_example_in_the_docs_runs(hub: testkit.hub.Hub) -> None:
    text = (ROOT / "docs" / "clients.md").read_text()
    section = text.split("\n## Unit SDK")[1].split("\n## ")[0]
    [example] = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert "worker.run()" in example
    code = example.replace("http://127.0.0.1:8000", hub.url).replace("worker.run()", "")
    module = types.ModuleType("docs_example")  # dataclasses look their module up in sys.modules
    module.key = hub.key  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    try:
        exec(compile(code, "docs/clients.md", "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    worker = module.worker
    runner = threading.Thread(target=worker.run, daemon=True)
    runner.start()
    try:
        ids = [
            submit(hub, "DATA_PROCESSING", {"inputFile": "a.csv"}),
            submit(hub, "DATA_PROCESSING", {"inputFile": "a.csv", "outputFormat": "xml"}),
            submit(hub, "DATA_PROCESSING", {"outputFormat": "csv"}, maxRetries=2),
        ]
        good, unknown, missing = wait_for(lambda: done(hub, ids), 60, "the example's tasks")
    finally:
        worker.stop()
        runner.join(40)
    assert (good["status"], good["result"]) == ("COMPLETED", {"rows": 3})
    assert (unknown["status"], unknown["error"], unknown["retryCount"]) == ("FAILED", "unknown format", 0)
    assert missing["status"] == "FAILED" and missing["retryCount"] == 0
    assert "config.inputFile: is required" in missing["error"]
