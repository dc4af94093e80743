"""Serving the HTTP input (:mod:`ingest.osmand`) from a thread of the engine's process."""

from __future__ import annotations

import threading
import time

import uvicorn
from fastapi import FastAPI


class HttpServer:
    """uvicorn serving ``app`` on ``host:port`` in a daemon thread, stopped by :meth:`stop`."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="http-input", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP input did not start (is the port free?)")
            time.sleep(0.02)

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        servers = self._server.servers
        return int(servers[0].sockets[0].getsockname()[1]) if servers else 0

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10.0)
