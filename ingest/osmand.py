"""The OsmAnd / Traccar Client protocol over HTTP, with a per-device secret.

Traccar Client (and OsmAnd, and many small trackers) report by HTTP, in one of two forms:

* **query or form parameters** (GET, or POST ``application/x-www-form-urlencoded``):
  ``id`` (or ``deviceid``), ``lat``, ``lon``, ``timestamp`` (epoch seconds or milliseconds,
  or ISO 8601), optional ``accuracy`` (m), ``speed`` (knots, as Traccar Client sends it and
  the Traccar server reads it), ``bearing`` (degrees), ``altitude`` (m), ``batt`` (%);
* **JSON** (Traccar Client 9 and later, ``POST application/json``): ``{"device_id": ...,
  "location": {"timestamp": ISO 8601, "coords": {"latitude", "longitude", "accuracy",
  "speed" (m/s), "heading", "altitude"}, "battery": {"level": 0..1}}}``.

A device id alone must not be enough to inject positions: each device that reports this way
has a secret in the case file's ``devices`` list (``{"id": "phone-42", "osmand": {"secret":
"...", "id": "48241179"}}``; ``id`` is the identifier the app sends, the device id by
default), and the app's server URL carries it as the path: ``http://HOST:PORT/osmand/SECRET``.
A wrong or missing secret is refused with 403 and nothing about which part was wrong.

The order of the checks bounds what a stranger can make the engine do: the secret in the path
is checked first (against every device's, in constant time), before the query or the body is
parsed; the body is read as a stream, refused with 413 once it passes
:data:`~ingest.codec.MAX_PAYLOAD_BYTES` (at once when its declared length does), and never
read further; numbers are plain ASCII decimals (:func:`strict_number`: ``1_0``, ``１０``,
`` 10``, ``inf`` or ``0x10`` are refused, though Python's ``float`` reads them). Whatever the
request, the answer is never a 5xx: anything unexpected is answered 400 and becomes an
``internal_error`` rejection with the request's SHA-256 digest.

:func:`make_app` builds the FastAPI application; decoded fixes and rejections go to a sink
(the same queue as the MQTT input), so HTTP fixes take exactly the MQTT fixes' path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import FastAPI, Request, Response
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest.codec import (
    MAX_PAYLOAD_BYTES,
    MIN_EPOCH_S,
    InvalidInputError,
    parse_timestamp,
    shown,
    time_problem,
)
from ingest.model import Fix, Rejection, RejectReason
from ingest.rejections import internal_error

log = logging.getLogger(__name__)

KNOT = 1852.0 / 3600.0  # m/s
PATH = "/osmand/{secret}"
TOPIC = "http:osmand"
#: A plain decimal, with the exponent Java prints for small values (``1.0E-4``): what the
#: apps send. Python's ``float`` also reads ``1_0``, other scripts' digits, surrounding
#: white space, ``inf`` and ``nan``: none of them is a position.
DECIMAL = re.compile(r"-?[0-9]{1,20}(?:\.[0-9]{1,20})?(?:[eE][-+]?[0-9]{1,3})?", re.ASCII)
#: Epoch times above this are milliseconds (1e11 s is the year 5138).
MILLISECONDS_ABOVE = 1e11
#: Close the connection after answering without reading the body (a 403 or a 413): uvicorn
#: would otherwise read, and throw away, whatever the client goes on sending.
CLOSE = {"Connection": "close"}


class _BadRequestError(InvalidInputError):
    """A request that is not a fix: the reason code and a sentence for the app's user."""


def credentials(devices: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, tuple[str, str]]:
    """What the app sends as its id -> (device id, secret), from ``(id, info)`` pairs."""
    out = {}
    for dev_id, info in devices:
        o = info.get("osmand")
        if isinstance(o, Mapping) and isinstance(o.get("secret"), str) and o["secret"]:
            out[str(o.get("id", dev_id))] = (dev_id, str(o["secret"]))
    return out


def strict_number(value: object) -> float | None:
    """A number of the protocol, or None if ``value`` is not one: a JSON number (not a
    boolean), or a text that is a plain ASCII decimal (:data:`DECIMAL`). Infinite results
    (``1e999``) are returned as such, for the range check to refuse.

    >>> strict_number("50.8503"), strict_number("1.0E-4"), strict_number(-3)
    (50.8503, 0.0001, -3.0)
    >>> [strict_number(v) for v in ("1_0", " 10", "\uff11\uff10", "inf", "0x10", True)]
    [None, None, None, None, None, None]
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:  # an integer beyond any float
            return math.inf
    if isinstance(value, str) and DECIMAL.fullmatch(value):
        return float(value)
    return None


def _num(params: Mapping[str, Any], key: str, lo: float, hi: float) -> float:
    v = params.get(key)
    if v is None or v == "":
        return math.nan
    x = strict_number(v)
    if x is None or math.isnan(x):
        raise _BadRequestError(RejectReason.BAD_TYPE, f"{key!r} = {shown(v)} is not a number")
    if not lo <= x <= hi:
        raise _BadRequestError(
            RejectReason.OUT_OF_RANGE, f"{key!r} = {shown(v)} is outside [{lo:g}, {hi:g}]"
        )
    return x


def _time(value: object) -> float:
    """``timestamp``: epoch seconds or milliseconds (a number, or a decimal text), or ISO
    8601 text."""
    number = strict_number(value)
    if number is None and not isinstance(value, str):
        raise _BadRequestError(
            RejectReason.BAD_TIMESTAMP,
            f"'timestamp' = {shown(value)} is not epoch seconds or ISO 8601",
        )
    if number is not None and number > MILLISECONDS_ABOVE:
        number = number / 1000.0
    try:
        return parse_timestamp(value if number is None else number)
    except InvalidInputError as exc:
        detail = f"'timestamp' = {shown(value)} is not epoch seconds or ISO 8601"
        raise _BadRequestError(RejectReason.BAD_TIMESTAMP, detail) from exc


def parse_request(
    params: Mapping[str, Any], body: Any, t_recv: float
) -> tuple[str, Fix] | Rejection:
    """The app's id and its fix (device field still the app's id), from query/form
    ``params`` or a JSON ``body``; or a rejection with the reason. Never raises, whatever
    JSON values ``params`` and ``body`` hold."""
    try:
        if isinstance(body, dict):  # the JSON form
            app_id = body.get("device_id")
            loc = body.get("location")
            if not isinstance(loc, dict) or not isinstance(loc.get("coords"), dict):
                raise _BadRequestError(RejectReason.MISSING_FIELD, "'location.coords' is required")
            c = loc["coords"]
            battery = loc.get("battery")
            fields = {
                "lat": c.get("latitude"),
                "lon": c.get("longitude"),
                "accuracy": c.get("accuracy"),
                "speed_mps": c.get("speed"),
                "bearing": c.get("heading"),
                "altitude": c.get("altitude"),
                "batt": battery.get("level") if isinstance(battery, dict) else None,
                "timestamp": loc.get("timestamp"),
            }
            batt_scale = 100.0
        elif body is not None:
            raise _BadRequestError(RejectReason.NOT_AN_OBJECT, "the JSON body must be an object")
        else:
            app_id = params.get("id") or params.get("deviceid")
            fields = dict(params)
            if "speed" in fields:
                fields["speed_knots"] = fields.pop("speed")
            batt_scale = 1.0
        if not isinstance(app_id, str) or not app_id:
            raise _BadRequestError(
                RejectReason.MISSING_FIELD, "the device id ('id' or 'deviceid') is required"
            )
        if fields.get("lat") in (None, "") or fields.get("lon") in (None, ""):
            raise _BadRequestError(RejectReason.MISSING_FIELD, "'lat' and 'lon' are required")
        if fields.get("timestamp") in (None, ""):
            raise _BadRequestError(RejectReason.MISSING_FIELD, "'timestamp' is required")
        t = _time(fields["timestamp"])
        if t < MIN_EPOCH_S:
            raise _BadRequestError(
                RejectReason.BAD_TIMESTAMP, "time before 2000: the device clock is not set"
            )
        problem = time_problem(t, t_recv)
        if problem is not None:
            raise _BadRequestError(*problem)
        acc = _num(fields, "accuracy", 0.0, 1e6)
        speed = _num(fields, "speed_mps", 0.0, 1000.0)
        if "speed_knots" in fields:
            speed = _num(fields, "speed_knots", 0.0, 2000.0) * KNOT
        batt = _num(fields, "batt", 0.0, 100.0 / batt_scale) * batt_scale
        fix = Fix(
            device=app_id,
            t_fix=t,
            t_recv=t_recv,
            lat=_num(fields, "lat", -90.0, 90.0),
            lon=_num(fields, "lon", -180.0, 180.0),
            acc_m=acc if acc > 0 else math.nan,  # 0 or absent: unknown
            alt_m=_num(fields, "altitude", -1000.0, 100000.0),
            speed_mps=speed,
            heading_deg=_num(fields, "bearing", 0.0, 360.0),
            battery_pct=batt,
        )
        return app_id, fix
    except InvalidInputError as bad:
        return Rejection(TOPIC, None, bad.reason, bad.detail, t_recv)


def decode_request(
    query: bytes, content_type: str, body: bytes, t_recv: float
) -> tuple[str, Fix] | Rejection:
    """One request's query string, ``Content-Type`` and body -> the app's id and its fix, or a
    rejection with the reason; never raises. The body is JSON when the type says so, form
    parameters otherwise (they add to, and override, the query's)."""
    if len(query) > MAX_PAYLOAD_BYTES or len(body) > MAX_PAYLOAD_BYTES:
        return Rejection(
            TOPIC, None, RejectReason.TOO_LARGE, f"request over {MAX_PAYLOAD_BYTES} bytes", t_recv
        )
    # As Starlette reads a query: the bytes as Latin-1, percent escapes as UTF-8.
    params: dict[str, Any] = dict(
        parse_qsl(query.decode("latin-1"), keep_blank_values=True, errors="replace")
    )
    parsed: Any = None
    if body:
        if content_type.lower().startswith("application/json"):
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                return Rejection(
                    TOPIC, None, RejectReason.MALFORMED_JSON, f"not valid JSON: {exc}", t_recv
                )
        else:
            params.update(
                parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True, errors="replace")
            )
    return parse_request(params, parsed, t_recv)


def _body_pending(request: Request) -> bool:
    """Whether the client announced a body (that an early answer leaves unread)."""
    headers = request.headers
    return headers.get("content-length", "0") != "0" or "transfer-encoding" in headers


class _Wall:
    """The outermost guard of the HTTP app, around routing and the answers of every route
    (404 and 405 included): an exception before an answer started becomes a 400 and an
    ``internal_error`` rejection; one raised while answering means the connection is gone
    (uvicorn answers a request whose framing it cannot read, such as a bad chunk size, with
    its own 400 and closes, while the app may still be answering): nothing more is sent."""

    def __init__(
        self,
        app: ASGIApp,
        sink: Callable[[Fix | Rejection], None],
        clock: Callable[[], float],
    ) -> None:
        self.app = app
        self.sink = sink
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_once(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_once)
        except Exception as exc:
            gone = isinstance(exc, ClientDisconnect) or isinstance(exc.__cause__, ClientDisconnect)
            if started or gone:
                # Let the server see the connection closed before the app returns, so that
                # it does not report an unfinished answer.
                await asyncio.sleep(0)
                return
            query = scope.get("query_string", b"")
            rejection = internal_error(TOPIC, query, self.clock(), exc)
            try:
                self.sink(rejection)
            except Exception:
                log.exception("the HTTP input could not queue an internal_error rejection")
            with contextlib.suppress(Exception):
                await Response(rejection.detail, status_code=400, headers=CLOSE)(
                    scope, receive, send
                )


def make_app(
    devices: Iterable[tuple[str, Mapping[str, Any]]],
    sink: Callable[[Fix | Rejection], None],
    clock: Callable[[], float],
) -> FastAPI:
    """The HTTP edge: ``GET|POST /osmand/{secret}`` -> fixes (200) or rejections (400, 403,
    413); never a 5xx."""
    # Replaced whole (one assignment) when the registry changes: app.state.set_devices.
    table: dict[str, Any] = {}

    def set_devices(devices: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        known = credentials(devices)
        secrets = [(app_id, secret.encode()) for app_id, (_, secret) in known.items()]
        table["now"] = (known, secrets)

    set_devices(devices)
    app = FastAPI(
        title="Proximity engine: OsmAnd / Traccar Client input",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # nothing of the input is for strangers to read
    )
    app.add_middleware(_Wall, sink=sink, clock=clock)
    app.state.set_devices = set_devices

    def apps_of(secret: str) -> set[str]:
        """The app ids whose secret ``secret`` is: every entry compared, in constant time."""
        given = secret.encode("utf-8", "surrogatepass")
        _, secrets = table["now"]
        return {app_id for app_id, expected in secrets if hmac.compare_digest(expected, given)}

    async def read_body(request: Request) -> bytes | None:
        """The body, or None once it is over the limit (the rest stays unread)."""
        declared = request.headers.get("content-length")
        if declared is not None and not (
            len(declared) <= 20
            and declared.isascii()
            and declared.isdigit()
            and int(declared) <= MAX_PAYLOAD_BYTES
        ):
            return None
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_PAYLOAD_BYTES:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def answer(secret: str, request: Request, t_recv: float, seen: list[bytes]) -> Response:
        allowed = apps_of(secret)
        if not allowed:
            sink(
                Rejection(TOPIC, None, RejectReason.UNKNOWN_DEVICE, "unknown device secret", t_recv)
            )
            return Response(status_code=403, headers=CLOSE if _body_pending(request) else None)
        query = request.scope.get("query_string", b"")
        seen.append(query)
        raw = await read_body(request)
        if raw is None:
            sink(
                Rejection(
                    TOPIC,
                    None,
                    RejectReason.TOO_LARGE,
                    f"request body over {MAX_PAYLOAD_BYTES} bytes",
                    t_recv,
                )
            )
            return Response("payload too large", status_code=413, headers=CLOSE)
        seen.append(raw)
        parsed = decode_request(query, request.headers.get("content-type", ""), raw, t_recv)
        if isinstance(parsed, Rejection):
            sink(parsed)
            return Response(parsed.detail, status_code=400)
        app_id, fix = parsed
        entry = table["now"][0].get(app_id)
        if entry is None or app_id not in allowed:
            sink(
                Rejection(
                    TOPIC,
                    entry[0] if entry else None,
                    RejectReason.UNKNOWN_DEVICE,
                    f"device {shown(app_id)} unknown, or its secret is wrong",
                    t_recv,
                )
            )
            return Response(status_code=403)
        sink(replace(fix, device=entry[0]))
        return Response(status_code=200)

    @app.api_route(PATH, methods=["GET", "POST"])
    async def osmand(secret: str, request: Request) -> Response:
        t_recv = clock()
        seen: list[bytes] = []  # what was read, for the digest of an internal error
        try:
            return await answer(secret, request, t_recv, seen)
        except ClientDisconnect:  # gone before its body was complete: nothing to answer
            raise
        except Exception as exc:  # the wall: no request gets a 5xx (ingest.rejections)
            rejection = internal_error(TOPIC, b"\n".join(seen), t_recv, exc)
            try:
                sink(rejection)
            except Exception:
                log.exception("the HTTP input could not queue an internal_error rejection")
            return Response(rejection.detail, status_code=400, headers=CLOSE)

    return app
