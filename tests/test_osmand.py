"""The OsmAnd / Traccar Client HTTP input, served for real and called over HTTP: both forms,
the per-device secret, and rejections with reasons."""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest

from ingest.http_server import HttpServer
from ingest.model import Fix, Rejection, RejectReason
from ingest.osmand import KNOT, make_app
from proximity.clock import iso_utc
from tests.conftest import T0

NOW = T0
DEVICES: list[tuple[str, dict[str, Any]]] = [
    ("phone-42", {"osmand": {"id": "48241179", "secret": "k7Qx-2vLm"}}),
    ("tag-17", {"osmand": {"secret": "s3cret-tag"}}),  # sends its own device id
    ("phone-9", {"reporting_interval_s": 30}),  # no secret: cannot report by HTTP
]


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, list[Fix | Rejection]]]:
    received: list[Fix | Rejection] = []
    server = HttpServer(make_app(DEVICES, received.append, lambda: NOW), "127.0.0.1", 0)
    server.start()
    yield f"http://127.0.0.1:{server.port}", received
    server.stop()


def call(url: str, data: bytes | None = None, ctype: str = "") -> int:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": ctype} if ctype else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        err.close()
        return int(err.code)


def test_query_form_as_traccar_client_sends_it(served: tuple[str, list[Fix | Rejection]]) -> None:
    base, received = served
    q = {
        "id": "48241179",
        "timestamp": str(int(NOW) - 5),
        "lat": "50.8503",
        "lon": "4.3517",
        "speed": "10.0",
        "bearing": "90.0",
        "altitude": "60.0",
        "accuracy": "12.0",
        "batt": "77.0",
    }
    n = len(received)
    assert call(f"{base}/osmand/k7Qx-2vLm?{urlencode(q)}") == 200
    [fix] = received[n:]
    assert isinstance(fix, Fix)
    assert (fix.device, fix.t_fix, fix.lat, fix.lon, fix.acc_m) == (
        "phone-42",
        NOW - 5,
        50.8503,
        4.3517,
        12.0,
    )
    assert fix.speed_mps == pytest.approx(10.0 * KNOT) and fix.battery_pct == 77.0
    # The same as a form POST, with milliseconds and accuracy 0 (unknown).
    form = urlencode({**q, "timestamp": str(int(NOW) * 1000), "accuracy": "0"}).encode()
    assert call(f"{base}/osmand/k7Qx-2vLm", form, "application/x-www-form-urlencoded") == 200
    fix = received[-1]
    assert isinstance(fix, Fix) and fix.t_fix == NOW and math.isnan(fix.acc_m)


def test_json_form_of_traccar_client_9(served: tuple[str, list[Fix | Rejection]]) -> None:
    base, received = served
    body = {
        "location": {
            "timestamp": iso_utc(NOW - 2),
            "coords": {
                "latitude": 50.84,
                "longitude": 4.36,
                "accuracy": 6.5,
                "speed": 1.4,
                "heading": 180.0,
                "altitude": 55.0,
            },
            "is_moving": True,
            "event": "motionchange",
            "battery": {"level": 0.62, "is_charging": False},
            "activity": {"type": "walking"},
            "extras": {},
        },
        "device_id": "tag-17",
    }
    assert call(f"{base}/osmand/s3cret-tag", orjson.dumps(body), "application/json") == 200
    fix = received[-1]
    assert isinstance(fix, Fix)
    assert (fix.device, fix.t_fix, fix.speed_mps, fix.acc_m) == ("tag-17", NOW - 2, 1.4, 6.5)
    assert fix.battery_pct == pytest.approx(62.0)


def test_a_wrong_secret_or_an_unknown_device_is_refused(
    served: tuple[str, list[Fix | Rejection]],
) -> None:
    base, received = served
    q = urlencode({"id": "48241179", "timestamp": str(int(NOW)), "lat": "50.8", "lon": "4.3"})
    for url in (
        f"{base}/osmand/s3cret-tag?{q}",  # another device's secret
        f"{base}/osmand/guess?{q}",
        f"{base}/osmand/k7Qx-2vLm?{q.replace('48241179', 'phone-9')}",  # no secret configured
    ):
        n = len(received)
        assert call(url) == 403
        [rej] = received[n:]
        assert isinstance(rej, Rejection) and rej.reason == RejectReason.UNKNOWN_DEVICE
    assert call(f"{base}/osmand?{q}") == 404  # no secret at all


T = str(int(NOW))
R = RejectReason


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"id": "48241179", "lat": "50.8", "lon": "4.3"}, R.MISSING_FIELD),
        ({"id": "48241179", "timestamp": "x", "lat": "50.8", "lon": "4.3"}, R.BAD_TIMESTAMP),
        ({"id": "48241179", "timestamp": T, "lat": "95", "lon": "4.3"}, R.OUT_OF_RANGE),
        ({"id": "48241179", "timestamp": T, "lat": "abc", "lon": "4.3"}, R.BAD_TYPE),
        ({"timestamp": T, "lat": "50.8", "lon": "4.3"}, R.MISSING_FIELD),
    ],
)
def test_bad_requests_are_rejected_with_a_reason(
    served: tuple[str, list[Fix | Rejection]], params: dict[str, str], reason: RejectReason
) -> None:
    base, received = served
    n = len(received)
    assert call(f"{base}/osmand/k7Qx-2vLm?{urlencode(params)}") == 400
    [rej] = received[n:]
    assert isinstance(rej, Rejection) and rej.reason == reason
