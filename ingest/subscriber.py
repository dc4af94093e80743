"""The MQTT subscription: callbacks only decode and hand off to a queue.

Back-pressure policy: the hand-off queue is bounded. When the engine falls behind and the
queue is full, the callback blocks, paho's network thread stops reading the socket, and the
broker holds further messages (QoS 1): nothing is dropped here. Each blocked hand-off is
counted in :attr:`FixSubscriber.blocked_puts`.

Arrival stamps: each message is stamped with the clock (``t_recv``) and queued under one
lock, and :meth:`FixSubscriber.drain` reads the clock under the same lock, so everything
stamped up to the horizon it returns is in its hand-out or an earlier one. The engine
places its periodic sweeps by these stamps: a sweep at time T comes after every message
that arrived before T, however late the engine takes them.

The wall: no input can raise into paho's network thread (an exception there would end it,
leave the message unacknowledged, and the persistent session would hand the same message to
every later engine). :func:`decode_message` turns whatever a decoder raises into an
``internal_error`` rejection (:func:`ingest.rejections.internal_error`), which is queued like
any other and so acknowledged after its batch: it cannot come back.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from ingest.codec import ACK_SUBSCRIPTION, ACK_TOPIC, decode
from ingest.model import (
    CommandAck,
    DeviceEvent,
    Fix,
    OperatorAction,
    Rejection,
    RejectReason,
    SessionLost,
    Wake,
)
from ingest.owntracks import PREFIX as OWNTRACKS_PREFIX
from ingest.owntracks import SUBSCRIPTIONS as OWNTRACKS_SUBSCRIPTIONS
from ingest.owntracks import Aliases, Keys, decode_owntracks
from ingest.rejections import internal_error
from ingest.transport import Access, BrokerAddress, connect, disconnect, make_client

log = logging.getLogger(__name__)

FIX_SUBSCRIPTION = "devices/+/fix"
EVENT_SUBSCRIPTION = "devices/+/event"
COMMAND_ACK_SUBSCRIPTION = "devices/+/cmd/ack"
SUBSCRIBE_QOS = 1
QUEUE_LIMIT = 200_000
#: How many messages the broker may hand the engine before it has acknowledged them (MQTT 5
#: Receive Maximum): the engine acknowledges a message only once its effect is on disk, and
#: while the disk refuses writes it goes on deciding on up to this many
#: (:mod:`storage.backlog`); the rest waits at the broker. Not the largest value (65,535):
#: Mosquitto finds each acknowledged message by walking the client's list of messages in
#: flight, so at 20,000 fixes/s with tens of thousands in flight the broker spent its core on
#: that walk and stalled everyone (``scripts/bench e2e --pairs 10000``); 8,192 covers well
#: over the acknowledgement interval's fixes at that rate.
RECEIVE_MAXIMUM = 8_192
#: What :meth:`FixSubscriber.stop` unsubscribes from (never subscribed): the broker's answer
#: shows it has taken the acknowledgements sent before.
BARRIER_FILTER = "proximity/engine/no-such-subscription"
#: A PUBACK's first two bytes (type, remaining length 2) ahead of its 16-bit message id.
PUBACK_HEADER = (mqtt.PUBACK << 24) | (2 << 16)

Item = Fix | DeviceEvent | OperatorAction | CommandAck | Rejection | SessionLost | Wake


def decode_message(
    topic: str,
    payload: bytes | bytearray,
    t_recv: float,
    owntracks: Aliases,
    owntracks_keys: Keys,
) -> Item:
    """One message of any subscribed topic -> its item; never raises (a decoder's exception
    becomes an ``internal_error`` rejection)."""
    try:
        if topic.startswith(OWNTRACKS_PREFIX):
            return decode_owntracks(topic, payload, t_recv, owntracks, owntracks_keys)
        return decode(topic, payload, t_recv)
    except Exception as exc:
        return internal_error(topic, payload, t_recv, exc)


def send_pubacks(client: mqtt.Client, mids: list[int]) -> None:
    """Acknowledge the QoS 1 messages ``mids`` (manual acknowledgement) in one write: their
    PUBACKs (MQTT 5, success: the reason code left out, as paho does) as one packet of paho's
    outgoing queue, so one wake-up of its network thread and one ``send()`` for the batch,
    where ``client.ack()`` costs both per message. paho has no public call for it; where its
    queue is not there (another version), each message is acknowledged on its own."""
    queue_packet = getattr(client, "_packet_queue", None)
    if not callable(queue_packet):
        for mid in mids:
            client.ack(mid, SUBSCRIBE_QOS)
        return
    packets = struct.pack(f"!{len(mids)}I", *((PUBACK_HEADER | mid) for mid in mids))
    queue_packet(mqtt.PUBACK, packets, 0, 0)


def _topic(msg: mqtt.MQTTMessage) -> str | None:
    """The message's topic, or None when it is not UTF-8 (paho decodes it on access)."""
    try:
        return msg.topic
    except UnicodeDecodeError:
        return None


class FixSubscriber:
    """Subscribes to device fixes and events and queues the decoded items (:class:`Fix`,
    :class:`DeviceEvent`, :class:`OperatorAction` or :class:`Rejection`).

    Messages are acknowledged to the broker only after the engine has taken them into its
    state (paho's manual acknowledgement): :meth:`drain` hands out items, and
    :meth:`acknowledge` (called once the batch is processed) sends their PUBACKs. A message
    the engine never processed (it crashed, or stopped) stays with the broker, in the
    persistent session, and comes again.
    """

    def __init__(
        self,
        broker: BrokerAddress,
        client_id: str,
        *,
        session_expiry_s: int = 3600,
        queue_limit: int = QUEUE_LIMIT,
        clock: Callable[[], float] = time.time,
        owntracks: Aliases | None = None,
        owntracks_keys: Keys | None = None,
        access: Access | None = None,
    ) -> None:
        self.broker = broker
        self._access = access
        self._owntracks: Aliases = owntracks or {}
        self._owntracks_keys: Keys = owntracks_keys or {}
        # (item, message id) pairs; the id is 0 for items that need no acknowledgement.
        self.items: queue.Queue[tuple[Item, int]] = queue.Queue(maxsize=queue_limit)
        # Tags (connection << 16 | message id) of the messages handed out, not acknowledged.
        self._drained: list[int] = []
        self._connection = 0  # counts the connections whose session was new
        self.blocked_puts = 0
        self._stamp = threading.Lock()  # stamping + queueing vs. the horizon of drain()
        self._connected_before = False
        self._lost_at = math.nan  # when the connection was last lost
        self.connected = threading.Event()
        self._clock = clock
        self._session_expiry_s = session_expiry_s
        self._client = make_client(client_id, manual_ack=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_unsubscribe = self._on_unsubscribe
        self._barrier = threading.Event()
        self._barrier_mid = -1

    def start(self) -> None:
        connect(
            self._client,
            self.broker,
            access=self._access,
            clean_start=self._session_expiry_s <= 0,
            session_expiry_s=self._session_expiry_s,
            receive_maximum=RECEIVE_MAXIMUM,
        )

    def stop(self, flush_s: float = 2.0) -> None:
        """Disconnect, once the broker has taken the acknowledgements already given (up to
        ``flush_s``). Closing at once can lose the last ones: a socket closed with messages
        unread (the broker goes on sending) resets the connection, and the broker drops what
        it had not read yet, so those messages would come again. The barrier: an
        UNSUBSCRIBE of a filter nothing subscribes to, after them; the broker takes a
        client's packets in order, so its answer means it has taken every acknowledgement
        before it."""
        if self.connected.is_set():
            self._barrier.clear()
            rc, mid = self._client.unsubscribe(BARRIER_FILTER)
            if rc == mqtt.MQTT_ERR_SUCCESS:
                self._barrier_mid = -1 if mid is None else mid
                self._barrier.wait(flush_s)
        disconnect(self._client)

    def _on_unsubscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any
    ) -> None:
        if mid == self._barrier_mid:
            self._barrier.set()

    def network_alive(self) -> bool:
        """Whether the MQTT client's network thread (which receives every message) runs.
        paho has no public accessor; its loop_start() keeps the thread in ``_thread``."""
        thread = getattr(self._client, "_thread", None)
        return isinstance(thread, threading.Thread) and thread.is_alive()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        if rc.is_failure:
            log.error("broker %s refused the fix subscription: %s", self.broker, rc)
            return
        session_kept = bool(getattr(flags, "session_present", False))
        if not session_kept:
            with self._stamp:  # the ids of messages handed out before mean nothing now
                self._connection += 1
        # A persistent session keeps what is sent while the engine is away; without it (the
        # broker crashed without persistence, or lost its store) that is gone: say so.
        if self._session_expiry_s > 0 and not session_kept:
            lost_at, self._lost_at = self._lost_at, math.nan
            with self._stamp:
                gap = SessionLost(lost_at, self._clock())
                queued = self._offer(gap, 0)
            if not queued:
                self._wait_put(gap, 0)
            if self._connected_before:
                log.error(
                    "the broker %s kept no session for the engine: messages sent since the"
                    " connection was lost may be gone; subscribing again",
                    self.broker,
                )
            else:
                log.warning(
                    "the broker %s has no session for the engine: messages sent while it was"
                    " not running are not queued (a first start, or the broker lost its state)",
                    self.broker,
                )
        self._connected_before = True
        client.subscribe(
            [
                (FIX_SUBSCRIPTION, SUBSCRIBE_QOS),
                (EVENT_SUBSCRIPTION, SUBSCRIBE_QOS),
                (COMMAND_ACK_SUBSCRIPTION, SUBSCRIBE_QOS),
                (ACK_TOPIC, SUBSCRIBE_QOS),
                (ACK_SUBSCRIPTION, SUBSCRIBE_QOS),
                *((t, SUBSCRIBE_QOS) for t in OWNTRACKS_SUBSCRIPTIONS),
            ]
        )
        self.connected.set()
        log.info(
            "subscribed to %s, %s, %s, %s, %s and OwnTracks on %s",
            FIX_SUBSCRIPTION,
            EVENT_SUBSCRIPTION,
            COMMAND_ACK_SUBSCRIPTION,
            ACK_TOPIC,
            ACK_SUBSCRIPTION,
            self.broker,
        )

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        self.connected.clear()
        if math.isnan(self._lost_at):
            self._lost_at = self._clock()
        if rc.is_failure:
            log.warning("lost the broker %s (%s); reconnecting", self.broker, rc)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        topic = _topic(msg)
        # The message id, tagged with the connection's session: an id means something only
        # within the session that gave it (the broker reuses ids once acknowledged).
        mid = (self._connection << 16 | msg.mid) if msg.qos > 0 else 0
        with self._stamp:
            now = self._clock()
            item: Item
            if topic is None:
                item = Rejection(
                    "?", None, RejectReason.BAD_TOPIC, "the topic is not UTF-8 text", now
                )
            else:
                item = decode_message(
                    topic, msg.payload, now, self._owntracks, self._owntracks_keys
                )
            if self._offer(item, mid):
                return
        self._wait_put(item, mid)

    def _offer(self, item: Item, mid: int) -> bool:
        try:
            self.items.put_nowait((item, mid))
        except queue.Full:
            return False
        return True

    def _wait_put(self, item: Item, mid: int) -> None:
        # Back-pressure: the network thread waits for the engine (outside the lock, which
        # the engine needs to drain).
        self.blocked_puts += 1
        self.items.put((item, mid))

    def put_local(self, item: Item) -> None:
        """Queue an item from another input (the HTTP edge, stamped there): no
        acknowledgement to send."""
        with self._stamp:
            if self._offer(item, 0):
                return
        self._wait_put(item, 0)

    def set_devices(self, owntracks: Aliases, owntracks_keys: Keys) -> None:
        """The registry changed: the OwnTracks apps and keys of its devices now (each table
        taken together under the lock the network thread decodes under)."""
        with self._stamp:
            self._owntracks, self._owntracks_keys = owntracks, owntracks_keys

    @property
    def unacknowledged(self) -> int:
        """Messages handed out whose acknowledgement is held (their effect is not on disk)."""
        return len(self._drained)

    def acknowledge(self) -> int:
        """Acknowledge, to the broker, the messages of everything drained so far (the engine
        has processed it); return how many. A message the broker sent again (after a
        reconnect that kept the session) is acknowledged once; one of a session the broker
        no longer has is not acknowledged at all (its id may name another message now)."""
        tags, self._drained = dict.fromkeys(self._drained), []
        with self._stamp:  # against a reconnect starting a new session meanwhile
            mids = [tag & 0xFFFF for tag in tags if tag >> 16 == self._connection]
            if mids:
                send_pubacks(self._client, mids)
        return len(mids)

    def drain(self, timeout: float, limit: int = 100_000) -> tuple[list[Item], float]:
        """Wait up to ``timeout`` s for one item, then take everything queued (at most
        ``limit``), in arrival order. Also return the horizon, up to which every stamped
        message has been handed out: the clock when the queue was emptied (the last item's
        stamp when the limit stopped the hand-out first).

        This is the natural batching of DESIGN.md: a quiet system gets one fix at a time, a
        busy one gets what piled up while the engine was evaluating the previous batch.
        """
        pairs = []
        with contextlib.suppress(queue.Empty):
            pairs.append(self.items.get(timeout=timeout))
        horizon = math.nan
        with self._stamp:
            while len(pairs) < limit:
                try:
                    pairs.append(self.items.get_nowait())
                except queue.Empty:
                    horizon = self._clock()
                    break
        if math.isnan(horizon):
            horizon = pairs[-1][0].t_recv
        self._drained.extend(mid for _, mid in pairs if mid)
        return [item for item, _ in pairs], horizon
