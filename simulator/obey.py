"""Simulated devices that obey the engine's commands (:mod:`cic.commands`).

:class:`CommandedPace` is what a device does with the commands it receives: its reporting
interval now, from its own interval and the ``report_interval`` commands (each until its
``until``), and whether a ``report_now`` is due. The evaluation's devices (direct runs and
runs through the broker) and the integration tests' devices share it.

:class:`ObedientDevice` is one such device on a real broker: it subscribes to its command
topic, acknowledges each command on ``devices/{id}/cmd/ack``, and publishes a fix of its
position every interval it was asked for (a thread, stopped by :meth:`ObedientDevice.stop`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import orjson
import paho.mqtt.client as mqtt

from ingest.codec import parse_timestamp
from ingest.transport import BrokerAddress, connect, disconnect, make_client
from proximity.clock import now as clock_now


class CommandedPace:
    """A device's reporting interval under the commands it obeyed (times on its clock)."""

    def __init__(self, own_s: float) -> None:
        self.own_s = own_s
        self.asked_s = math.nan  # the interval a report_interval asked for (NaN: none)
        self.until = -math.inf  # ... until then
        self.now_due = False  # a report_now not yet done
        self.seen: set[str] = set()

    def take(self, command: dict[str, Any]) -> bool:
        """Obey one command message; False when it is a repeat (its id taken already) or not
        a command this device knows."""
        cid = command.get("command_id")
        if not isinstance(cid, str) or cid in self.seen:
            return False
        kind = command.get("command")
        if kind == "report_now":
            self.now_due = True
        elif kind == "report_interval":
            until = command.get("until")
            interval = command.get("interval_s")
            if until is None or not isinstance(interval, int | float):
                self.asked_s, self.until = math.nan, -math.inf  # its own interval again
            else:
                self.asked_s, self.until = float(interval), parse_timestamp(until)
        else:
            return False
        self.seen.add(cid)
        return True

    def interval_s(self, t: float) -> float:
        """The interval to report at, at time ``t``."""
        if t < self.until and math.isfinite(self.asked_s):
            return min(self.own_s, self.asked_s)
        return self.own_s


class ObedientDevice:
    """A device on the broker at ``broker`` that reports ``position()`` at its commanded pace
    (``obey`` False: it hears the commands but neither acknowledges nor obeys them); its fix
    times are on ``clock``, the engine's (proximity.clock: the wall clock, moved by the
    clock offset of a drill or of the test suite's year-ahead run)."""

    def __init__(
        self,
        broker: BrokerAddress,
        device: str,
        position: Callable[[], tuple[float, float]],
        own_interval_s: float,
        *,
        obey: bool = True,
        clock: Callable[[], float] = clock_now,
    ) -> None:
        self.device = device
        self.position = position
        self.pace = CommandedPace(own_interval_s)
        self.obey = obey
        self.clock = clock
        self.commands: list[dict[str, Any]] = []
        self.sent: list[float] = []  # fix times
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._client = make_client("")
        self._client.on_message = self._on_message
        self._broker = broker
        self._thread = threading.Thread(target=self._run, name=f"device-{device}", daemon=True)

    def start(self) -> ObedientDevice:
        connect(self._client, self._broker)
        self._client.subscribe(f"devices/{self.device}/cmd", qos=1)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(10.0)
        disconnect(self._client)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            command = orjson.loads(msg.payload)
        except orjson.JSONDecodeError:
            return
        if not isinstance(command, dict):
            return
        with self._lock:
            self.commands.append(command)
            if not self.obey:
                return
            self.pace.take(command)
        ack = {"command_id": command.get("command_id"), "status": "ok", "ts": self.clock()}
        client.publish(f"devices/{self.device}/cmd/ack", orjson.dumps(ack), qos=1)
        self._wake.set()

    def _run(self) -> None:
        next_at = self.clock()
        while not self._stop.is_set():
            now = self.clock()
            with self._lock:
                due = now >= next_at or self.pace.now_due
                self.pace.now_due = False
                step = self.pace.interval_s(now)
            if due:
                lat, lon = self.position()
                body = {"ts": now, "lat": lat, "lon": lon, "acc": 5.0}
                self._client.publish(f"devices/{self.device}/fix", orjson.dumps(body), qos=1)
                with self._lock:
                    self.sent.append(now)
                next_at = now + step
            else:
                next_at = min(next_at, self.sent[-1] + step if self.sent else now)
            self._wake.wait(max(0.0, min(0.5, next_at - self.clock())))
            self._wake.clear()
