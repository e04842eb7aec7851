"""gunicorn's worker class for taskhub.asgi: uvicorn (uvloop and httptools when installed), with the
limits a node facing many idle units and slow clients needs. Named in taskhub/gunicorn.conf.py and
used by `manage.py runhub`."""

from __future__ import annotations

import os

from uvicorn_worker import UvicornWorker


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


class Worker(UvicornWorker):
    CONFIG_KWARGS = {
        "loop": "auto",
        "http": "auto",
        "lifespan": "off",
        # Open connections per worker process past which new ones get 503 (file descriptors and
        # memory are the limits: docs/scaling.md). Long-poll claims and idle keep-alives count.
        "limit_concurrency": _int("WEB_MAX_CONNECTIONS", 10000),
        "timeout_keep_alive": _int("WEB_KEEPALIVE", 75),
        "timeout_graceful_shutdown": 10,
    }
