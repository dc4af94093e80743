"""The one door out: alarm messages to the CIC.

Sinks share a tiny protocol (``send``, ``close``). :class:`MqttAlarmChannel` publishes each
message with QoS 1 on the alarm topic and counts the broker's acknowledgements.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

import orjson
import paho.mqtt.client as mqtt

from proximity.cap import CapFormatter
from proximity.messages import iso_utc

log = logging.getLogger(__name__)

ALARM_QOS = 1


class AlarmSink(Protocol):
    def send(self, message: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class MqttAlarmChannel:
    """Publishes alarm messages on ``topic`` with QoS 1 through an already-connected client,
    and each one as CAP 1.2 XML on ``cap_topic`` (unless None).

    ``published`` counts messages handed to the client; :attr:`unacknowledged` those whose
    PUBACK from the broker has not arrived yet.
    """

    def __init__(self, client: mqtt.Client, topic: str, cap_topic: str | None = None) -> None:
        self.topic = topic
        self.cap_topic = cap_topic
        self.published = 0
        self._pending: list[mqtt.MQTTMessageInfo] = []
        self._client = client
        self._cap = CapFormatter()

    def send(self, message: dict[str, Any]) -> None:
        message["times"]["published"] = iso_utc(time.time())
        info = self._client.publish(self.topic, orjson.dumps(message), qos=ALARM_QOS)
        if self.cap_topic is not None:
            cap = self._client.publish(self.cap_topic, self._cap.alert(message), qos=ALARM_QOS)
            self._pending.append(cap)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            # paho keeps QoS 1 messages queued while disconnected and sends them on reconnect.
            log.warning(
                "alarm %s queued while the broker is away (%s)", message["alarm_id"], info.rc
            )
        self.published += 1
        self._pending = [i for i in self._pending if not i.is_published()]
        self._pending.append(info)

    @property
    def unacknowledged(self) -> int:
        self._pending = [i for i in self._pending if not i.is_published()]
        return len(self._pending)

    def close(self) -> None:
        """Wait briefly for outstanding acknowledgements (bounded), then return."""
        deadline = time.monotonic() + 5.0
        while self.unacknowledged > 0 and time.monotonic() < deadline:
            time.sleep(0.01)
