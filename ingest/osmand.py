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

:func:`make_app` builds the FastAPI application; decoded fixes and rejections go to a sink
(the same queue as the MQTT input), so HTTP fixes take exactly the MQTT fixes' path.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import FastAPI, Request, Response

from ingest.codec import MAX_PAYLOAD_BYTES, MIN_EPOCH_S, parse_timestamp, time_problem
from ingest.model import Fix, Rejection, RejectReason

KNOT = 1852.0 / 3600.0  # m/s
PATH = "/osmand/{secret}"


class _BadRequestError(Exception):
    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def credentials(devices: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, tuple[str, str]]:
    """What the app sends as its id -> (device id, secret), from ``(id, info)`` pairs."""
    out = {}
    for dev_id, info in devices:
        o = info.get("osmand")
        if isinstance(o, Mapping) and isinstance(o.get("secret"), str) and o["secret"]:
            out[str(o.get("id", dev_id))] = (dev_id, str(o["secret"]))
    return out


def _num(params: Mapping[str, Any], key: str, lo: float, hi: float) -> float:
    v = params.get(key)
    if v is None or v == "":
        return math.nan
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise _BadRequestError(RejectReason.BAD_TYPE, f"{key!r} = {v!r} is not a number") from None
    if isinstance(v, bool) or not math.isfinite(x):
        raise _BadRequestError(RejectReason.BAD_TYPE, f"{key!r} = {v!r} is not a number")
    if not lo <= x <= hi:
        raise _BadRequestError(
            RejectReason.OUT_OF_RANGE, f"{key!r} = {v!r} is outside [{lo:g}, {hi:g}]"
        )
    return x


def _time(value: object) -> float:
    if isinstance(value, str) and value.strip().replace(".", "", 1).isdigit():
        value = float(value)
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 1e11:
        value = value / 1000.0  # milliseconds
    try:
        return parse_timestamp(value)
    except Exception as exc:  # the codec's own rejection of a time, whatever its class
        detail = f"'timestamp' = {value!r} is not epoch seconds or ISO 8601"
        raise _BadRequestError(RejectReason.BAD_TIMESTAMP, detail) from exc


def parse_request(
    params: Mapping[str, Any], body: Any, t_recv: float
) -> tuple[str, Fix] | Rejection:
    """The app's id and its fix (device field still the app's id), from query/form
    ``params`` or a JSON ``body``; or a rejection with the reason."""
    try:
        if isinstance(body, dict):  # the JSON form
            app_id = body.get("device_id")
            loc = body.get("location")
            if not isinstance(loc, dict) or not isinstance(loc.get("coords"), dict):
                raise _BadRequestError(RejectReason.MISSING_FIELD, "'location.coords' is required")
            c = loc["coords"]
            fields = {
                "lat": c.get("latitude"),
                "lon": c.get("longitude"),
                "accuracy": c.get("accuracy"),
                "speed_mps": c.get("speed"),
                "bearing": c.get("heading"),
                "altitude": c.get("altitude"),
                "batt": battery.get("level")
                if isinstance(battery := loc.get("battery"), dict)
                else None,
                "timestamp": loc.get("timestamp"),
            }
            batt_scale = 100.0
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
    except _BadRequestError as bad:
        return Rejection("http:osmand", None, bad.reason, bad.detail, t_recv)


def make_app(
    devices: Iterable[tuple[str, Mapping[str, Any]]],
    sink: Callable[[Fix | Rejection], None],
    clock: Callable[[], float],
) -> FastAPI:
    """The HTTP edge: ``GET|POST /osmand/{secret}`` -> fixes (200) or rejections (400/403)."""
    known = credentials(devices)
    app = FastAPI(title="Proximity engine: OsmAnd / Traccar Client input", docs_url=None)

    @app.api_route(PATH, methods=["GET", "POST"])
    async def osmand(secret: str, request: Request) -> Response:
        t_recv = clock()
        raw = await request.body()
        if len(raw) > MAX_PAYLOAD_BYTES:
            return Response("payload too large", status_code=413)
        params: dict[str, Any] = dict(request.query_params)
        body: Any = None
        if raw:
            if request.headers.get("content-type", "").startswith("application/json"):
                try:
                    body = orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    sink(
                        Rejection(
                            "http:osmand", None, RejectReason.MALFORMED_JSON, str(exc), t_recv
                        )
                    )
                    return Response("not valid JSON", status_code=400)
            else:
                params.update(parse_qsl(raw.decode("utf-8", "replace")))
        parsed = parse_request(params, body, t_recv)
        if isinstance(parsed, Rejection):
            sink(parsed)
            return Response(parsed.detail, status_code=400)
        app_id, fix = parsed
        entry = known.get(app_id)
        if entry is None or not hmac.compare_digest(entry[1].encode(), secret.encode()):
            sink(
                Rejection(
                    "http:osmand",
                    entry[0] if entry else None,
                    RejectReason.UNKNOWN_DEVICE,
                    f"device {app_id!r} unknown, or its secret is wrong",
                    t_recv,
                )
            )
            return Response(status_code=403)
        sink(replace(fix, device=entry[0]))
        return Response(status_code=200)

    return app
