"""`make demo` (scripts/demo.py) end to end, on a few tasks: it passes, and every path it prints
exists once it has exited, unless the line says the path is temporary."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.hub import ROOT, SCRUBBED_PREFIXES

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("keep", [False, True], ids=["default", "keep"])
def test_demo_passes_and_prints_only_paths_that_exist_after_it(tmp_path: Path, keep: bool) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED_PREFIXES)} | {"TMPDIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "scripts/demo.py", "--tasks", "4", *(["--keep"] if keep else [])],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    printed = [
        (line, Path(path)) for line in done.stdout.splitlines() for path in re.findall(r"(/\S*taskhub-demo-\w+)", line)
    ]
    assert printed, done.stdout
    for line, path in printed:
        assert path.exists() or "deleted at exit" in line, line
    files = next(line for line in done.stdout.splitlines() if line.strip().startswith("files"))
    if keep:
        workdir = printed[0][1]
        assert str(workdir) in files and (workdir / "hub.log").exists() and (workdir / "demo.sqlite3").exists()
    else:
        assert "deleted at exit" in files and "--keep" in files
        assert list(tmp_path.glob("taskhub-demo-*")) == []
