"""The one door out: alarm messages to the CIC, journalled before they are published.

Sinks share a tiny protocol (``send``, ``close``). :class:`MqttAlarmChannel` writes each
message, and its CAP 1.2 form, to the outbox journal (:mod:`proximity.journal`) in one
committed transaction, then publishes both with QoS 1; :meth:`MqttAlarmChannel.poll` marks
them delivered when the broker's acknowledgement has come. :meth:`MqttAlarmChannel.replay`
publishes, at start, what an earlier run journalled and never saw delivered.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import orjson
import paho.mqtt.client as mqtt

from proximity.cap import CapFormatter
from proximity.journal import Journal
from proximity.messages import iso_utc

log = logging.getLogger(__name__)

ALARM_QOS = 1


class AlarmSink(Protocol):
    def send(self, message: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class MqttAlarmChannel:
    """Journals, then publishes, alarm messages on ``topic`` (and as CAP 1.2 XML on
    ``cap_topic`` unless None) with QoS 1 through an already-connected client.

    ``published`` counts alarm messages handed to the client (replays included);
    :attr:`unacknowledged` the journalled messages (JSON and CAP) whose PUBACK has not been
    seen; ``max_lag_s`` the longest time from journal to acknowledgement seen so far.
    """

    def __init__(
        self,
        client: mqtt.Client,
        topic: str,
        journal: Journal,
        cap_topic: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        #: Stamps ``times.published`` (the engine's clock, like ``times.decided``); the
        #: journal and the delivery lag keep the wall clock.
        self._clock = clock
        self.topic = topic
        self.cap_topic = cap_topic
        self.journal = journal
        self.published = 0
        self.max_lag_s = 0.0
        self._pending: dict[int, tuple[int, float]] = {}  # MQTT message id -> (seq, created)
        # PUBACKs arrive on the client's network thread: their message ids are collected
        # here and taken into the journal by poll(), on the engine's thread. (A message
        # published while the broker is away is sent, and acknowledged, after reconnecting.)
        self._acked: deque[int] = deque()
        self._client = client
        client.on_publish = self._on_publish
        self._cap = CapFormatter()

    def replay(self) -> int:
        """Publish, in journal order, every message an earlier run did not see delivered;
        return how many."""
        entries = self.journal.undelivered()
        for e in entries:
            self._publish(e.seq, e.created, e.topic, e.payload)
            self.published += e.topic == self.topic
        if entries:
            log.warning("re-publishing %d undelivered message(s) from the journal", len(entries))
        return len(entries)

    def send(self, message: dict[str, Any]) -> None:
        now = time.time()
        message["times"]["published"] = iso_utc(self._clock())
        items = [(message["alarm_id"], self.topic, orjson.dumps(message))]
        if self.cap_topic is not None:
            items.append((message["alarm_id"], self.cap_topic, self._cap.alert(message)))
        # Journal first: committed before anything leaves the process.
        seqs = self.journal.append(items, now)
        for seq, (_, topic, payload) in zip(seqs, items, strict=True):
            self._publish(seq, now, topic, payload)
        self.published += 1

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any
    ) -> None:
        self._acked.append(mid)

    def _publish(self, seq: int, created: float, topic: str, payload: bytes) -> None:
        info = self._client.publish(topic, payload, qos=ALARM_QOS)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            # The client keeps QoS 1 messages while the broker is away and sends them, in
            # order, when it has reconnected (with backoff); the journal keeps them too.
            log.warning("message %d queued while the broker is away (%s)", seq, info.rc)
        self._pending[info.mid] = (seq, created)

    def poll(self) -> int:
        """Mark the messages the broker has acknowledged as delivered; return how many."""
        done = []
        while self._acked:
            # Publishing happens on this thread too, so every alarm's id is known here by
            # now; other ids are the client's other messages (status, notices).
            entry = self._pending.pop(self._acked.popleft(), None)
            if entry is not None:
                done.append(entry)
        if not done:
            return 0
        now = time.time()
        self.journal.mark_delivered([seq for seq, _ in done], now)
        self.max_lag_s = max(self.max_lag_s, max(now - created for _, created in done))
        return len(done)

    @property
    def unacknowledged(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        """Wait briefly for outstanding acknowledgements (bounded), then record them."""
        deadline = time.monotonic() + 5.0
        while self._pending and time.monotonic() < deadline:
            self.poll()
            time.sleep(0.01)
        self.poll()
