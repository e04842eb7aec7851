"""taskhub settings: one module, every value from the environment (a `.env` file is honoured).

Two shapes share one code path:
- embedded default (no DB_HOST, no REDIS_HOST): SQLite under var/, local-memory cache, Celery on
  kombu's filesystem broker under var/;
- production: MySQL/MariaDB (mysqlclient) + Redis (cache, throttling, Celery broker).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import quote

from django.core.exceptions import ImproperlyConfigured
from dotenv import load_dotenv

from taskhub.env import env_bool, env_choice, env_float, env_int, env_list, env_str, parse_rate

BASE_DIR = Path(__file__).resolve().parent.parent
# Real environment variables win over the file, as twelve-factor tools expect.
load_dotenv(BASE_DIR / ".env", override=False)
# prometheus_client turns on multiprocess mode when this variable merely exists, and an empty one
# (`PROMETHEUS_MULTIPROC_DIR=` as in .env.example) would scatter its files in the current directory.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR", "x").strip():
    del os.environ["PROMETHEUS_MULTIPROC_DIR"]

APP_ENV = env_choice("APP_ENV", "development", ("development", "production", "test"))
PRODUCTION = APP_ENV == "production"
TESTING = "pytest" in sys.modules or APP_ENV == "test"
DEBUG = env_bool("DEBUG", not PRODUCTION and not TESTING)

SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if PRODUCTION:
        raise ImproperlyConfigured("SECRET_KEY must be set when APP_ENV=production")
    SECRET_KEY = "dev-insecure-taskhub-secret-key-change-me-0123456789abcdef"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "" if PRODUCTION else "localhost,127.0.0.1,[::1],testserver")
if PRODUCTION and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS must be set when APP_ENV=production")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

VAR_DIR = Path(env_str("VAR_DIR") or BASE_DIR / "var")
LOG_DIR = Path(env_str("LOG_DIR") or BASE_DIR / "logs")
LOG_LEVEL = env_choice("LOG_LEVEL", "info", ("debug", "info", "warn", "warning", "error", "critical")).upper()
if LOG_LEVEL == "WARN":
    LOG_LEVEL = "WARNING"
LOG_FORMAT = env_choice("LOG_FORMAT", "text", ("text", "json"))

INSTALLED_APPS = [
    "taskhub.console.apps.ConsoleAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "taskhub.apikeys",
    "taskhub.webhooks",
    "units",
    "tasks",
    "taskhub.schedules",
    "taskhub.console",
]

MIDDLEWARE = [
    # First: DEBUG's technical pages only for callers on this machine (taskhub/api/middleware.py).
    "taskhub.api.middleware.LocalDebugMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "taskhub.api.metrics.PrometheusMiddleware",
    "taskhub.api.middleware.AccessLogMiddleware",
    "taskhub.api.middleware.BodyLimitMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
# Secrets never in a technical page, `diffsettings` or a log of settings: besides Django's own
# (KEY, SECRET, PASS, TOKEN...), every URL and LOCATION (they carry Redis and broker passwords).
DEFAULT_EXCEPTION_REPORTER_FILTER = "taskhub.base.secrets.SecretFilter"
if not TESTING:
    # gunicorn serves the admin's and Swagger UI's static files itself: STATIC_ROOT as
    # `collectstatic` filled it (the Docker image does at build time), or the apps' own files under
    # DEBUG. Left out under pytest, where nothing fetches them and STATIC_ROOT is not collected.
    MIDDLEWARE.insert(2, "whitenoise.middleware.WhiteNoiseMiddleware")

ROOT_URLCONF = "taskhub.urls"
WSGI_APPLICATION = "taskhub.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
DB_HOST = env_str("DB_HOST")


def _server_kind() -> str:
    """Which server runs this process, for how long its database connections may live: `runserver`
    (a thread per HTTP connection, unbounded), `asgi` (uvicorn, daphne, hypercorn: Django runs sync
    code in a thread pool, and persistent connections are not safe there), or `bounded` (gunicorn's
    sync/gthread workers, Celery, management commands: a fixed number of threads)."""
    if "runserver" in sys.argv[1:3]:
        return "runserver"
    if any(name in sys.modules for name in ("uvicorn", "daphne", "hypercorn")):
        return "asgi"
    return "bounded"


SERVER_KIND = _server_kind()
# Persistent connections only where the number of threads is bounded; under runserver and ASGI
# servers every request closes its connection (one connection per request in flight, never more).
DB_CONN_MAX_AGE = env_int("DB_CONN_MAX_AGE", 60, minimum=0) if SERVER_KIND == "bounded" else 0
# The fixed thread pool of taskhub.asgi (taskhub.base.syncpool: WEB_THREADS per process) is bounded
# under any server: its threads keep their connections this long.
DB_POOL_CONN_MAX_AGE = env_int("DB_CONN_MAX_AGE", 60, minimum=0)
if DB_HOST:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.mysql",
            "HOST": DB_HOST,
            "PORT": env_int("DB_PORT", 3306, minimum=1, maximum=65535),
            "USER": env_str("DB_USERNAME", "root"),
            "PASSWORD": env_str("DB_PASSWORD"),
            "NAME": env_str("DB_DATABASE", "task_management"),
            "CONN_MAX_AGE": DB_CONN_MAX_AGE,
            "CONN_HEALTH_CHECKS": True,
            "OPTIONS": {
                "charset": "utf8mb4",
                # READ COMMITTED: claims use SKIP LOCKED and compare-and-set updates, and gap
                # locks of REPEATABLE READ would only add deadlocks between claimers.
                "isolation_level": "read committed",
                # index_merge_intersection=off: for `owner_id=? AND status=? ORDER BY id DESC LIMIT n`
                # MariaDB 10.11 intersects task_owner_status_idx with task_status_id_idx and filesorts
                # the whole intersection (~1 s at 1M rows) where task_owner_status_idx alone reads the
                # page in order (tests/test_lists.py EXPLAINs the list queries).
                "init_command": (
                    "SET sql_mode='STRICT_TRANS_TABLES', innodb_lock_wait_timeout=10, "
                    "optimizer_switch='index_merge_intersection=off'"
                ),
                "connect_timeout": env_int("DB_CONNECT_TIMEOUT", 5, minimum=1),
            },
            # DB_TEST_NAME lets parallel test runs on one server keep apart.
            "TEST": {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci", "NAME": env_str("DB_TEST_NAME") or None},
        }
    }
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": env_str("SQLITE_PATH") or VAR_DIR / "taskhub.sqlite3",
            "OPTIONS": {
                # IMMEDIATE takes the write lock at BEGIN: writers are serialised, so the claim's
                # read-then-update cannot interleave with another writer (SQLite has no row locks).
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
                "init_command": ("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;"),
            },
            "TEST": {"NAME": env_str("SQLITE_TEST_PATH") or None},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache, Redis ---------------------------------------------------------------------------
REDIS_HOST = env_str("REDIS_HOST")
REDIS_PORT = env_int("REDIS_PORT", 6379, minimum=1, maximum=65535)
REDIS_PASSWORD = env_str("REDIS_PASSWORD")
REDIS_DB = env_int("REDIS_DB", 0, minimum=0, maximum=15)
if REDIS_HOST:
    _auth = f":{quote(REDIS_PASSWORD, safe='')}@" if REDIS_PASSWORD else ""
    REDIS_URL = f"redis://{_auth}{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env_str("CACHE_KEY_PREFIX", "taskhub"),
            "OPTIONS": {
                "CLIENT_CLASS": "django_redis.client.DefaultClient",
                "SOCKET_CONNECT_TIMEOUT": 2,
                "SOCKET_TIMEOUT": 2,
                # Redis is a cache here: if it is down the API keeps serving (throttling and
                # caching degrade); health/redis reports it.
                "IGNORE_EXCEPTIONS": True,
            },
        }
    }
    DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS = True
else:
    REDIS_URL = ""
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Celery ---------------------------------------------------------------------------------
if REDIS_HOST:
    CELERY_BROKER_URL = env_str("CELERY_BROKER_URL") or REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {}
else:
    # A host named: without one kombu warns, in every process, that it falls back to localhost.
    CELERY_BROKER_URL = env_str("CELERY_BROKER_URL") or "filesystem://localhost/"
    _broker_dir = VAR_DIR / "broker"
    for _sub in ("out", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "out"),
        "data_folder_out": str(_broker_dir / "out"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# --- Scheduling knobs (seconds) ---------------------------------------------------------------
TASK_MAX_RETRY_COUNT = env_int("TASK_MAX_RETRY_COUNT", 3, minimum=0, maximum=100)
TASK_RETRY_BACKOFF_BASE = env_float("TASK_RETRY_BACKOFF_BASE", 10.0, minimum=0.0)
TASK_RETRY_BACKOFF_MAX = env_float("TASK_RETRY_BACKOFF_MAX", 600.0, minimum=0.0)
TASK_MAX_FAILOVER_COUNT = env_int("TASK_MAX_FAILOVER_COUNT", 5, minimum=0, maximum=1000)
UNIT_HEARTBEAT_TIMEOUT = env_float("UNIT_HEARTBEAT_TIMEOUT", 30.0, minimum=0.1)
UNIT_HEARTBEAT_INTERVAL = env_float("UNIT_HEARTBEAT_INTERVAL", max(UNIT_HEARTBEAT_TIMEOUT / 3, 0.1), minimum=0.05)
if UNIT_HEARTBEAT_INTERVAL >= UNIT_HEARTBEAT_TIMEOUT:
    raise ImproperlyConfigured("UNIT_HEARTBEAT_INTERVAL must be smaller than UNIT_HEARTBEAT_TIMEOUT")
SWEEP_INTERVAL = env_float("SWEEP_INTERVAL", 5.0, minimum=0.1)
# The heartbeat interval a unit may use while it holds no tasks and keeps a long-poll claim waiting
# (the held claim keeps it alive: units.idle.HeldClaims stamps it, every UNIT_HEARTBEAT_INTERVAL, while
# the web process serves). 60 s by default: an idle unit sends one request a minute besides its claims
# (six times fewer than at the default interval), a unit that stops waiting falls back to
# UNIT_HEARTBEAT_INTERVAL at once, and what an idle heartbeat carries (no tasks) cannot wait for
# longer; never below UNIT_HEARTBEAT_INTERVAL (at or under it, nothing is lengthened). 0: no
# lengthening and no stamps (docs/scaling.md, "Idle units").
UNIT_IDLE_HEARTBEAT_INTERVAL = env_float(
    "UNIT_IDLE_HEARTBEAT_INTERVAL", max(60.0, UNIT_HEARTBEAT_INTERVAL), minimum=0.0
)
if 0 < UNIT_IDLE_HEARTBEAT_INTERVAL < UNIT_HEARTBEAT_INTERVAL:
    raise ImproperlyConfigured("UNIT_IDLE_HEARTBEAT_INTERVAL must be 0 or at least UNIT_HEARTBEAT_INTERVAL")
# How long the sweeper believes a silence of every unit at once is the hub's own outage (units.hearing):
# a unit silent for UNIT_HEARTBEAT_TIMEOUT + this is failed over even then. 0: never believed.
HUB_OUTAGE_GRACE = env_float("HUB_OUTAGE_GRACE", 10 * UNIT_HEARTBEAT_TIMEOUT, minimum=0.0)
TASK_LOG_RETENTION_DAYS = env_int("TASK_LOG_RETENTION_DAYS", 30, minimum=1)
# The per-minute rollups the console charts (taskhub/jobs/rollups.py): kept this long.
ROLLUP_RETENTION_HOURS = env_int("ROLLUP_RETENTION_HOURS", 48, minimum=1)
# Finished tasks (with history and logs) are deleted after these days (tasks/retention.py)
TASK_RETENTION_DAYS = env_int("TASK_RETENTION_DAYS", 30, minimum=1)
TASK_DEAD_RETENTION_DAYS = env_int("TASK_DEAD_RETENTION_DAYS", 90, minimum=1)
# How often the schedules' beat job looks for due fire times (seconds)
SCHEDULE_TICK = env_float("SCHEDULE_TICK", 1.0, minimum=0.1)
TASK_MAX_LOG_ENTRIES = env_int("TASK_MAX_LOG_ENTRIES", 10_000, minimum=1)
# Log lines stored on all tasks of one API key (purged after TASK_LOG_RETENTION_DAYS): 409 past it.
TASK_LOG_QUOTA_PER_KEY = env_int("TASK_LOG_QUOTA_PER_KEY", 1_000_000, minimum=1)
TASK_BATCH_MAX = env_int("TASK_BATCH_MAX", 100, minimum=1, maximum=1000)  # items per batch request

# --- API ------------------------------------------------------------------------------------
API_MAX_BODY_BYTES = env_int("API_MAX_BODY_BYTES", 1_048_576, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = API_MAX_BODY_BYTES
API_PAGE_SIZE_MAX = env_int("API_PAGE_SIZE_MAX", 100, minimum=1, maximum=1000)
# Page mode counts at most this many matching rows; above it `total` is a lower bound
# (`totalRelation: "gte"`), so a count never reads more than this many index entries.
API_LIST_COUNT_CAP = env_int("API_LIST_COUNT_CAP", 10_000, minimum=1)
# A name search (`search=` with letters) looks at the newest this-many tasks that match the other
# filters: no index answers a substring, so this bounds the rows one search reads.
API_SEARCH_WINDOW = env_int("API_SEARCH_WINDOW", 5_000, minimum=1)
API_THROTTLE_CLIENT = env_str("API_THROTTLE_CLIENT", "6000/min")
API_THROTTLE_UNIT = env_str("API_THROTTLE_UNIT", "6000/min")
API_THROTTLE_ANON = env_str("API_THROTTLE_ANON", "600/min")
# Heartbeats: a bucket of their own, whose window must be shorter than the heartbeat timeout (a
# throttled unit is heard again before it could be failed over). Default: a third of the timeout
# (10 s at the default 30 s), room for 3x the heartbeats an agent sends in it, at least 30.
_HB_WINDOW = max(1, int(UNIT_HEARTBEAT_TIMEOUT // 3))
_HB_DEFAULT = f"{max(30, 3 * int(_HB_WINDOW / UNIT_HEARTBEAT_INTERVAL + 1))}/{_HB_WINDOW}s"
API_THROTTLE_HEARTBEAT = env_str("API_THROTTLE_HEARTBEAT", _HB_DEFAULT)


def _check_rates() -> None:
    for name in ("API_THROTTLE_CLIENT", "API_THROTTLE_UNIT", "API_THROTTLE_ANON", "API_THROTTLE_HEARTBEAT"):
        try:
            parse_rate(globals()[name])
        except ValueError as exc:
            raise ImproperlyConfigured(f"{name}: {exc}") from None
    if API_THROTTLE_HEARTBEAT == _HB_DEFAULT:
        return
    count, window = parse_rate(API_THROTTLE_HEARTBEAT)
    if window is not None and window >= UNIT_HEARTBEAT_TIMEOUT:
        raise ImproperlyConfigured(
            f"API_THROTTLE_HEARTBEAT: its window ({window}s) must be shorter than UNIT_HEARTBEAT_TIMEOUT "
            f"({UNIT_HEARTBEAT_TIMEOUT:g}s), or a throttled unit would be failed over"
        )
    if count is not None and window is not None and count < window / UNIT_HEARTBEAT_INTERVAL + 1:
        raise ImproperlyConfigured(
            f"API_THROTTLE_HEARTBEAT: {count} per {window}s is fewer than a unit heartbeating every "
            f"UNIT_HEARTBEAT_INTERVAL ({UNIT_HEARTBEAT_INTERVAL:g}s) sends"
        )


_check_rates()
METRICS_TOKEN = env_str("METRICS_TOKEN")  # Bearer token /metrics requires (see taskhub/api/metrics.py)

# --- Results that come to the client (waitFor, GET /events, webhooks) ------------------------
# Longest hold of GET /tasks/{id}?waitFor=terminal. A waiter (and an event stream) reads the
# database again when the results doorbell rings for a committed change (taskhub.base.historybell),
# and otherwise every RESULTS_POLL_INTERVAL: the safety net under a lost ring, not the way changes
# are seen. No connection is held in between.
TASK_WAIT_MAX_SECONDS = env_int("TASK_WAIT_MAX_SECONDS", 30, minimum=0, maximum=300)
RESULTS_POLL_INTERVAL = env_float("RESULTS_POLL_INTERVAL", 2.0, minimum=0.01)
EVENTS_HEARTBEAT_SECONDS = env_float("EVENTS_HEARTBEAT_SECONDS", 15.0, minimum=0.05)
# A stream ends after this long (the client resumes with Last-Event-ID), so a proxy or a WSGI
# thread is never held for ever and a revoked key stops receiving.
EVENTS_STREAM_MAX_SECONDS = env_float("EVENTS_STREAM_MAX_SECONDS", 300.0, minimum=0.05)
# A missing history id below a visible one may belong to a transaction not committed yet: a stream
# holds back events after it until it appears or the row after it is this old (then it rolled back).
EVENTS_GAP_GRACE_SECONDS = env_float("EVENTS_GAP_GRACE_SECONDS", 5.0, minimum=0.0)
WEBHOOK_MAX_ATTEMPTS = env_int("WEBHOOK_MAX_ATTEMPTS", 8, minimum=1, maximum=100)
WEBHOOK_BACKOFF_BASE = env_float("WEBHOOK_BACKOFF_BASE", 5.0, minimum=0.0)
WEBHOOK_BACKOFF_MAX = env_float("WEBHOOK_BACKOFF_MAX", 3600.0, minimum=0.0)
WEBHOOK_TIMEOUT = env_float("WEBHOOK_TIMEOUT", 5.0, minimum=0.1)
WEBHOOK_CONCURRENCY = env_int("WEBHOOK_CONCURRENCY", 8, minimum=1, maximum=64)
WEBHOOK_BATCH = env_int("WEBHOOK_BATCH", 100, minimum=1, maximum=1000)
WEBHOOK_POLL_INTERVAL = env_float("WEBHOOK_POLL_INTERVAL", 5.0, minimum=0.1)
# Loopback, private, link-local and other non-public addresses are refused as webhook targets (SSRF)
# unless this is true (tests, a hub and its receivers on one private network).
WEBHOOK_ALLOW_PRIVATE = env_bool("WEBHOOK_ALLOW_PRIVATE", False)
# How long a node keeps its list of active subscriptions before reading it again: a new or changed
# subscription takes effect on other nodes within this many seconds (at once on the node that made it).
# (Under pytest the list is read once per test, which clears it: query counts never depend on timing.)
WEBHOOK_SUBSCRIPTIONS_TTL = env_float("WEBHOOK_SUBSCRIPTIONS_TTL", 3600.0 if TESTING else 2.0, minimum=0.0)
WEBHOOK_KICK = env_bool("WEBHOOK_KICK", True)  # enqueue a delivery run at each commit that wrote outbox rows

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "taskhub.api.auth.BearerAuthentication",
        "taskhub.api.auth.OperatorSessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["taskhub.api.permissions.HasScope"],
    "DEFAULT_PARSER_CLASSES": ["taskhub.api.parsers.StrictJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "taskhub.api.schema.AutoSchema",
    "EXCEPTION_HANDLER": "taskhub.api.errors.exception_handler",
    "DEFAULT_THROTTLE_CLASSES": ["taskhub.api.throttling.PrincipalRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "client": API_THROTTLE_CLIENT,
        "unit": API_THROTTLE_UNIT,
        "anon": API_THROTTLE_ANON,
        "heartbeat": API_THROTTLE_HEARTBEAT,
    },
    "UNAUTHENTICATED_USER": None,
    "COERCE_DECIMAL_TO_STRING": False,
    "DATETIME_FORMAT": "iso-8601",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "taskhub API",
    "DESCRIPTION": (
        "Distributed task management hub: create tasks, register execution units, claim, "
        "report and watch. Authenticate with `Authorization: Bearer <api key or unit token>`."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "TaskStatusEnum": "tasks.states.TaskStatus",
        "UnitStatusEnum": "units.states.UnitStatus",
        "LogLevelEnum": "tasks.models.LogLevel",
    },
    "DISABLE_ERRORS_AND_WARNINGS": False,
}

# --- Auth, security -------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
if TESTING:
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
if PRODUCTION:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
FORMAT_MODULE_PATH = ["taskhub.formats"]  # times with seconds, one format (taskhub/formats/en)
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT") or BASE_DIR / "var" / "static")
# Under DEBUG (`make run`) WhiteNoise serves the apps' static files as they are, no collectstatic.
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG

PORT = env_int("PORT", 8000, minimum=1, maximum=65535)
# Threads per ASGI web process for sync views and the database calls of async views
# (taskhub.base.syncpool): also the most database connections one web process holds.
WEB_THREADS = env_int("WEB_THREADS", env_int("GUNICORN_THREADS", 4, minimum=1, maximum=256), minimum=1, maximum=256)
# The longest a long-poll claim waits, whatever its `waitSeconds` (at most 30) asks; the reply's
# `waitSeconds` says what was applied.
CLAIM_WAIT_MAX = env_float("CLAIM_WAIT_MAX", 30.0, minimum=0.0)

# --- Logging --------------------------------------------------------------------------------
LOG_DIR.mkdir(parents=True, exist_ok=True)
_formatter = "json" if LOG_FORMAT == "json" else "text"
_max_bytes = env_int("LOG_MAX_BYTES", 10 * 1024 * 1024, minimum=1024)
_backups = env_int("LOG_BACKUP_COUNT", 5, minimum=0)


# size: the app rotates its own files (one process, e.g. `make run`); external: several processes
# write the same files (gunicorn workers), so logrotate rotates them and we reopen (WatchedFileHandler).
LOG_ROTATION = env_choice("LOG_ROTATION", "size", ("size", "external"))


def _file_handler(filename: str, level: str) -> dict[str, object]:
    if LOG_ROTATION == "external":
        return {
            "class": "logging.handlers.WatchedFileHandler",
            "filename": str(LOG_DIR / filename),
            "encoding": "utf-8",
            "formatter": _formatter,
            "level": level,
            "delay": True,
        }
    return {
        "class": "logging.handlers.RotatingFileHandler",
        "filename": str(LOG_DIR / filename),
        "maxBytes": _max_bytes,
        "backupCount": _backups,
        "encoding": "utf-8",
        "formatter": _formatter,
        "level": level,
        "delay": True,
    }


LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "taskhub.logging.JsonFormatter"},
    },
    "handlers": {
        "null": {"class": "logging.NullHandler"},
        "console": {"class": "logging.StreamHandler", "formatter": _formatter},
        "app": _file_handler("app.log", LOG_LEVEL),
        "error": _file_handler("error.log", "ERROR"),
        "access": _file_handler("access.log", "INFO"),
    },
    "root": {"handlers": ["app", "error"] + ([] if TESTING else ["console"]), "level": LOG_LEVEL},
    "loggers": {
        # Our own loggers keep LOG_LEVEL where the root is quieter: `make run` starts Celery at WARNING,
        # and a job that changed something still says so (taskhub/jobs/runner.py).
        "taskhub": {"level": LOG_LEVEL},
        "taskhub.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        # One line per 4xx/5xx on the console: django.request's, through the root. Django's own console
        # handler (DEBUG only) would print a second copy, and runserver's request line a third
        # (access.log has every request).
        "django": {"handlers": []},
        "django.server": {"handlers": ["null"], "propagate": False},
    },
}
