"""A private Mosquitto on a free loopback port, started as a subprocess and stopped by pid."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from importlib.resources import files
from pathlib import Path
from types import TracebackType

from simulator.process import stop_process

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


class BrokerError(RuntimeError):
    """Mosquitto is missing or would not start."""


def find_mosquitto() -> str:
    """Path of the mosquitto executable (Debian installs it in /usr/sbin, often off PATH)."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise BrokerError(
            "mosquitto is not installed: run scripts/bootstrap, or 'apt-get install mosquitto'"
        )
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _private(conf: str) -> str:
    """A deployment's configuration on the private broker's terms: its listeners become one
    on the free loopback port, its persistence folder a private one, its log the broker's
    log file."""
    out = ["listener {port} 127.0.0.1"]
    for line in conf.splitlines():
        word = line.split("#", 1)[0].split()
        if word and word[0] == "listener":
            continue
        if word and word[0] == "persistence_location":
            line = "persistence_location {store}/"
        if word and word[0] == "log_dest":
            line = "log_dest stderr"
        out.append(line)
    return "\n".join(out) + "\n"


class LocalBroker:
    """Mosquitto on 127.0.0.1 and a free port, with the project's configuration.

    >>> with LocalBroker() as broker:  # doctest: +SKIP
    ...     print(broker.url)
    mqtt://127.0.0.1:38811
    """

    def __init__(
        self, workdir: Path | None = None, *, persistence: bool = False, config: Path | None = None
    ) -> None:
        """``persistence``: sessions and queued messages survive a restart. ``config``: a
        deployment's Mosquitto configuration (deploy/mosquitto.conf) to run instead of the
        project's private one, on a free loopback port, with its persistence in a private
        folder and its log to the broker's log file."""
        self._own_dir = workdir is None
        self.persistence = persistence or config is not None
        self.config = config
        self.workdir = (
            Path(tempfile.mkdtemp(prefix="proximity-broker-")) if workdir is None else workdir
        )
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._store: Path | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def persistence_dir(self) -> Path | None:
        """Where Mosquitto keeps its store (None: no persistence, or not started yet)."""
        return self._store

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def start(self, port: int | None = None) -> LocalBroker:
        """Start on a free port, or on ``port`` (a restart)."""
        exe = find_mosquitto()
        template = files("simulator").joinpath("mosquitto.conf").read_text()
        if self.config is not None:
            template = _private(self.config.read_text())
        if self.persistence:  # sessions and queued messages survive a restart
            if self._store is None:
                # Mosquitto started as root writes as the mosquitto user, which needs a
                # folder it can reach and write (not one inside a private test folder).
                self._store = Path(tempfile.mkdtemp(prefix="proximity-broker-store-"))
                self._store.chmod(0o777)
            store = self._store
            template = template.replace(
                "persistence false",
                f"persistence true\npersistence_location {store}/\nautosave_interval 1",
            ).replace("persistence_location {store}/", f"persistence_location {store}/")
        last_error = ""
        for _attempt in range(3):  # the free port can be taken between probe and bind
            self.port = free_port() if port is None else port
            conf = self.workdir / "mosquitto.conf"
            conf.write_text(template.replace("{port}", str(self.port)))
            log = self.log_path.open("ab")
            self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=log)
            log.close()
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                        return self
                except OSError:
                    time.sleep(0.05)
            last_error = self.log_path.read_text(errors="replace")[-2000:]
            self.stop()
            time.sleep(0.2)
        raise BrokerError(f"mosquitto did not start on port {self.port}: {last_error}")

    def restart(self) -> LocalBroker:
        """Stop it and start it again on the same port (clients reconnect to the same URL)."""
        port = self.port
        self.stop()
        return self.start(port)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc, STOP_TIMEOUT_S)

    def kill(self) -> None:
        """End it with SIGKILL, as a crash would: no chance to save anything."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if self._store is not None:
            shutil.rmtree(self._store, ignore_errors=True)

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
