from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest

from ingest.transport import Access, connect, disconnect, make_client, parse_broker_url
from proximity.clock import now as clock_now
from simulator.broker import BrokerError, LocalBroker, find_mosquitto
from simulator.process import EngineProcess

WAIT_S = 20.0

#: Where the tests' injected clocks start (2026-11-23T10:00Z, a Monday morning in Brussels):
#: the tests that take it give every time to the code themselves and never compare it with
#: the wall clock, so it does not age; one fixed instant keeps their curfew weekdays and ids
#: reproducible. Tests on the wall clock use now() instead.
T0 = 1795428000.0  # date-ok: the injected clocks' fixed start, not a fix time

#: scripts/test runs the tests marked ``wallclock`` a second time with this set (and the
#: engine's clock, through PROXIMITY_CLOCK_OFFSET_S, a year ahead): only they are collected.
ONLY_WALLCLOCK = "PROXIMITY_TEST_ONLY_WALLCLOCK"


def disk_full(db: sqlite3.Connection, spare_pages: int = 0) -> None:
    """Make ``db`` refuse writes as a full disk does (SQLITE_FULL): its page limit set to its
    size (plus ``spare_pages``). ``disk_back`` lifts it."""
    (pages,) = db.execute("PRAGMA page_count").fetchone()
    db.execute(f"PRAGMA max_page_count = {pages + spare_pages}")


def disk_back(db: sqlite3.Connection) -> None:
    """The disk takes writes again (SQLite's largest page limit)."""
    db.execute("PRAGMA max_page_count = 1073741823")


def now() -> float:
    """The test's clock: the wall clock moved as the engine's (PROXIMITY_CLOCK_OFFSET_S). Fix
    times are taken from it, never written as dates."""
    return clock_now()


def _have_mosquitto() -> bool:
    try:
        find_mosquitto()
    except BrokerError:
        return False
    return True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(ONLY_WALLCLOCK):
        keep = [i for i in items if "wallclock" in i.keywords]
        config.hook.pytest_deselected(items=[i for i in items if "wallclock" not in i.keywords])
        items[:] = keep
    if _have_mosquitto():
        return
    skip = pytest.mark.skip(reason="mosquitto is not installed (scripts/test installs it)")
    for item in items:
        if "broker" in item.keywords:
            item.add_marker(skip)


class _Answered:
    """Publishes with QoS 1 and records the broker's answer to each publish (the PUBACK's
    reason code: 0 taken, 135 not authorised on a secured broker)."""

    client: mqtt.Client
    answers: dict[int, int]

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: Any, p: Any) -> None:
        self.answers[mid] = int(rc.value) if hasattr(rc, "value") else int(rc)

    def raw(self, topic: str, payload: bytes, retain: bool = False) -> int:
        """Publish with QoS 1 and wait for the broker's answer; its reason code."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(WAIT_S)
        deadline = time.monotonic() + WAIT_S
        while info.mid not in self.answers and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.answers.pop(info.mid, -1)


class Listener(_Answered):
    """A CIC-side MQTT client that records every message on the topics it subscribes to (and
    may publish: :meth:`raw`)."""

    def __init__(self, url: str, topics: list[str], access: Access | None = None) -> None:
        """``access``: the account on a secured broker."""
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = make_client("")
        self.answers = {}
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._ready.set()
        connect(self.client, parse_broker_url(url), access=access)
        self.client.subscribe([(t, 1) for t in topics])
        assert self._ready.wait(WAIT_S), "subscription not acknowledged"

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # JSON, or XML (CAP) kept as text under "xml".
        body = (
            {"xml": msg.payload.decode()} if msg.payload[:1] == b"<" else orjson.loads(msg.payload)
        )
        with self._lock:
            self.messages.append((msg.topic, body))

    def on(self, topic: str) -> list[dict[str, Any]]:
        with self._lock:
            return [m for t, m in self.messages if t == topic]

    def wait_for(
        self, topic: str, pred: Callable[[dict[str, Any]], bool], timeout: float = WAIT_S
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.on(topic):
                if pred(m):
                    return m
            time.sleep(0.02)
        raise AssertionError(f"no message on {topic} matched within {timeout} s: {self.on(topic)}")

    def close(self) -> None:
        disconnect(self.client)


class Publisher(_Answered):
    """A device-side client (``access``: its account on a secured broker)."""

    def __init__(self, url: str, access: Access | None = None) -> None:
        self.client = make_client("")
        self.answers = {}
        self.client.on_publish = self._on_publish
        connect(self.client, parse_broker_url(url), access=access)

    def fix(self, device: str, lat: float, lon: float, acc: float = 5.0, **extra: Any) -> int:
        body = {"ts": extra.pop("ts", now()), "lat": lat, "lon": lon, "acc": acc, **extra}
        return self.raw(f"devices/{device}/fix", orjson.dumps(body))

    def close(self) -> None:
        disconnect(self.client)


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalBroker]:
    with LocalBroker() as b:
        yield b


@pytest.fixture
def pub(broker: LocalBroker) -> Iterator[Publisher]:
    """A device-side MQTT client that publishes fixes to the module's broker."""
    p = Publisher(broker.url)
    yield p
    p.close()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def write_cases(
    path: Path, cases: list[dict[str, Any]], devices: list[dict[str, Any]] | None = None
) -> Path:
    doc: dict[str, Any] = {"cases": cases}
    if devices:
        doc["devices"] = devices
    path.write_text(json.dumps(doc))
    return path


def import_cases(
    tmp: Path, cases: list[dict[str, Any]], devices: list[dict[str, Any]] | None = None
) -> Path:
    """Import the cases (and devices) through the CLI into ``tmp/registry.sqlite``."""
    db = tmp / "registry.sqlite"
    result = run_cli(
        "cases", "import", str(write_cases(tmp / "cases.json", cases, devices)), "--db", str(db)
    )
    assert result.returncode == 0, result.stderr
    return db


def add_users(db: Path, roles: dict[str, str]) -> dict[str, str]:
    """``proximity users add NAME --role ROLE`` for each; their tokens by name."""
    tokens = {}
    for name, role in roles.items():
        got = run_cli("users", "add", name, "--role", role, "--db", str(db))
        assert got.returncode == 0, got.stderr
        tokens[name] = got.stdout.strip()
    return tokens


@contextmanager
def running_engine(
    broker: LocalBroker,
    tmp: Path,
    cases: list[dict[str, Any]],
    *args: str,
    devices: list[dict[str, Any]] | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[EngineProcess]:
    """Import the cases (and devices) into a fresh registry through the CLI and run
    ``proximity run ARGS`` (settings also from ``env``, PROXIMITY_*) against ``broker`` for
    the block; it must then stop cleanly."""
    db = import_cases(tmp, cases, devices)
    proc = EngineProcess(broker.url, db, tmp / "engine.log", *args, env=env).start()
    yield proc
    assert proc.stop() == 0, proc.log.read_text()
