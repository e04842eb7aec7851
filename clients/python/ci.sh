#!/usr/bin/env bash
# CI of the producer SDK (taskhub-client): installs it from wheels only into a fresh venv that has
# no Django in it, reports its install size and import time, type-checks it (mypy --strict) and
# runs its tests against a real hub started with the repository's own venv (`make venv`).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"

log() { printf '\n=== %s ===\n' "$*"; }

hub_python="${TASKHUB_HUB_PYTHON:-$root/.venv/bin/python}"
if [ ! -x "$hub_python" ]; then
  make -C "$root" venv
fi

venv="$(mktemp -d "${TMPDIR:-/tmp}/taskhub-client-ci.XXXXXX")"
trap 'rm -rf "$venv"' EXIT
"$python" -m venv "$venv"
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
before="$(du -sk "$site" | cut -f1)"

log "pip install ./clients/python (PIP_ONLY_BINARY=:all:)"
PIP_ONLY_BINARY=:all: "$venv/bin/pip" install -q "$here"
after="$(du -sk "$site" | cut -f1)"
own="$(du -sk "$site/taskhub_client" | cut -f1)"
"$venv/bin/pip" list --format=freeze --exclude pip --exclude setuptools
echo "install size: $((after - before)) KiB added to site-packages (taskhub_client itself: ${own} KiB)"

# Import time: the median of 5 runs of `-X importtime` (the line of the package itself, whose
# cumulative time includes httpx), beside httpx's own for comparison.
import_ms() {
  for _ in 1 2 3 4 5; do
    "$venv/bin/python" -X importtime -c "import $1" 2>&1 | awk -F'|' -v m="$1" '$3 ~ "^ *"m" *$" { print $2 / 1000 }'
  done | sort -n | sed -n 3p
}
echo "import time (median of 5): taskhub_client $(import_ms taskhub_client) ms; httpx alone $(import_ms httpx) ms"
"$venv/bin/python" - <<'EOF'
import sys

import taskhub_client

leaked = sorted(
    name for name in sys.modules if name.split(".")[0] in {"django", "rest_framework", "requests", "opentelemetry"}
)
assert not leaked, f"taskhub_client imported {leaked}"
EOF

log "pip install './clients/python[django]' (the Django Tasks backend)"
before="$(du -sk "$site" | cut -f1)"
PIP_ONLY_BINARY=:all: "$venv/bin/pip" install -q "$here[django]"
after="$(du -sk "$site" | cut -f1)"
"$venv/bin/pip" list --format=freeze --exclude pip --exclude setuptools | grep -i -E '^(django|asgiref|sqlparse)'
echo "install size of the extra: $((after - before)) KiB more (Django, django-tasks and their dependencies)"
echo "import time (median of 5): taskhub_client.django_tasks $(import_ms taskhub_client.django_tasks) ms;" \
  "django_tasks alone $(import_ms django_tasks) ms"

log "pip install './clients/python[otel]' (submit spans with OpenTelemetry)"
before="$(du -sk "$site" | cut -f1)"
PIP_ONLY_BINARY=:all: "$venv/bin/pip" install -q "$here[otel]"
after="$(du -sk "$site" | cut -f1)"
"$venv/bin/pip" list --format=freeze --exclude pip --exclude setuptools | grep -i '^opentelemetry'
echo "install size of the extra: $((after - before)) KiB more (opentelemetry-api, -sdk and their dependencies)"
echo "import time (median of 5): taskhub_client with OpenTelemetry installed $(import_ms taskhub_client) ms" \
  "(it is imported on the first submit, not here); opentelemetry.sdk.trace alone $(import_ms opentelemetry.sdk.trace) ms"

log "taskhub-client: mypy --strict"
PIP_ONLY_BINARY=:all: "$venv/bin/pip" install -q "$here[test]"
(cd "$here" && "$venv/bin/mypy" taskhub_client tests)

log "taskhub-client: tests against a real hub"
cd "$here"
# The hub serves waitFor and GET /api/v1/events (issue 14): their tests must run, never skip.
TASKHUB_SDK_REQUIRE_HUB_FEATURES=1 TASKHUB_HUB_PYTHON="$hub_python" "$venv/bin/python" -m pytest -q "$@"
