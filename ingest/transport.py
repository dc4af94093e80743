"""MQTT transport shared by every client of the project: broker address and client factory."""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest.model import IngestError

DEFAULT_PORT = 1883
#: MQTT over TLS (``mqtts://``), the IANA port.
DEFAULT_TLS_PORT = 8883
KEEPALIVE_S = 30
CONNECT_TIMEOUT_S = 10.0
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30
#: The environment variable that may hold the broker password (a secret is never a flag).
PASSWORD_ENV = "PROXIMITY_BROKER_PASSWORD"


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    #: MQTT over TLS (``mqtts://``): the broker's certificate is verified.
    tls: bool = False

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Access:
    """How a client proves who it is to the broker, and how it checks the broker: a user
    name and password, a client certificate, and the CA that signed the broker's certificate
    (None: the system's CAs). The password never appears in ``repr`` or logs."""

    username: str = ""
    password: str = field(default="", repr=False)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def as_user(self, username: str) -> Access:
        """The same access under another account name (the engine's publishing client)."""
        return Access(username, self.password, self.ca_file, self.cert_file, self.key_file)

    def __str__(self) -> str:
        parts = [f"user {self.username}" if self.username else "no user name"]
        if self.cert_file is not None:
            parts.append(f"client certificate {self.cert_file}")
        return ", ".join(parts)


#: Schemes of a broker URL (``tcp://`` is an alias of ``mqtt://``: plain MQTT over TCP;
#: ``mqtts://`` is MQTT over TLS, ``ssl://`` an alias of it).
SCHEMES = ("mqtt", "tcp")
TLS_SCHEMES = ("mqtts", "ssl")
ACCEPTED_FORMS = (
    "mqtt://HOST:PORT or mqtt://HOST (port 1883), e.g. mqtt://127.0.0.1:1883"
    " (tcp:// is accepted for mqtt://), or mqtts://HOST:PORT for TLS (port 8883)"
)


def masked_url(url: str) -> str:
    """``url`` with the password of its user part, if any, as ``***`` (whatever the password
    holds: ``/``, ``#`` and ``@`` included), for messages and logs.

    >>> masked_url("mqtts://engine:pa/ss#w@rd@broker.example:8883")
    'mqtts://engine:***@broker.example:8883'
    """
    scheme, sep, rest = url.partition("://")
    user, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in user:
        return url
    return f"{scheme}://{user.split(':', 1)[0]}:***@{host}"


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://HOST[:PORT]`` (or ``tcp://HOST[:PORT]``), or ``mqtts://HOST[:PORT]`` for
    TLS -> :class:`BrokerAddress`.

    The scheme is required: ``127.0.0.1:1883`` or ``localhost`` alone is refused rather than
    guessed, and so are parts the connection would silently ignore (a path, a query) and a
    user name or password (a secret in a URL ends up on command lines and in logs: the
    settings broker_username and broker_password_file, or the environment, carry them).
    :class:`IngestError` names the URL and shows the accepted forms.

    >>> parse_broker_url("mqtt://127.0.0.1:1884")
    BrokerAddress(host='127.0.0.1', port=1884, tls=False)
    >>> parse_broker_url("mqtt://localhost")
    BrokerAddress(host='localhost', port=1883, tls=False)
    >>> parse_broker_url("tcp://[::1]:1883")
    BrokerAddress(host='::1', port=1883, tls=False)
    >>> parse_broker_url("mqtts://broker.example")
    BrokerAddress(host='broker.example', port=8883, tls=True)
    >>> parse_broker_url("127.0.0.1:1883")
    Traceback (most recent call last):
    ...
    ingest.model.IngestError: broker URL '127.0.0.1:1883' has no scheme; use mqtt://HOST:PORT \
or mqtt://HOST (port 1883), e.g. mqtt://127.0.0.1:1883 (tcp:// is accepted for mqtt://), \
or mqtts://HOST:PORT for TLS (port 8883)
    """
    text = url.strip()
    shown = masked_url(url)
    if "://" not in text:
        raise IngestError(f"broker URL {shown!r} has no scheme; use {ACCEPTED_FORMS}")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES + TLS_SCHEMES:
        raise IngestError(
            f"broker URL {shown!r}: scheme {parts.scheme!r} is not supported; use {ACCEPTED_FORMS}"
        )
    if "@" in text.partition("://")[2]:  # a user part, whatever its password holds
        raise IngestError(
            f"broker URL {shown!r}: a user name or password in the URL is not taken (a URL"
            " is shown on command lines and in logs); set broker_username, and the password in"
            f" a file (broker_password_file) or the environment ({PASSWORD_ENV})"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise IngestError(
            f"broker URL {shown!r} has a path or query, which MQTT does not use; use"
            f" {ACCEPTED_FORMS}"
        )
    tls = scheme in TLS_SCHEMES
    try:
        port = parts.port or (DEFAULT_TLS_PORT if tls else DEFAULT_PORT)
    except ValueError as exc:
        raise IngestError(
            f"broker URL {shown!r}: the port must be a number 1-65535; use {ACCEPTED_FORMS}"
        ) from exc
    if not parts.hostname:
        raise IngestError(f"broker URL {shown!r} names no host; use {ACCEPTED_FORMS}")
    return BrokerAddress(parts.hostname, port, tls)


#: How much :class:`ReadAhead` asks the socket for at a time.
READ_AHEAD_BYTES = 256 * 1024


class ReadAhead:
    """A client's socket, read ahead: paho reads each packet in three or more ``recv()``
    calls (its first byte, each byte of its length, the rest), a system call each, so a
    stream of small messages costs more in reads than in anything else. This takes what the
    socket has in one call and hands it out from memory; ``pending()`` says how much it
    holds, which paho's loop asks (as of a TLS socket) before waiting on the socket, so
    nothing held is left waiting. Everything else is the socket's own."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._at = 0

    def recv(self, size: int) -> bytes:
        if self._at >= len(self._buf):
            data = self._sock.recv(max(size, READ_AHEAD_BYTES))  # raises as the socket does
            if len(data) <= size:
                return bytes(data)
            self._buf, self._at = data, 0
        out = self._buf[self._at : self._at + size]
        self._at += len(out)
        return out

    def pending(self) -> int:
        inner = getattr(self._sock, "pending", None)
        return len(self._buf) - self._at + (inner() if callable(inner) else 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _set_nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    # paho leaves Nagle's algorithm on; with QoS 1 it meets the peer's delayed ACK and every
    # small publish waits ~40 ms. Alarms and fixes are small and urgent: send at once.
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # paho keeps the socket it has just opened in ``_sock`` (no public way to wrap it): read
    # it ahead (ReadAhead). Where that attribute is not this socket, paho is left as it is.
    if getattr(client, "_sock", None) is sock and not isinstance(sock, ReadAhead):
        client._sock = ReadAhead(sock)


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


class _TlsContext(ssl.SSLContext):
    """An SSL context that remembers the last socket it wrapped: paho does not close a socket
    whose TLS handshake failed (the broker's certificate did not verify), so :func:`connect`
    does."""

    last: ssl.SSLSocket | None = None

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self.last = super().wrap_socket(*args, **kwargs)
        return self.last


def _close_failed(client: mqtt.Client) -> None:
    """Close what a failed connect left open (the socket of a failed TLS handshake)."""
    context = getattr(client, "_ssl_context", None)
    if isinstance(context, _TlsContext) and context.last is not None:
        context.last.close()
        context.last = None
    disconnect(client)


def _secure(client: mqtt.Client, broker: BrokerAddress, access: Access | None) -> None:
    """Give ``client`` the account and the TLS context of ``access`` (TLS when the broker's
    address says so); IngestError names a certificate or key file that cannot be used."""
    access = access or Access()
    if access.username:
        client.username_pw_set(access.username, access.password or None)
    if not broker.tls:
        if access.ca_file is not None or access.cert_file is not None:
            raise IngestError(
                f"a CA file or client certificate is set but the broker URL {broker} is not"
                " TLS: use mqtts://HOST:PORT"
            )
        return
    try:
        context = _TlsContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the certificate and host
        if access.ca_file is not None:
            context.load_verify_locations(cafile=str(access.ca_file))
        else:
            context.load_default_certs()
        if access.cert_file is not None:
            context.load_cert_chain(
                str(access.cert_file),
                str(access.key_file) if access.key_file is not None else None,
            )
    except (OSError, ssl.SSLError) as exc:
        raise IngestError(
            f"cannot use the TLS files for {broker} (CA {access.ca_file}, certificate"
            f" {access.cert_file}, key {access.key_file}): {exc}"
        ) from exc
    client.tls_set_context(context)


def connect(
    client: mqtt.Client,
    broker: BrokerAddress,
    *,
    access: Access | None = None,
    clean_start: bool = True,
    session_expiry_s: int = 0,
    receive_maximum: int = 0,
    wait_s: float = CONNECT_TIMEOUT_S,
) -> None:
    """Connect, start paho's network thread, and wait up to ``wait_s`` for the broker's
    answer: IngestError says why when it cannot be reached, its certificate does not verify,
    or it refuses the client (bad user name or password, not authorised). ``wait_s`` 0: do
    not wait for the answer.

    ``access``: the account and TLS files (:class:`Access`). With ``clean_start=False`` and a
    session expiry, the broker keeps the subscriptions and queues QoS 1 messages while the
    client is away (the engine restarting). ``receive_maximum`` (1 to 65535; 0: the broker's
    own limit, Mosquitto's ``max_inflight_messages``) is how many QoS 1 messages the broker
    may send before the client has acknowledged them.
    """
    _secure(client, broker, access)
    props = Properties(PacketTypes.CONNECT)
    if session_expiry_s > 0:
        props.SessionExpiryInterval = session_expiry_s
    if receive_maximum > 0:
        props.ReceiveMaximum = receive_maximum
    answered = threading.Event()
    refusal: list[str] = []
    then: Any = client.on_connect  # the client's own handler (version-2 signature)

    def first_answer(c: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if not answered.is_set():
            if rc.is_failure:
                refusal.append(str(rc))
            answered.set()
        if then is not None:
            then(c, userdata, flags, rc, props)

    closed: list[str] = []
    was: Any = client.on_disconnect

    def closed_first(c: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if not answered.is_set():  # closed before any answer
            closed.append(str(rc))
            answered.set()
        if was is not None:
            was(c, userdata, flags, rc, props)

    client.on_connect = first_answer
    client.on_disconnect = closed_first
    try:
        client.connect(
            broker.host,
            broker.port,
            keepalive=KEEPALIVE_S,
            clean_start=clean_start,
            properties=props,
        )
    except ssl.SSLCertVerificationError as exc:
        client.on_connect = then
        _close_failed(client)
        raise IngestError(
            f"the MQTT broker at {broker} has a certificate that does not verify:"
            f" {exc.verify_message or exc}. Is broker_ca the CA that signed it, and is the"
            " host name one the certificate names?"
        ) from exc
    except OSError as exc:
        client.on_connect = then
        _close_failed(client)
        raise IngestError(
            f"cannot reach the MQTT broker at {broker}: {exc}. Is Mosquitto running there?"
        ) from exc
    client.loop_start()
    if wait_s <= 0:
        return
    if answered.wait(wait_s) and not refusal and not closed:
        return
    disconnect(client)
    who = f" ({access})" if access is not None else ""
    if refusal:
        raise IngestError(
            f"the MQTT broker at {broker} refused the connection{who}: {refusal[0]}."
            " Check the user name and password (or certificate) of this account"
        )
    hint = (
        " Over TLS this is how a broker that requires a client certificate refuses a client"
        " without one it accepts (broker_cert, broker_key)"
        if broker.tls
        else " If that port is a TLS listener, use mqtts://"
    )
    if closed:
        raise IngestError(
            f"the MQTT broker at {broker} closed the connection{who} without answering"
            f" ({closed[0]}).{hint}"
        )
    raise IngestError(f"the MQTT broker at {broker} did not answer within {wait_s:.0f} s.{hint}")


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
