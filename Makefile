# taskhub — `make run` starts the whole hub; `make test` passes the tests. Both set themselves up.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PORT   ?= 8000
export PORT

.PHONY: run test lint format venv migrate schema clean demo bench bench-smoke bench-scale chaos

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed

migrate: venv
	@$(PY) manage.py migrate --noinput -v0
	@$(PY) manage.py setup_beat

## Start web + Celery worker + beat on the configured backend (embedded default: SQLite). Ctrl-C stops all.
run: migrate
	@$(PY) manage.py runhub --port $(PORT)

## A live demo on a throwaway hub (temp dir, SQLite): two units, 50 tasks, one unit killed halfway.
demo: venv
	@$(PY) scripts/demo.py

## Run the test suite (SQLite by default; set DB_HOST/REDIS_HOST for MariaDB + Redis).
test: venv
	@$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .
	@$(VENV)/bin/mypy .

format: venv
	@$(VENV)/bin/ruff format .
	@$(VENV)/bin/ruff check --fix .

## Benchmarks on MariaDB + Redis (own database and Redis DB; see BENCHMARKS.md). One table, JSON in
## bench/results/. BENCH_ARGS passes flags, e.g. BENCH_ARGS="--only claim --workers 3 --threads 1".
bench: venv
	@bash .ci/services.sh >/dev/null
	@$(PY) -m bench --profile full $(BENCH_ARGS)

## The harness at tiny sizes (CI keeps it working): asserts only its honesty checks, never a timing.
bench-smoke: venv
	@bash .ci/services.sh >/dev/null
	@$(PY) -m bench --profile smoke $(BENCH_ARGS)

## Lists at 1,000,000 tasks, the sweeper at 10,000 units / 100,000 RUNNING tasks, memory (takes longer).
bench-scale: venv
	@bash .ci/services.sh >/dev/null
	@$(PY) -m bench --profile scale $(BENCH_ARGS)

## Chaos run on MariaDB + Redis (own database taskhub_chaos, Redis DB 5): a real hub, taskhub-unit
## processes and faults on a fixed seed, then I1-I7 from the database (docs/reliability.md). It restarts
## MariaDB and Redis; CHAOS_ARGS passes flags, e.g. CHAOS_ARGS="--no-service-restarts --per-kind 3".
chaos: venv
	@bash .ci/services.sh >/dev/null
	@$(PY) -m chaos $(CHAOS_ARGS)

## Generate the OpenAPI schema, failing on any warning.
schema: venv
	@$(PY) manage.py spectacular --fail-on-warn --validate --file var/openapi.yaml

clean:
	rm -rf var logs .pytest_cache .mypy_cache .ruff_cache
