"""MQTT transport shared by every client of the project: broker address and client factory."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest.model import IngestError

DEFAULT_PORT = 1883
KEEPALIVE_S = 30
CONNECT_TIMEOUT_S = 10.0
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


#: Schemes of a broker URL (``tcp://`` is an alias of ``mqtt://``: plain MQTT over TCP).
SCHEMES = ("mqtt", "tcp")
ACCEPTED_FORMS = (
    "mqtt://HOST:PORT or mqtt://HOST (port 1883), e.g. mqtt://127.0.0.1:1883"
    " (tcp:// is accepted for mqtt://)"
)


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://HOST[:PORT]`` (or ``tcp://HOST[:PORT]``) -> :class:`BrokerAddress`.

    The scheme is required: ``127.0.0.1:1883`` or ``localhost`` alone is refused rather than
    guessed, and so are parts the connection would silently ignore (a user name or password,
    a path, a query). :class:`IngestError` names the URL and shows the accepted forms.

    >>> parse_broker_url("mqtt://127.0.0.1:1884")
    BrokerAddress(host='127.0.0.1', port=1884)
    >>> parse_broker_url("mqtt://localhost")
    BrokerAddress(host='localhost', port=1883)
    >>> parse_broker_url("tcp://[::1]:1883")
    BrokerAddress(host='::1', port=1883)
    >>> parse_broker_url("127.0.0.1:1883")
    Traceback (most recent call last):
    ...
    ingest.model.IngestError: broker URL '127.0.0.1:1883' has no scheme; use mqtt://HOST:PORT \
or mqtt://HOST (port 1883), e.g. mqtt://127.0.0.1:1883 (tcp:// is accepted for mqtt://)
    """
    text = url.strip()
    if "://" not in text:
        raise IngestError(f"broker URL {url!r} has no scheme; use {ACCEPTED_FORMS}")
    parts = urlsplit(text)
    if parts.scheme.lower() not in SCHEMES:
        raise IngestError(
            f"broker URL {url!r}: scheme {parts.scheme!r} is not supported; use {ACCEPTED_FORMS}"
        )
    if parts.username is not None or parts.password is not None:
        raise IngestError(
            f"broker URL {url!r}: a user name or password in the URL is not supported"
            f" (the engine connects without them); use {ACCEPTED_FORMS}"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise IngestError(
            f"broker URL {url!r} has a path or query, which MQTT does not use; use {ACCEPTED_FORMS}"
        )
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise IngestError(
            f"broker URL {url!r}: the port must be a number 1-65535; use {ACCEPTED_FORMS}"
        ) from exc
    if not parts.hostname:
        raise IngestError(f"broker URL {url!r} names no host; use {ACCEPTED_FORMS}")
    return BrokerAddress(parts.hostname, port)


def _set_nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    # paho leaves Nagle's algorithm on; with QoS 1 it meets the peer's delayed ACK and every
    # small publish waits ~40 ms. Alarms and fixes are small and urgent: send at once.
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def make_client(client_id: str = "", *, manual_ack: bool = False) -> mqtt.Client:
    """A paho client speaking MQTT 5 with the version-2 callback API and TCP_NODELAY set;
    with ``manual_ack`` the application acknowledges received QoS 1 messages itself."""
    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )
    client.on_socket_open = _set_nodelay
    client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
    return client


def connect(
    client: mqtt.Client,
    broker: BrokerAddress,
    *,
    clean_start: bool = True,
    session_expiry_s: int = 0,
    receive_maximum: int = 0,
) -> None:
    """Connect (blocking for the TCP part) and start paho's network thread.

    With ``clean_start=False`` and a session expiry, the broker keeps the subscriptions and
    queues QoS 1 messages while the client is away (the engine restarting).
    ``receive_maximum`` (1 to 65535; 0: the broker's own limit, Mosquitto's
    ``max_inflight_messages``) is how many QoS 1 messages the broker may send before the
    client has acknowledged them.
    """
    props = Properties(PacketTypes.CONNECT)
    if session_expiry_s > 0:
        props.SessionExpiryInterval = session_expiry_s
    if receive_maximum > 0:
        props.ReceiveMaximum = receive_maximum
    try:
        client.connect(
            broker.host,
            broker.port,
            keepalive=KEEPALIVE_S,
            clean_start=clean_start,
            properties=props,
        )
    except OSError as exc:
        raise IngestError(
            f"cannot reach the MQTT broker at {broker}: {exc}. Is Mosquitto running there?"
        ) from exc
    client.loop_start()


def disconnect(client: mqtt.Client) -> None:
    """Disconnect, stop the network thread, and close the socket if the thread left it open
    (paho can stop its loop before it has closed the connection), and the socket pair that
    paho's loop_start() opens to wake its thread: paho closes that pair only when the client
    is finalized, which in a reference cycle can come after the sockets' own finalizers
    (an "unclosed socket" warning at exit)."""
    client.disconnect()
    client.loop_stop()
    sock = client.socket()
    if sock is not None:
        sock.close()
    reset = getattr(client, "_reset_sockets", None)  # no public way to close the pair
    if callable(reset):
        reset()
