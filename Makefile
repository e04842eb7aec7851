# taskhub — `make run` starts the whole hub; `make test` passes the tests. Both set themselves up.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PORT   ?= 8000
export PORT

.PHONY: run test lint format venv migrate schema clean demo bench bench-smoke bench-scale chaos
# One pip at a time: the install steps below share one virtualenv.
.NOTPARALLEL:

# --- Installing: one stamp per level, each redone when pyproject.toml changes ---------------------
#   runtime  make run, make demo, make schema         wheels only: no compiler needed
#   test     make test                                (also satisfies runtime)
#   dev      make lint, make format, make venv        test + ruff, mypy, stubs, py-spy (satisfies both)
#   mysql    added wherever MySQL/MariaDB is configured: DB_HOST set (environment, command line or .env)
#            mysqlclient is built from source: it needs a C compiler, pkg-config and libmariadb-dev.
ifeq ($(origin DB_HOST),undefined)
DB_HOST_CONFIGURED := $(shell sed -n -E "s/^[[:space:]]*(export[[:space:]]+)?DB_HOST[[:space:]]*=[[:space:]]*[\"']?([^\"'[:space:]]+).*/\2/p" .env 2>/dev/null)
else
DB_HOST_CONFIGURED := $(DB_HOST)
endif
MYSQL   := $(if $(strip $(DB_HOST_CONFIGURED)),$(VENV)/.installed-mysql)
RUNTIME := $(VENV)/.installed-runtime $(MYSQL)
TESTING := $(VENV)/.installed-test $(MYSQL)
DEV     := $(VENV)/.installed-dev $(MYSQL)

$(PY):
	@echo "creating $(VENV) ($(PYTHON) -m venv) and upgrading pip ..."
	@$(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip

# Each level installs the project (editable) with its extra, then marks the levels it satisfies.
$(VENV)/.installed-runtime: EXTRA :=
$(VENV)/.installed-runtime: WHAT  := runtime dependencies
$(VENV)/.installed-runtime: MARKS := runtime
$(VENV)/.installed-test:    EXTRA := [test]
$(VENV)/.installed-test:    WHAT  := test dependencies (pytest, Playwright, schemathesis, ...)
$(VENV)/.installed-test:    MARKS := runtime test
$(VENV)/.installed-dev:     EXTRA := [dev]
$(VENV)/.installed-dev:     WHAT  := development dependencies (tests + ruff, mypy, stubs, py-spy)
$(VENV)/.installed-dev:     MARKS := runtime test dev
$(VENV)/.installed-mysql:   EXTRA := [mysql]
$(VENV)/.installed-mysql:   WHAT  := the MySQL/MariaDB driver (mysqlclient: builds with gcc, pkg-config, libmariadb-dev)
$(VENV)/.installed-mysql:   MARKS := runtime mysql
# The unit SDK (clients/unit: taskhub_unit and the taskhub-unit script, which make demo, the tests, the
# benchmarks and the chaos run start) is a distribution of its own, installed beside the hub, editable,
# and after it: upgrading a venv from the hub that still shipped the script would remove the script if
# both were installed by one pip command (pip uninstalls the old hub's files after installing the unit).
$(VENV)/.installed-runtime $(VENV)/.installed-test $(VENV)/.installed-dev $(VENV)/.installed-mysql: pyproject.toml clients/unit/pyproject.toml | $(PY)
	@echo "installing $(WHAT) into $(VENV) ..."
	@started=$$(date +%s); $(PY) -m pip install -q -e '.$(EXTRA)' && $(PY) -m pip install -q -e ./clients/unit \
	  && for mark in $(MARKS); do touch $(VENV)/.installed-$$mark; done \
	  && echo "  done in $$(( $$(date +%s) - started ))s"

## The full development environment: runtime, test and lint dependencies (+ mysqlclient with DB_HOST).
venv: $(DEV)

migrate: $(RUNTIME)
	@$(PY) manage.py migrate --noinput -v0
	@$(PY) manage.py setup_beat

## Start web + Celery worker + beat on the configured backend (embedded default: SQLite). Ctrl-C stops all.
run: migrate
	@$(PY) manage.py runhub --port $(PORT)

## A live demo on a throwaway hub (temp dir, SQLite): two units, 50 tasks, one unit killed halfway.
demo: $(VENV)/.installed-runtime
	@$(PY) scripts/demo.py $(DEMO_ARGS)

## Run the test suite (SQLite by default; set DB_HOST/REDIS_HOST for MariaDB + Redis).
test: $(TESTING)
	@$(PY) -m pytest $(PYTEST_ARGS)

lint: $(DEV)
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .
	@$(VENV)/bin/mypy .
	@$(VENV)/bin/lint-imports --no-cache

format: $(DEV)
	@$(VENV)/bin/ruff format .
	@$(VENV)/bin/ruff check --fix .

## Benchmarks on MariaDB + Redis (own database and Redis DB; see BENCHMARKS.md). One table, JSON in
## bench/results/. BENCH_ARGS passes flags, e.g. BENCH_ARGS="--only claim --workers 3 --threads 1".
bench: $(VENV)/.installed-dev $(VENV)/.installed-mysql
	@bash .ci/services.sh >/dev/null
	@$(PY) -m bench --profile full $(BENCH_ARGS)

## The harness at tiny sizes (CI keeps it working): asserts only its honesty checks, never a timing.
bench-smoke: $(VENV)/.installed-dev $(VENV)/.installed-mysql
	@bash .ci/services.sh >/dev/null
	@$(PY) -m bench --profile smoke $(BENCH_ARGS)

## Lists at 1,000,000 tasks, the sweeper at 10,000 units / 100,000 RUNNING tasks, memory (takes longer).
bench-scale: $(VENV)/.installed-dev $(VENV)/.installed-mysql
	@bash .ci/services.sh >/dev/null
	@$(PY) -m bench --profile scale $(BENCH_ARGS)

## Chaos run on MariaDB + Redis (own database taskhub_chaos, Redis DB 5): a real hub, taskhub-unit
## processes and faults on a fixed seed, then I1-I7 from the database (docs/reliability.md). It restarts
## MariaDB and Redis; CHAOS_ARGS passes flags, e.g. CHAOS_ARGS="--no-service-restarts --per-kind 3".
chaos: $(VENV)/.installed-test $(VENV)/.installed-mysql
	@bash .ci/services.sh >/dev/null
	@$(PY) -m chaos $(CHAOS_ARGS)

## Generate the OpenAPI schema, failing on any warning.
schema: $(RUNTIME)
	@$(PY) manage.py spectacular --fail-on-warn --validate --file var/openapi.yaml

clean:
	rm -rf var logs .pytest_cache .mypy_cache .ruff_cache
