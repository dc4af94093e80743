"""OwnTracks payloads, as the Android and iOS apps send them, become fixes of the mapped
device; everything else is rejected with a reason, and nothing raises."""

from __future__ import annotations

import base64
import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.model import Fix, Rejection, RejectReason
from ingest.owntracks import aliases, decode_owntracks, keys
from proximity.cases import parse_case_file
from tests.conftest import T0

NOW = T0
KNOWN = aliases(
    [
        ("phone-42", {"owntracks": {"user": "jane", "device": "pixel"}}),
        ("phone-43", {"owntracks": {"user": "els", "device": "iphone"}}),
        ("tag-17", {"reporting_interval_s": 60}),
    ]
)

# A location from the Android app (floats where it sends them: acc, vel, alt).
ANDROID = (
    b'{"_type":"location","acc":12.5,"alt":61.0,"batt":78,"bs":1,"conn":"m",'
    b'"created_at":%d,"lat":50.8503124,"lon":4.3517211,"m":1,"t":"u","tid":"ja",'
    b'"tst":%d,"vac":3,"vel":18}' % (int(T0) - 1, int(T0) - 5)
)
# A location from the iOS app (integers, course over ground, a topic field).
IOS = (
    b'{"_type":"location","acc":5,"alt":48,"batt":91,"bs":2,"cog":270,"conn":"w",'
    b'"lat":50.84,"lon":4.36,"m":2,"tid":"ei","topic":"owntracks/els/iphone",'
    b'"tst":%d,"vac":4,"vel":0}' % (int(T0) - 10)
)


def test_android_location() -> None:
    fix = decode_owntracks("owntracks/jane/pixel", ANDROID, NOW, KNOWN)
    assert isinstance(fix, Fix)
    assert (fix.device, fix.t_fix, fix.lat, fix.lon, fix.acc_m) == (
        "phone-42",
        (T0 - 5),
        50.8503124,
        4.3517211,
        12.5,
    )
    assert fix.speed_mps == pytest.approx(5.0)  # 18 km/h
    assert (fix.alt_m, fix.battery_pct) == (61.0, 78.0)


def test_ios_location() -> None:
    fix = decode_owntracks("owntracks/els/iphone", IOS, NOW, KNOWN)
    assert isinstance(fix, Fix)
    assert (fix.device, fix.acc_m, fix.heading_deg, fix.speed_mps) == ("phone-43", 5.0, 270.0, 0.0)


@pytest.mark.parametrize("acc", [0, None])
def test_zero_or_missing_accuracy_is_unknown(acc: object) -> None:
    body = {"_type": "location", "lat": 50.8, "lon": 4.3, "tst": (int(T0) - 10)}
    if acc is not None:
        body["acc"] = acc
    fix = decode_owntracks("owntracks/jane/pixel", orjson.dumps(body), NOW, KNOWN)
    assert isinstance(fix, Fix) and math.isnan(fix.acc_m)


def test_a_transition_carries_the_position_of_its_moment() -> None:
    body = {
        "_type": "transition",
        "event": "enter",
        "desc": "work",
        "lat": 50.85,
        "lon": 4.35,
        "acc": 30,
        "tst": (int(T0) - 20),
        "wtst": int(T0) - 30 * 86400,  # when the waypoint was made
        "t": "c",
        "tid": "ja",
    }
    fix = decode_owntracks("owntracks/jane/pixel/event", orjson.dumps(body), NOW, KNOWN)
    assert isinstance(fix, Fix) and (fix.t_fix, fix.acc_m) == ((T0 - 20), 30.0)


JANE = "owntracks/jane/pixel"
R = RejectReason


def loc(**fields: object) -> bytes:
    return orjson.dumps({"_type": "location", **fields})


@pytest.mark.parametrize(
    ("topic", "payload", "reason", "says"),
    [
        (JANE, b'{"_type":"encrypted","data":"n+Xr0p...=="}', R.ENCRYPTED, "no key"),
        (JANE, b'{"_type":"lwt","tst":%d}' % (int(T0) - 1000), R.NOT_A_POSITION, "'lwt'"),
        (JANE, b'{"_type":"card","name":"Jane"}', R.NOT_A_POSITION, "card"),
        ("owntracks/bob/phone", ANDROID, R.UNKNOWN_DEVICE, "bob"),
        ("owntracks/jane", ANDROID, R.BAD_TOPIC, "expected"),
        (JANE, loc(lat=50.8, lon=4.3), R.MISSING_FIELD, "tst"),
        (JANE, loc(lat=95, lon=4.3, tst=(int(T0) - 10)), R.OUT_OF_RANGE, "lat"),
        (JANE, loc(lat="50.8", lon=4.3, tst=(int(T0) - 10)), R.BAD_TYPE, "lat"),
        (JANE, loc(lat=50.8, lon=4.3, tst=int(T0) + 3600), R.FUTURE_TIMESTAMP, "after arrival"),
        (JANE, b"not json", R.MALFORMED_JSON, "JSON"),
        (JANE, loc(lat=50.8, lon=4.3, tst=int(T0) - 8 * 86400), R.STALE_TIMESTAMP, "days"),
    ],
)
def test_rejections_say_why(topic: str, payload: bytes, reason: RejectReason, says: str) -> None:
    out = decode_owntracks(topic, payload, NOW, KNOWN)
    assert isinstance(out, Rejection) and out.reason == reason
    assert says in out.detail


def test_the_same_tst_twice_is_the_same_fix() -> None:
    a = decode_owntracks("owntracks/jane/pixel", ANDROID, NOW, KNOWN)
    b = decode_owntracks(
        "owntracks/jane/pixel", ANDROID.replace(b'"t":"u"', b'"t":"p"'), NOW, KNOWN
    )
    assert isinstance(a, Fix) and isinstance(b, Fix) and a.t_fix == b.t_fix  # the engine drops b


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_never_raises_on_arbitrary_bytes(payload: bytes) -> None:
    out = decode_owntracks("owntracks/jane/pixel", payload, NOW, KNOWN)
    assert isinstance(out, Fix | Rejection) and (isinstance(out, Fix) or out.reason)


def test_the_case_file_checks_its_owntracks_aliases() -> None:
    doc = {
        "cases": [],
        "devices": [
            {"id": "a", "owntracks": {"user": "jane", "device": "pixel"}},
            {"id": "b", "owntracks": {"user": "jane", "device": "pixel"}},
            {"id": "c", "owntracks": {"user": "jane/x", "device": "pixel"}},
        ],
    }
    with pytest.raises(Exception) as info:
        parse_case_file(doc)
    text = str(info.value)
    assert "devices[1] (b): OwnTracks jane/pixel is already device a" in text
    assert "devices[2] (c): 'owntracks' must be" in text


def test_an_encrypted_payload_opens_with_the_apps_key_and_only_with_it() -> None:
    from nacl.secret import SecretBox
    from nacl.utils import random

    secret = "correct horse battery"
    devices = [("phone-42", {"owntracks": {"user": "jane", "device": "pixel", "key": secret}})]
    keys_, known = keys(devices), aliases(devices)
    # As the apps do it: the secret zero-padded to 32 bytes, nonce then box, base64.
    nonce = random(24)
    box = SecretBox(secret.encode().ljust(32, b"\0")).encrypt(ANDROID, nonce)
    payload = orjson.dumps({"_type": "encrypted", "data": base64.b64encode(box).decode()})
    fix = decode_owntracks(JANE, payload, NOW, known, keys_)
    assert isinstance(fix, Fix) and (fix.device, fix.acc_m) == ("phone-42", 12.5)
    wrong = keys([("phone-42", {"owntracks": {"user": "jane", "device": "pixel", "key": "x"}})])
    out = decode_owntracks(JANE, payload, NOW, known, wrong)
    assert isinstance(out, Rejection) and out.reason == R.ENCRYPTED and "wrong key" in out.detail
    garbled = orjson.dumps({"_type": "encrypted", "data": "%%%"})
    out = decode_owntracks(JANE, garbled, NOW, known, keys_)
    assert isinstance(out, Rejection) and "base64" in out.detail


def test_an_app_with_a_key_has_its_plaintext_rejected() -> None:
    # Whoever publishes plaintext on the app's topic does not hold its key.
    devices = [("phone-42", {"owntracks": {"user": "jane", "device": "pixel", "key": "s3cret"}})]
    out = decode_owntracks(JANE, ANDROID, NOW, aliases(devices), keys(devices))
    assert isinstance(out, Rejection) and out.reason == R.NOT_ENCRYPTED
    assert (out.device, "plaintext") == ("phone-42", out.detail.split()[0])
    # The same payload from an app without a key is a fix.
    plain = [("phone-42", {"owntracks": {"user": "jane", "device": "pixel"}})]
    assert isinstance(decode_owntracks(JANE, ANDROID, NOW, aliases(plain), keys(plain)), Fix)
