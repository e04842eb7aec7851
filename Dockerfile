# taskhub image. One image, several roles (see docker-compose.yml):
#   web (default)  gunicorn --config taskhub/gunicorn.conf.py (uvicorn workers on taskhub.asgi)
#   worker         celery -A taskhub worker
#   beat           celery -A taskhub beat --scheduler django_celery_beat.schedulers:DatabaseScheduler
#   one-shot       python manage.py migrate / setup_beat / createsuperuser / create_api_key ...
# Build: docker build -t taskhub .      Runs as an unprivileged user; APP_ENV=production by default,
# so SECRET_KEY and ALLOWED_HOSTS must be given at run time.

# --- build stage: compilers and headers for mysqlclient, dependencies into /opt/venv ---------------
FROM python:3.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The same packages CI installs to build mysqlclient (.ci/run). Debian versions are not pinned: the
# base image tag fixes the release, and security updates should come in on rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential pkg-config libmariadb-dev \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /build
# Only pyproject.toml: this layer is rebuilt when dependencies change, not on every code change.
# The dependencies (plus the `mysql` extra) are installed, not the project itself: the app runs from
# /app, where settings find templates/ and the rest beside manage.py.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['mysql']))" > requirements.txt \
    && pip install --requirement requirements.txt
# The unit SDK (clients/unit: taskhub_unit and the `taskhub-unit` command) is a distribution of its
# own: installed whole (it is small), so `docker compose run web taskhub-unit ...` runs a unit.
COPY clients/unit ./clients/unit
RUN pip install ./clients/unit

# --- runtime stage: the MariaDB client library, no compilers ------------------------------------
FROM python:3.11-slim-bookworm AS runtime

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libmariadb3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 taskhub \
    && useradd --system --uid 10001 --gid taskhub --home-dir /app --no-create-home --shell /usr/sbin/nologin taskhub

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    APP_ENV=production \
    HOST=0.0.0.0 \
    PORT=8000

COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY . .

# Static files are collected into var/static at build time (WhiteNoise serves them). The values
# below exist only for this command: production settings refuse to load without them, and
# collectstatic uses neither. Whatever the settings created under var/ (broker folders) is dropped;
# the app's bytecode is compiled now (the app user cannot write it later); var/ and logs/ belong to
# the app user, the code and the static files stay root's (read-only).
RUN APP_ENV=production ALLOWED_HOSTS=localhost \
    SECRET_KEY=build-time-only-collectstatic-does-not-use-it-0123456789abcdef \
    python manage.py collectstatic --noinput -v0 \
    && find var -mindepth 1 -maxdepth 1 ! -name static -exec rm -rf {} + \
    && python -m compileall -q manage.py taskhub tasks units \
    && mkdir -p logs var/metrics \
    && chown taskhub:taskhub var var/metrics logs

# prometheus_client's multiprocess mode: every process of the container (gunicorn workers, or
# Celery's) writes its counters here and a scrape of any gunicorn worker sums them. One directory
# per container: PIDs of different containers overlap, so it must never be shared between them.
ENV PROMETHEUS_MULTIPROC_DIR=/app/var/metrics

USER 10001:10001
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "docker/healthcheck.py"]

CMD ["gunicorn", "--config", "taskhub/gunicorn.conf.py"]
