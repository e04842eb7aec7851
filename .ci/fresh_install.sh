#!/usr/bin/env bash
# CI: a newcomer's first commands on a fresh machine, from wheels only (PIP_ONLY_BINARY=:all:
# refuses any source build, so they could not need a compiler or a -dev package):
#   1. the tree copied into a temporary directory: the files git tracks and the untracked ones it
#      does not ignore, as they are in the working tree. On CI's clean checkout that is exactly a
#      clone; run by hand it also holds the uncommitted edits that the rest of .ci/run tests (a clone
#      would not), and never .venv, var/, logs/ or .env.
#   2. `make run` on the embedded default (no DB_HOST, no REDIS_HOST) until GET /api/v1/health
#      answers 200, then Ctrl-C as a terminal sends it; it must print "taskhub stopped", no ERROR
#      and no traceback, and leave nothing listening or running. mysqlclient must not be installed.
#   3. the `make test` install step and one test module; `make run`'s stamp stays valid after it.
# Every phase is timed (with a warm pip cache the whole step takes about a minute or two).
set -euo pipefail
cd "$(dirname "$0")/.."

step_started=$(date +%s)
phase_started=$step_started
phase() {
  local now
  now=$(date +%s)
  printf '  %-58s %4ss\n' "$1" "$((now - phase_started))"
  phase_started=$now
}
fail() {
  printf 'fresh install: %s\n' "$1" >&2
  if [ -n "${2:-}" ] && [ -f "$2" ]; then
    printf -- '--- %s (last 60 lines)\n' "$2" >&2
    tail -n 60 "$2" >&2
  fi
  exit 1
}

work=$(mktemp -d "${TMPDIR:-/tmp}/taskhub-fresh-XXXXXX")
tree="$work/taskhub"
make_pid=""
cleanup() {
  if [ -n "$make_pid" ] && kill -0 "$make_pid" 2>/dev/null; then
    kill -KILL -- "-$make_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

mkdir "$tree"
git ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' file; do [ -e "$file" ] && printf '%s\0' "$file"; done \
  | tar --null --files-from=- -cf - | tar -xf - -C "$tree"
phase "copied the tree to $tree"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# What a fresh machine has: no service configured, no compiler allowed.
clean_env=(env -u DB_HOST -u REDIS_HOST -u CELERY_BROKER_URL -u VIRTUAL_ENV PIP_ONLY_BINARY=:all:)

health() {
  python3 - "$port" <<'PY'
import sys, urllib.request
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/api/v1/health", timeout=2) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError:
    sys.exit(1)
PY
}
listening() {
  python3 - "$port" <<'PY'
import socket, sys
with socket.socket() as s:
    sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)
PY
}

# A session of its own, as a terminal gives it: Ctrl-C goes to its process group (make and runhub).
run_log="$work/make-run.log"
setsid "${clean_env[@]}" make --no-print-directory -C "$tree" run PORT="$port" >"$run_log" 2>&1 &
make_pid=$!
deadline=$(($(date +%s) + 600))
until health; do
  kill -0 "$make_pid" 2>/dev/null || fail "make run exited before /api/v1/health answered" "$run_log"
  [ "$(date +%s)" -lt "$deadline" ] || fail "/api/v1/health did not answer within 600s" "$run_log"
  sleep 1
done
phase "make run: install, migrate, start; /api/v1/health is 200"
for _ in $(seq 1 60); do grep -q "taskhub is ready" "$run_log" && break; sleep 1; done
grep -q "taskhub is ready" "$run_log" || fail "make run never printed 'taskhub is ready'" "$run_log"
phase "make run: worker and beat up ('taskhub is ready')"

kill -INT -- "-$make_pid"
code=0
wait "$make_pid" || code=$?
make_pid=""
phase "make run: stopped by Ctrl-C (make's status $code)"
grep -q "^taskhub stopped$" "$run_log" || fail "no 'taskhub stopped' line after Ctrl-C" "$run_log"
if grep -nE "ERROR|Traceback" "$run_log"; then fail "ERROR or traceback lines in make run's output" "$run_log"; fi
if listening; then fail "port $port is still taken after Ctrl-C" "$run_log"; fi
left=()
for proc in /proc/[0-9]*; do
  case "$(readlink "$proc/cwd" 2>/dev/null)" in "$tree" | "$tree"/*) left+=("${proc#/proc/}") ;; esac
done
[ ${#left[@]} -eq 0 ] || fail "processes left running in the tree: ${left[*]}" "$run_log"
for phrase in "creating .venv" "installing runtime dependencies"; do
  grep -q "$phrase" "$run_log" || fail "make run did not say '$phrase'" "$run_log"
done
if grep -nE '^\s*!!\s*$|Deprecat|BuildBackendWarning' "$run_log"; then
  fail "the install printed deprecation warnings" "$run_log"
fi
if "$tree/.venv/bin/python" -c 'import MySQLdb' 2>/dev/null; then
  fail "make run installed mysqlclient without DB_HOST" "$run_log"
fi

test_log="$work/make-test.log"
"${clean_env[@]}" make --no-print-directory -C "$tree" test PYTEST_ARGS="tests/test_seed_examples.py tests/test_entry_points.py -q" \
  >"$test_log" 2>&1 || fail "make test failed" "$test_log"
phase "make test: install the test dependencies, run 2 modules"
grep -q "installing test dependencies" "$test_log" || fail "make test did not say what it installs" "$test_log"
"${clean_env[@]}" make --no-print-directory -C "$tree" --question .venv/.installed-runtime \
  || fail "make run would reinstall after make test"
grep -hE '^(creating|installing|  done in)' "$run_log" "$test_log" | sed 's/^/    /'
grep -E '^[0-9]+ passed' "$test_log" | sed 's/^/    pytest: /'
printf 'fresh install: passed in %ss (make run from wheels only, Ctrl-C, make test)\n' "$(($(date +%s) - step_started))"
