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

## Generate the OpenAPI schema, failing on any warning.
schema: venv
	@$(PY) manage.py spectacular --fail-on-warn --validate --file var/openapi.yaml

clean:
	rm -rf var logs .pytest_cache .mypy_cache .ruff_cache
