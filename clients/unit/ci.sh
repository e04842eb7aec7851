#!/usr/bin/env bash
# CI of the unit SDK (taskhub-unit): installs it from wheels only into a fresh venv that has no Django
# in it, reports its install size and import time, type-checks it (mypy --strict) and runs its tests
# against a real hub started with the repository's own venv (`make venv`).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"

log() { printf '\n=== %s ===\n' "$*"; }

hub_python="${TASKHUB_HUB_PYTHON:-$root/.venv/bin/python}"
if [ ! -x "$hub_python" ]; then
  make -C "$root" venv
fi

venv="$(mktemp -d "${TMPDIR:-/tmp}/taskhub-unit-ci.XXXXXX")"
trap 'rm -rf "$venv"' EXIT
"$python" -m venv "$venv"
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
before="$(du -sk "$site" | cut -f1)"

log "pip install ./clients/unit (PIP_ONLY_BINARY=:all:)"
PIP_ONLY_BINARY=:all: "$venv/bin/pip" install -q "$here"
after="$(du -sk "$site" | cut -f1)"
own="$(du -sk "$site/taskhub_unit" | cut -f1)"
"$venv/bin/pip" list --format=freeze --exclude pip --exclude setuptools
echo "install size: $((after - before)) KiB added to site-packages (taskhub_unit itself: ${own} KiB)"
"$venv/bin/taskhub-unit" --version

# Import time: the median of 5 runs of `-X importtime` (the line of the package itself, whose
# cumulative time includes requests), beside requests' own for comparison.
import_ms() {
  for _ in 1 2 3 4 5; do
    "$venv/bin/python" -X importtime -c "import $1" 2>&1 | awk -F'|' -v m="$1" '$3 ~ "^ *"m" *$" { print $2 / 1000 }'
  done | sort -n | sed -n 3p
}
echo "import time (median of 5): taskhub_unit $(import_ms taskhub_unit) ms; requests alone $(import_ms requests) ms"
"$venv/bin/python" - <<'PY'
import sys

import taskhub_unit

leaked = sorted(name for name in sys.modules if name.split(".")[0] in {"django", "rest_framework", "httpx", "taskhub"})
assert not leaked, f"taskhub_unit imported {leaked}"
PY

log "pip install './clients/unit[django]' (the Django Tasks handler)"
before="$(du -sk "$site" | cut -f1)"
PIP_ONLY_BINARY=:all: "$venv/bin/pip" install -q "$here[django]"
after="$(du -sk "$site" | cut -f1)"
echo "install size of the extra: $((after - before)) KiB more (Django, django-tasks and their dependencies)"

log "taskhub-unit: mypy --strict"
PIP_ONLY_BINARY=:all: "$venv/bin/pip" install -q "$here[test]"
(cd "$here" && "$venv/bin/mypy" taskhub_unit tests)

log "taskhub-unit: tests against a real hub"
cd "$here"
TASKHUB_HUB_PYTHON="$hub_python" "$venv/bin/python" -m pytest -q "$@"
