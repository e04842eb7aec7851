#!/usr/bin/env bash
# CI of one SDK under clients/ (`bash clients/ci.sh clients/python` for taskhub-client,
# `bash clients/ci.sh clients/unit` for taskhub-unit; further arguments go to pytest): installs it
# from wheels only into a fresh venv that has no Django in it, reports its install size and import
# time (and its extras'), checks what importing it loads, type-checks it (mypy --strict) and runs
# its tests against a real hub started with the repository's own venv (`make venv`).
# What differs per SDK is in <dir>/ci.conf, sourced here: dist (the distribution's name), package
# (its import name), peer (the HTTP library its import time is compared with), leaks (top-level
# modules `import <package>` must not load), test_env (VAR=value pairs for its tests) and the
# functions installed (after the plain install) and extras (install_extra and import_ms below).
set -euo pipefail
if [ $# -lt 1 ] || [ ! -f "$1/ci.conf" ]; then
  echo "usage: $0 <sdk dir with a ci.conf> [pytest args]" >&2
  exit 2
fi
here="$(cd "$1" && pwd)"
shift
root="$(cd "$(dirname "$0")/.." && pwd)"
rel="${here#"$root"/}"
python="${PYTHON:-python3}"

log() { printf '\n=== %s ===\n' "$*"; }

# shellcheck source=/dev/null
source "$here/ci.conf"

hub_python="${TASKHUB_HUB_PYTHON:-$root/.venv/bin/python}"
if [ ! -x "$hub_python" ]; then
  make -C "$root" venv
fi

venv="$(mktemp -d "${TMPDIR:-/tmp}/$dist-ci.XXXXXX")"
trap 'rm -rf "$venv"' EXIT
"$python" -m venv "$venv"
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
before="$(du -sk "$site" | cut -f1)"

log "pip install ./$rel (PIP_ONLY_BINARY=:all:)"
PIP_ONLY_BINARY=:all: "$venv/bin/pip" install -q "$here"
after="$(du -sk "$site" | cut -f1)"
own="$(du -sk "$site/$package" | cut -f1)"
"$venv/bin/pip" list --format=freeze --exclude pip --exclude setuptools
echo "install size: $((after - before)) KiB added to site-packages ($package itself: ${own} KiB)"
installed

# Import time: the median of 5 runs of `-X importtime` (the line of the module itself, whose
# cumulative time includes what it imports, e.g. the HTTP library `peer`).
import_ms() {
  for _ in 1 2 3 4 5; do
    "$venv/bin/python" -X importtime -c "import $1" 2>&1 | awk -F'|' -v m="$1" '$3 ~ "^ *"m" *$" { print $2 / 1000 }'
  done | sort -n | sed -n 3p
}
echo "import time (median of 5): $package $(import_ms "$package") ms; $peer alone $(import_ms "$peer") ms"
# shellcheck disable=SC2086  # leaks: one argument per module
"$venv/bin/python" - "$package" $leaks <<'PY'
import importlib
import sys

package, *forbidden = sys.argv[1:]
importlib.import_module(package)
leaked = sorted(name for name in sys.modules if name.split(".")[0] in set(forbidden))
assert not leaked, f"{package} imported {leaked}"
PY

# install_extra <extra> <what it is for> <what it adds> [pip list pattern]: installs <dir>[extra]
# and prints the size it adds (and the installed packages matching the pattern).
install_extra() {
  log "pip install './$rel[$1]' ($2)"
  local start end
  start="$(du -sk "$site" | cut -f1)"
  PIP_ONLY_BINARY=:all: "$venv/bin/pip" install -q "$here[$1]"
  end="$(du -sk "$site" | cut -f1)"
  if [ -n "${4:-}" ]; then
    "$venv/bin/pip" list --format=freeze --exclude pip --exclude setuptools | grep -i -E "$4"
  fi
  echo "install size of the extra: $((end - start)) KiB more ($3)"
}
extras

log "$dist: mypy --strict"
PIP_ONLY_BINARY=:all: "$venv/bin/pip" install -q "$here[test]"
(cd "$here" && "$venv/bin/mypy" "$package" tests)

log "$dist: tests against a real hub"
cd "$here"
# shellcheck disable=SC2086  # test_env: one argument per VAR=value
env $test_env TASKHUB_HUB_PYTHON="$hub_python" "$venv/bin/python" -m pytest -q "$@"
