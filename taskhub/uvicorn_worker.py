"""gunicorn's worker class for taskhub.asgi: uvicorn (uvloop and httptools when installed), with the
limits a node facing many idle units and slow clients needs. Named in taskhub/gunicorn.conf.py and
used by `manage.py runhub`.

Its server says when the process begins to drain (taskhub.base.serving): at the signal, before it
closes its listening sockets, so nothing it does for the requests it still holds afterwards (the
stamp of held long-poll claims, units.idle) passes for the hub hearing its units."""

from __future__ import annotations

import os
import sys
from types import FrameType

from gunicorn.arbiter import Arbiter
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from taskhub.base import serving


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

    async def _serve(self) -> None:  # UvicornWorker's, with the server below
        self.config.app = self.wsgi
        server = DrainingServer(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)


class DrainingServer(Server):
    """uvicorn's server, telling taskhub.base.serving that it drains as soon as it is asked to."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        serving.begin_drain()
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        serving.begin_drain()  # however the exit came (should_exit set by other means)
        await super().shutdown(sockets)
