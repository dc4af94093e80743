"""Simulated devices publishing native fixes over MQTT on their reporting schedule."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import orjson

from ingest.transport import BrokerAddress, connect, disconnect, make_client
from proximity.clock import iso_utc
from proximity.clock import now as clock_now
from simulator.scenario import Scenario, noisy_fix

FIX_QOS = 1


class Fleet:
    """Publishes a fix per device every ``interval_s`` (random phase) for the scenario's
    duration, in real time. ``sent[(device, seq)]`` is the ``time.perf_counter()`` of each
    publication, for latency accounting against alarm arrival in the same process."""

    def __init__(
        self, scenario: Scenario, broker: BrokerAddress, interval_s: float = 1.0, seed: int = 7
    ) -> None:
        self.scenario = scenario
        self.interval_s = interval_s
        self.sent: dict[tuple[str, int], float] = {}
        self.published = 0
        self._rng = np.random.default_rng(seed + 1)
        self._client = make_client("")
        self._broker = broker
        self._lock = threading.Lock()

    def publish_raw(self, topic: str, payload: bytes) -> None:
        self._client.publish(topic, payload, qos=FIX_QOS)

    def run(self, stop: threading.Event, on_tick: Callable[[float], None] | None = None) -> None:
        connect(self._client, self._broker)
        try:
            self._run(stop, on_tick)
        finally:
            time.sleep(0.2)  # let the last QoS 1 publishes leave
            disconnect(self._client)

    def _run(self, stop: threading.Event, on_tick: Callable[[float], None] | None) -> None:
        devices = sorted(self.scenario.tracks)
        phase = {d: float(self._rng.uniform(0, self.interval_s)) for d in devices}
        seq = dict.fromkeys(devices, 0)
        start_wall = clock_now()  # the engine's clock (proximity.clock)
        start = time.perf_counter()
        next_due = dict(phase)
        while not stop.is_set():
            now = time.perf_counter() - start
            if now > self.scenario.duration_s:
                break
            for dev in devices:
                if next_due[dev] <= now:
                    track = self.scenario.tracks[dev]
                    lat, lon = noisy_fix(track, now, self._rng)
                    payload = orjson.dumps(
                        {
                            "ts": iso_utc(start_wall + now),
                            "lat": lat,
                            "lon": lon,
                            "acc": round(track.acc_m, 1),
                            "seq": seq[dev],
                        }
                    )
                    self.sent[(dev, seq[dev])] = time.perf_counter()
                    self._client.publish(f"devices/{dev}/fix", payload, qos=FIX_QOS)
                    self.published += 1
                    seq[dev] += 1
                    next_due[dev] += self.interval_s
            if on_tick is not None:
                on_tick(now)
            wait = min(next_due.values()) - (time.perf_counter() - start)
            if wait > 0:
                stop.wait(min(wait, 0.25))
