"""Processes the demo and the tests start: the engine through its CLI, stopped by pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt

from ingest.transport import Access, connect, disconnect, make_client, parse_broker_url

#: The first start on a machine compiles the kernels (numba caches them afterwards).
ENGINE_START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 10.0
STATUS_TOPIC = "proximity/status"


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the process we started (by its pid), SIGKILL it if it does not exit in time."""
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


class EngineProcess:
    """``proximity run`` as a subprocess; :meth:`start` returns once its status is ``online``.

    Output goes to ``log``; ``status`` is the engine's latest status message.
    """

    def __init__(
        self,
        broker_url: str,
        db: Path,
        log: Path,
        *extra_args: str,
        env: dict[str, str] | None = None,
        watcher: Access | None = None,
    ) -> None:
        """``watcher``: the account that reads the engine's status on a secured broker."""
        self.env = env or {}
        self.watcher = watcher
        self.broker_url = broker_url
        self.db = db
        self.log = log
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None
        self.status: dict[str, Any] = {}
        self._online = threading.Event()

    def _on_status(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.status = orjson.loads(msg.payload)
        if self.status.get("state") == "online":
            self._online.set()

    def start(self, timeout: float = ENGINE_START_TIMEOUT_S) -> EngineProcess:
        watcher = make_client("")
        watcher.on_message = self._on_status
        connect(watcher, parse_broker_url(self.broker_url), access=self.watcher)
        watcher.subscribe(STATUS_TOPIC, qos=1)
        try:
            with self.log.open("wb") as out:
                self.proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "cli",
                        "run",
                        "--broker",
                        self.broker_url,
                        "--db",
                        str(self.db),
                        *self.extra_args,
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=dict(os.environ, PYTHONUNBUFFERED="1", **self.env),
                )
            deadline = time.monotonic() + timeout
            while not self._online.wait(0.1):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    tail = self.log.read_text(errors="replace")[-3000:]
                    self.stop()
                    raise RuntimeError(f"the engine did not come online:\n{tail}")
        finally:
            disconnect(watcher)
        return self

    def stop(self) -> int | None:
        """Stop the engine; return its exit code (None if it was never started)."""
        stop_process(self.proc)
        return None if self.proc is None else self.proc.returncode
