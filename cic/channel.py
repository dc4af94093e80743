"""The one door out: everything the engine publishes goes through :class:`MqttAlarmChannel`.

Alarm messages to the CIC are journalled before they are published: the channel writes each
message, and its CAP 1.2 form, to the outbox journal (:mod:`cic.journal`) in one
committed transaction, then publishes both with QoS 1; :meth:`MqttAlarmChannel.poll` marks
them delivered when the broker's acknowledgement has come. :meth:`MqttAlarmChannel.replay`
publishes, at start, what an earlier run journalled and never saw delivered. The rest goes
out through the same door, each with its own guarantee: the evidence anchors (journalled and
delivered as alarms are: :meth:`MqttAlarmChannel.send_records`), the device commands and
the notices to offenders and protected persons (journalled with the alarms that caused
them, QoS 1), the retained status (QoS 1, and the ``offline`` will), the rejections (QoS 0),
and the alarms of
an engine whose decision loop is stuck (:meth:`MqttAlarmChannel.send_straight`: QoS 1, no
journal).

When the journal refuses a write (a storage fault: :mod:`storage.backlog`), a message is
published all the same, marked ``"journalled": false``, and kept in memory, in order, with
the messages after it; :meth:`MqttAlarmChannel.flush` writes them (with their delivery, when
the broker has acknowledged them meanwhile) once the journal takes writes again.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import paho.mqtt.client as mqtt

from cic.cap import CapFormatter
from cic.journal import Journal
from proximity.clock import iso_utc
from proximity.memory import Delta
from storage.backlog import Retry
from storage.store import WRITE_ERRORS

log = logging.getLogger(__name__)

ALARM_QOS = 1
STATUS_QOS = 1
NOTICE_QOS = 1
#: Rejections are information for whoever watches the devices: lost ones are not repeated.
REJECTION_QOS = 0


@dataclass(slots=True)
class _Held:
    """A message published while the journal refused writes, to be journalled later."""

    alarm_id: str
    topic: str
    payload: bytes
    created: float
    mid: int = 0
    delivered: float = math.nan  # when the broker acknowledged it; NaN: not yet


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
        self._acked: deque[tuple[int, str]] = deque()  # (message id, refusal; "": taken)
        #: Journal seqs of messages the broker refused (not authorised: an ACL that does not
        #: give the engine this topic): undelivered in the journal, re-published at the next
        #: start, and counted in :attr:`unacknowledged`.
        self.refused: set[int] = set()
        self.refused_held = 0  # the same, of messages a storage fault held
        self._client = client
        client.on_publish = self._on_publish
        self._cap = CapFormatter()
        #: The journal's writes: a refusal begins a storage fault (``retry.failing``).
        self.retry = Retry("the outbox journal")
        self._held: list[_Held] = []  # published, not journalled yet, in order
        self._held_pending: dict[int, _Held] = {}  # MQTT message id -> held message
        self._marks: list[tuple[int, float]] = []  # (seq, delivered) not yet marked

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
        """Journal, then publish, one alarm message."""
        self.send_all([message])

    def send_all(
        self,
        messages: list[dict[str, Any]],
        state: Delta | None = None,
        extra: Sequence[tuple[str, str, dict[str, Any]]] = (),
        raw: Sequence[tuple[str, str, bytes]] = (),
    ) -> bool:
        """Journal ``messages`` (in order), the ``extra`` messages on other topics (``(key,
        topic, message)``: the incidents' changes), the ``raw`` ones (``(key, topic,
        payload)``: device commands and notices, as the devices receive them) and what
        changed in the engine's state with them (``state``) in one transaction, then publish
        them; return whether ``state`` was written (False while the journal refuses writes:
        the messages are then published all the same, and held)."""
        now = time.time()
        for message in [*messages, *(m for _, _, m in extra)]:
            message["times"]["published"] = iso_utc(self._clock())
        caps = [self._cap.alert(m) if self.cap_topic is not None else None for m in messages]
        items = self._items(messages, caps) + self._extra(extra) + list(raw)
        self.published += len(messages)
        # Journal first: committed before anything leaves the process (behind the messages
        # a storage fault holds, if any, to keep the journal's order).
        if not self._held:
            try:
                seqs = self.journal.append(items, now, state)
            except WRITE_ERRORS as exc:
                self._refused(exc)
            else:
                self._wrote()
                for seq, (_, topic, payload) in zip(seqs, items, strict=True):
                    self._publish(seq, now, topic, payload)
                self.flush()  # deliveries whose marking was refused
                return True
        # The journal refuses writes: the CIC gets the messages all the same, and is told.
        for message in [*messages, *(m for _, _, m in extra)]:
            message["journalled"] = False
        items = self._items(messages, caps) + self._extra(extra) + list(raw)
        for alarm_id, topic, payload in items:
            held = _Held(alarm_id, topic, payload, now)
            held.mid = self._client.publish(topic, payload, qos=ALARM_QOS).mid
            self._held.append(held)
            self._held_pending[held.mid] = held
        self.flush()
        return False

    def _items(
        self, messages: list[dict[str, Any]], caps: list[bytes | None]
    ) -> list[tuple[str, str, bytes]]:
        """``(alarm id, topic, payload)`` of each message, and of its CAP form if any."""
        items = []
        for message, cap in zip(messages, caps, strict=True):
            items.append((message["alarm_id"], self.topic, orjson.dumps(message)))
            if cap is not None and self.cap_topic is not None:
                items.append((message["alarm_id"], self.cap_topic, cap))
        return items

    @staticmethod
    def _extra(extra: Sequence[tuple[str, str, dict[str, Any]]]) -> list[tuple[str, str, bytes]]:
        return [(key, topic, orjson.dumps(m)) for key, topic, m in extra]

    def save_state(self, state: Delta) -> bool:
        """Write what changed in the engine's state, behind what a storage fault holds;
        whether it is written (False: the journal refuses writes, or holds messages that
        must go first)."""
        if self._held or self._marks:
            self.flush()
            if self._held or self._marks:
                return False
        if self.retry.failing and not self.retry.due():
            return False
        try:
            self.journal.save_state(state)
        except WRITE_ERRORS as exc:
            self._refused(exc)
            return False
        self._wrote()
        return True

    def recall(self, alarm_ids: list[str]) -> int:
        """After a restart: the first CAP alerts of ``alarm_ids`` (alarms an earlier run
        opened), from the journal, so that later alerts reference them; how many."""
        if self.cap_topic is None or not alarm_ids:
            return 0
        return self._cap.recall(self.journal.first_messages(alarm_ids, self.cap_topic))

    def send_records(self, topic: str, records: list[dict[str, Any]]) -> bool:
        """Journal, then publish (QoS 1), messages that are not alarms (the evidence
        anchors), delivered and replayed as alarms are; False, and nothing sent, while the
        journal refuses writes or holds messages that must go first (the caller tries again
        later)."""
        if not records:
            return True
        if self._held or (self.retry.failing and not self.retry.due()):
            return False
        now = time.time()
        items = [("", topic, orjson.dumps(r)) for r in records]
        try:
            seqs = self.journal.append(items, now)
        except WRITE_ERRORS as exc:
            self._refused(exc)
            return False
        self._wrote()
        for seq, (_, t, payload) in zip(seqs, items, strict=True):
            self._publish(seq, now, t, payload)
        return True

    def send_straight(self, message: dict[str, Any]) -> mqtt.MQTTMessageInfo:
        """Publish an alarm message without the journal (marked ``"journalled": false``): the
        watchdog's, while the decision loop that owns the journal is stuck."""
        message["times"]["published"] = iso_utc(self._clock())
        message["journalled"] = False
        self.published += 1
        return self._client.publish(self.topic, orjson.dumps(message), qos=ALARM_QOS)

    def will(self, topic: str, payload: bytes) -> None:
        """The retained status the broker publishes if the engine dies (before connecting)."""
        self._client.will_set(topic, payload, qos=STATUS_QOS, retain=True)

    def status(self, topic: str, payload: bytes) -> None:
        """The engine's retained status."""
        self._client.publish(topic, payload, qos=STATUS_QOS, retain=True)

    def notice(self, topic: str, payload: bytes) -> None:
        """A notice to a device (the offender's "move away")."""
        self._client.publish(topic, payload, qos=NOTICE_QOS)

    def rejection(self, topic: str, payload: bytes) -> None:
        """A rejected input message, with its reason."""
        self._client.publish(topic, payload, qos=REJECTION_QOS)

    def _refused(self, exc: BaseException) -> None:
        if self.retry.failed(exc):
            log.error("the outbox journal %s refuses writes: %s", self.journal.path, exc)

    @property
    def held(self) -> int:
        """Messages (JSON and CAP) published but not journalled yet."""
        return len(self._held)

    def flush(self, force: bool = False) -> None:
        """Journal what a storage fault held, and mark deliveries the journal refused, when a
        try is due (or ``force``); the fault ends when everything is written."""
        if not (self._held or self._marks) or not (force or self.retry.due()):
            # (Nothing held: a fault, if any, is a refused state save, which the next
            # state save or message ends.)
            return
        try:
            if self._held:
                seqs = self.journal.restore(
                    [(h.alarm_id, h.topic, h.payload, h.created, h.delivered) for h in self._held]
                )
                for seq, h in zip(seqs, self._held, strict=True):
                    # Its PUBACK is still due (the client reuses message ids: the id may
                    # belong to a later message by now if this one's PUBACK came).
                    if math.isnan(h.delivered) and self._held_pending.get(h.mid) is h:
                        del self._held_pending[h.mid]
                        self._pending[h.mid] = (seq, h.created)
                self._held = []
            if self._marks:
                self.journal.mark_delivered(self._marks)
                self._marks = []
        except WRITE_ERRORS as exc:
            self._refused(exc)
            return
        self._wrote()

    def _wrote(self) -> None:
        """A write went through: a storage fault of the journal, if any, is over."""
        if self.retry.succeeded():
            log.warning("the outbox journal %s takes writes again", self.journal.path)

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any
    ) -> None:
        self._acked.append((mid, str(reason) if getattr(reason, "is_failure", False) else ""))

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
        now = time.time()
        while self._acked:
            # Publishing happens on this thread too, so every alarm's id is known here by
            # now; other ids are the client's other messages (status, notices).
            mid, refusal = self._acked.popleft()
            entry = self._pending.pop(mid, None)
            if entry is not None and refusal:
                self.refused.add(entry[0])
                log.error(
                    "the broker refused message %d of the journal (%s): it stays undelivered"
                    " there and is published again at the next start; does the broker's ACL"
                    " give the engine's account this topic (proximity broker config with the"
                    " engine's settings)?",
                    entry[0],
                    refusal,
                )
                continue
            if entry is not None:
                done.append(entry)
                continue
            held = self._held_pending.pop(mid, None)
            if held is not None and refusal:  # journalled undelivered when the fault ends
                log.error("the broker refused a message held by the storage fault (%s)", refusal)
                self.refused_held += 1
            elif held is not None:  # journalled with its delivery when the fault ends
                held.delivered = now
                self.max_lag_s = max(self.max_lag_s, now - held.created)
        if done:
            self._marks.extend((seq, now) for seq, _ in done)
            self.max_lag_s = max(self.max_lag_s, max(now - created for _, created in done))
            if not self.retry.failing:
                try:
                    self.journal.mark_delivered(self._marks)
                    self._marks = []
                except WRITE_ERRORS as exc:
                    self._refused(exc)
        self.flush()
        return len(done)

    def connected(self) -> bool:
        """Whether the publishing client is connected to the broker now."""
        return bool(self._client.is_connected())

    @property
    def unacknowledged(self) -> int:
        return len(self._pending) + len(self._held_pending) + len(self.refused) + self.refused_held

    def close(self) -> None:
        """Journal what a storage fault held (one last try), wait briefly for outstanding
        acknowledgements (bounded), then record them."""
        self.flush(force=True)
        deadline = time.monotonic() + 5.0
        while (self._pending or self._held_pending) and time.monotonic() < deadline:
            self.poll()
            time.sleep(0.01)
        self.poll()
