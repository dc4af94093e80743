"""The MQTT subscription: callbacks only decode and hand off to a queue.

Back-pressure policy: the hand-off queue is bounded. When the engine falls behind and the
queue is full, the callback blocks, paho's network thread stops reading the socket, and the
broker holds further messages (QoS 1): nothing is dropped here. Each blocked hand-off is
counted in :attr:`FixSubscriber.blocked_puts`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from ingest.codec import ACK_TOPIC, decode
from ingest.model import DeviceEvent, Fix, OperatorAction, Rejection
from ingest.owntracks import PREFIX as OWNTRACKS_PREFIX
from ingest.owntracks import SUBSCRIPTIONS as OWNTRACKS_SUBSCRIPTIONS
from ingest.owntracks import Aliases, Keys, decode_owntracks
from ingest.transport import BrokerAddress, connect, disconnect, make_client

log = logging.getLogger(__name__)

FIX_SUBSCRIPTION = "devices/+/fix"
EVENT_SUBSCRIPTION = "devices/+/event"
SUBSCRIBE_QOS = 1
QUEUE_LIMIT = 200_000

Item = Fix | DeviceEvent | OperatorAction | Rejection


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
    ) -> None:
        self.broker = broker
        self._owntracks: Aliases = owntracks or {}
        self._owntracks_keys: Keys = owntracks_keys or {}
        # (item, message id) pairs; the id is 0 for items that need no acknowledgement.
        self.items: queue.Queue[tuple[Item, int]] = queue.Queue(maxsize=queue_limit)
        self._drained: list[int] = []
        self.blocked_puts = 0
        self.connected = threading.Event()
        self._clock = clock
        self._session_expiry_s = session_expiry_s
        self._client = make_client(client_id, manual_ack=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    def start(self) -> None:
        connect(
            self._client,
            self.broker,
            clean_start=self._session_expiry_s <= 0,
            session_expiry_s=self._session_expiry_s,
        )

    def stop(self) -> None:
        disconnect(self._client)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        if rc.is_failure:
            log.error("broker %s refused the fix subscription: %s", self.broker, rc)
            return
        client.subscribe(
            [
                (FIX_SUBSCRIPTION, SUBSCRIBE_QOS),
                (EVENT_SUBSCRIPTION, SUBSCRIBE_QOS),
                (ACK_TOPIC, SUBSCRIBE_QOS),
                *((t, SUBSCRIBE_QOS) for t in OWNTRACKS_SUBSCRIPTIONS),
            ]
        )
        self.connected.set()
        log.info(
            "subscribed to %s, %s, %s and OwnTracks on %s",
            FIX_SUBSCRIPTION,
            EVENT_SUBSCRIPTION,
            ACK_TOPIC,
            self.broker,
        )

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        self.connected.clear()
        if rc.is_failure:
            log.warning("lost the broker %s (%s); reconnecting", self.broker, rc)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic
        if topic.startswith(OWNTRACKS_PREFIX):
            item: Item = decode_owntracks(
                topic, msg.payload, self._clock(), self._owntracks, self._owntracks_keys
            )
        else:
            item = decode(topic, msg.payload, self._clock())
        self._put(item, msg.mid if msg.qos > 0 else 0)

    def _put(self, item: Item, mid: int) -> None:
        try:
            self.items.put_nowait((item, mid))
        except queue.Full:  # back-pressure: the network thread waits for the engine
            self.blocked_puts += 1
            self.items.put((item, mid))

    def put_local(self, item: Item) -> None:
        """Queue an item from another input (the HTTP edge): no acknowledgement to send."""
        self._put(item, 0)

    def acknowledge(self) -> int:
        """Acknowledge, to the broker, the messages of everything drained so far (the engine
        has processed it); return how many."""
        mids, self._drained = self._drained, []
        for mid in mids:
            self._client.ack(mid, SUBSCRIBE_QOS)
        return len(mids)

    def drain(self, timeout: float, limit: int = 100_000) -> list[Item]:
        """Wait up to ``timeout`` s for one item, then take everything queued (at most ``limit``).

        This is the natural batching of DESIGN.md: a quiet system gets one fix at a time, a
        busy one gets what piled up while the engine was evaluating the previous batch.
        """
        try:
            first = self.items.get(timeout=timeout)
        except queue.Empty:
            return []
        pairs = [first]
        while len(pairs) < limit:
            try:
                pairs.append(self.items.get_nowait())
            except queue.Empty:
                break
        self._drained.extend(mid for _, mid in pairs if mid)
        return [item for item, _ in pairs]
