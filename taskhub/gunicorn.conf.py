"""gunicorn settings for taskhub: `gunicorn --config taskhub/gunicorn.conf.py taskhub.wsgi:application`.

Used by the Docker image, the systemd unit in docs/deployment.md and the benchmarks. Every knob comes
from the environment (a `.env` file beside manage.py is honoured, as in Django's settings: gunicorn
reads this file before Django starts, so it loads `.env` itself). A bad value stops gunicorn with a
message naming the variable.

    WEB_CONCURRENCY      worker processes (default 2; about 2 x CPU cores is a common start)
    WEB_WORKER           "asgi" (default): uvicorn workers serving taskhub.asgi (long-poll claims wait in
                         the event loop; sync views run on WEB_THREADS threads per process);
                         "wsgi": the gthread worker serving taskhub.wsgi (no long-poll: waits hold a thread)
    GUNICORN_THREADS     threads per worker (default 4): gthread's threads, or WEB_THREADS' default
    HOST, PORT           listen address (default 127.0.0.1:8000; the Docker image sets HOST=0.0.0.0)
    GUNICORN_ACCESS_LOG  "-" stdout (default), "off" none, or a file path
    GUNICORN_TIMEOUT     seconds a silent worker process gets before it is replaced (default 30)
"""

from __future__ import annotations

import os
from pathlib import Path

from dotenv import load_dotenv

_BASE_DIR = Path(__file__).resolve().parent.parent
load_dotenv(_BASE_DIR / ".env", override=False)


def _int(name: str, default: int, minimum: int, maximum: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise ValueError(f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def _access_log(raw: str) -> str | None:
    value = raw.strip()
    if value.lower() in ("off", "none", "false", "0"):
        return None
    return value or "-"


def _bind(host: str, port: int) -> str:
    host = host.strip() or "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address such as ::
    return f"{host}:{port}"


_web_worker = os.environ.get("WEB_WORKER", "").strip().lower() or "asgi"
if _web_worker not in ("asgi", "wsgi"):
    raise ValueError(f"WEB_WORKER must be asgi or wsgi, got {_web_worker!r}")
wsgi_app = "taskhub.asgi:application" if _web_worker == "asgi" else "taskhub.wsgi:application"
bind = [_bind(os.environ.get("HOST", ""), _int("PORT", 8000, 1, 65535))]
workers = _int("WEB_CONCURRENCY", 2, 1, 256)
threads = _int("GUNICORN_THREADS", 4, 1, 256)
_wsgi_class = "gthread" if threads > 1 else "sync"
worker_class = "taskhub.uvicorn_worker.Worker" if _web_worker == "asgi" else _wsgi_class
timeout = _int("GUNICORN_TIMEOUT", 30, 1, 3600)
# Matches runhub: long enough for in-flight claims and reports to finish on SIGTERM.
graceful_timeout = 10
# Seconds an idle keep-alive connection stays open (only the gthread worker keeps them).
keepalive = 5

# The app writes its own access line (with the API key or unit behind the request) to
# logs/access.log; gunicorn's line (client address, bytes, user agent, duration in microseconds)
# goes to stdout, which is what containers and journald collect. Do not point both at one file.
accesslog = _access_log(os.environ.get("GUNICORN_ACCESS_LOG", "-"))
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(D)s'
errorlog = "-"
_log_level = os.environ.get("LOG_LEVEL", "").strip().lower() or "info"
loglevel = "warning" if _log_level == "warn" else _log_level

# Worker heartbeat files on an overlay filesystem can stall workers; /dev/shm is memory-backed.
if Path("/dev/shm").is_dir():
    worker_tmp_dir = "/dev/shm"

# Recent gunicorn versions open a control socket under $HOME by default; the image's HOME is not
# writable, and two instances run by one user would share the path. Signals (HUP, TERM, TTIN/TTOU) are enough.
control_socket_disable = True
