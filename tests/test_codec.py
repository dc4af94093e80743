from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.batch import build_batch
from ingest.codec import decode as decode_any
from ingest.codec import decode_fix
from ingest.model import Fix, OperatorAction, Rejection, RejectReason
from tests.conftest import T0

#: The decoders' arrival time: the tests' injected clock, never the wall clock.
NOW = T0


def _iso(t: float, hours: int = 0, zone: bool = True) -> str:
    """``t`` written as ISO 8601 at UTC + ``hours`` (``zone`` False: no offset at all)."""
    text = datetime.fromtimestamp(t, timezone(timedelta(hours=hours))).isoformat()
    return text if zone else text[:19]


TOPIC = "devices/tag-17/fix"


def decode(payload: object, topic: str = TOPIC) -> Fix | Rejection:
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return decode_fix(topic, raw, NOW)


def test_full_fix_with_iso_time() -> None:
    fix = decode(
        {
            "ts": _iso(NOW - 2)[:19] + ".5Z",
            "lat": 50.85,
            "lon": 4.35,
            "acc": 8,
            "alt": 60,
            "speed": 1.4,
            "heading": 90,
            "battery": 80,
            "seq": 17,
        }
    )
    assert fix == Fix("tag-17", NOW - 1.5, NOW, 50.85, 4.35, 8.0, 60.0, 1.4, 90.0, 80.0, 17)


def test_epoch_time_and_offsets_other_than_utc() -> None:
    a = decode({"ts": NOW - 3, "lat": 0, "lon": 0})
    b = decode({"ts": _iso(NOW - 3, hours=1), "lat": 0, "lon": 0})
    assert isinstance(a, Fix) and isinstance(b, Fix)
    assert a.t_fix == b.t_fix == NOW - 3


@pytest.mark.parametrize("acc", [0, None])
def test_zero_or_missing_accuracy_means_unknown(acc: object) -> None:
    body: dict[str, object] = {"ts": NOW, "lat": 50.0, "lon": 4.0}
    if acc is not None:
        body["acc"] = acc
    fix = decode(body)
    assert isinstance(fix, Fix) and math.isnan(fix.acc_m)


@pytest.mark.parametrize(
    ("payload", "reason", "words"),
    [
        (b"{nope", RejectReason.MALFORMED_JSON, "JSON"),
        (b"\xff\xfe", RejectReason.MALFORMED_JSON, "JSON"),
        ([1, 2], RejectReason.NOT_AN_OBJECT, "object"),
        ({"lat": 50, "lon": 4}, RejectReason.MISSING_FIELD, "'ts'"),
        ({"ts": NOW, "lon": 4}, RejectReason.MISSING_FIELD, "'lat'"),
        ({"ts": NOW, "lat": "50", "lon": 4}, RejectReason.BAD_TYPE, "'lat'"),
        ({"ts": NOW, "lat": True, "lon": 4}, RejectReason.BAD_TYPE, "'lat'"),
        ({"ts": NOW, "lat": 91, "lon": 4}, RejectReason.OUT_OF_RANGE, "'lat'"),
        ({"ts": NOW, "lat": 50, "lon": -180.5}, RejectReason.OUT_OF_RANGE, "'lon'"),
        ({"ts": NOW, "lat": 50, "lon": 4, "acc": -1}, RejectReason.OUT_OF_RANGE, "'acc'"),
        ({"ts": NOW, "lat": 50, "lon": 4, "battery": 101}, RejectReason.OUT_OF_RANGE, "'battery'"),
        ({"ts": NOW, "lat": 50, "lon": 4, "seq": -2}, RejectReason.BAD_TYPE, "'seq'"),
        (
            {"ts": _iso(NOW, zone=False), "lat": 50, "lon": 4},
            RejectReason.BAD_TIMESTAMP,
            "UTC offset",
        ),
        ({"ts": "yesterday", "lat": 50, "lon": 4}, RejectReason.BAD_TIMESTAMP, "ISO 8601"),
        ({"ts": 12, "lat": 50, "lon": 4}, RejectReason.BAD_TIMESTAMP, "plausible"),
        ({"ts": NOW + 3600, "lat": 50, "lon": 4}, RejectReason.FUTURE_TIMESTAMP, "clock"),
        ({"ts": NOW - 8 * 86400, "lat": 50, "lon": 4}, RejectReason.STALE_TIMESTAMP, "days"),
        (b"{" + b" " * 70000 + b"}", RejectReason.TOO_LARGE, "bytes"),
    ],
)
def test_rejections_name_the_reason_and_the_field(
    payload: object, reason: RejectReason, words: str
) -> None:
    r = decode(payload)
    assert isinstance(r, Rejection)
    assert r.reason == reason
    assert words in r.detail
    assert r.device == "tag-17"
    assert r.to_dict()["reason"] == reason.value


@pytest.mark.parametrize(
    "topic", ["devices//fix", "devices/a/b/fix", "owntracks/x/y", "devices/a/event"]
)
def test_bad_topics_are_rejected(topic: str) -> None:
    r = decode({"ts": NOW, "lat": 0, "lon": 0}, topic)
    assert isinstance(r, Rejection) and r.reason == RejectReason.BAD_TOPIC


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_never_raises_on_arbitrary_bytes(payload: bytes) -> None:
    assert isinstance(decode_fix(TOPIC, payload, NOW), Fix | Rejection)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=500, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "ts": json_values,
            "lat": json_values,
            "lon": json_values,
            "acc": json_values,
            "seq": json_values,
        },
    )
)
def test_never_raises_on_arbitrary_json_objects(body: dict[str, object]) -> None:
    out = decode_fix(TOPIC, orjson.dumps(body), NOW)
    if isinstance(out, Fix):
        assert -90 <= out.lat <= 90 and -180 <= out.lon <= 180 and math.isfinite(out.t_fix)


def test_batch_keeps_known_devices_and_rejects_unknown_ones() -> None:
    fixes = [
        Fix("a", NOW, NOW, 1.0, 2.0, 5.0),
        Fix("x", NOW, NOW, 0, 0),
        Fix("b", NOW, NOW, 3.0, 4.0),
    ]
    batch, rejected = build_batch(fixes, {"a": 0, "b": 1})
    assert batch.slot.tolist() == [0, 1]
    assert batch.lat.tolist() == [1.0, 3.0]
    assert math.isnan(batch.acc_m[1])
    assert [r.reason for r in rejected] == [RejectReason.UNKNOWN_DEVICE]
    assert "'x'" in rejected[0].detail


# Operator actions on cic/acks.


def test_an_acknowledgement_and_a_close() -> None:
    ack = decode_any(
        "cic/acks", orjson.dumps({"alarm_id": "a-1", "operator": " op 4 ", "ts": NOW}), NOW
    )
    assert ack == OperatorAction("a-1", "op 4", "acknowledge", "", NOW, NOW)
    close = decode_any(
        "cic/acks",
        orjson.dumps(
            {"alarm_id": "a-1", "operator": "op 4", "ts": NOW, "action": "close", "note": "why"}
        ),
        NOW,
    )
    assert isinstance(close, OperatorAction) and (close.action, close.note) == ("close", "why")


def test_on_an_accounts_topic_the_operator_is_the_account() -> None:
    # The broker lets only desk-1 write cic/acks/desk-1: a name the payload claims is kept
    # beside the account, never instead of it.
    claimed = decode_any(
        "cic/acks/desk-1", orjson.dumps({"alarm_id": "a-1", "operator": "chief", "ts": NOW}), NOW
    )
    assert isinstance(claimed, OperatorAction) and claimed.operator == "desk-1 (chief)"
    same = decode_any(
        "cic/acks/desk-1", orjson.dumps({"alarm_id": "a-1", "operator": "desk-1", "ts": NOW}), NOW
    )
    assert isinstance(same, OperatorAction) and same.operator == "desk-1"
    unnamed = decode_any("cic/acks/desk-1", orjson.dumps({"alarm_id": "a-1", "ts": NOW}), NOW)
    assert isinstance(unnamed, OperatorAction) and unnamed.operator == "desk-1"
    # On cic/acks (no accounts) the payload must name the operator.
    anonymous = decode_any("cic/acks", orjson.dumps({"alarm_id": "a-1", "ts": NOW}), NOW)
    assert isinstance(anonymous, Rejection) and anonymous.reason == RejectReason.MISSING_FIELD
    for topic in ("cic/acks/", "cic/acks/desk-1/x"):
        out = decode_any(topic, b'{"alarm_id": "a-1"}', NOW)
        assert isinstance(out, Rejection) and out.reason == RejectReason.BAD_TOPIC, topic


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"operator": "op", "ts": NOW}, RejectReason.MISSING_FIELD),
        ({"alarm_id": "a", "operator": "", "ts": NOW}, RejectReason.BAD_TYPE),
        (
            {"alarm_id": "a", "operator": "op", "ts": NOW, "action": "delete"},
            RejectReason.UNKNOWN_ACTION,
        ),
        (
            {"alarm_id": "a", "operator": "op", "ts": NOW, "action": "close"},
            RejectReason.MISSING_FIELD,
        ),
        ({"alarm_id": "a", "operator": "op"}, RejectReason.MISSING_FIELD),
    ],
)
def test_bad_operator_actions_are_rejected_with_a_reason(
    body: dict[str, object], reason: RejectReason
) -> None:
    out = decode_any("cic/acks", orjson.dumps(body), NOW)
    assert isinstance(out, Rejection) and out.reason == reason


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_operator_actions_never_raise_on_arbitrary_bytes(payload: bytes) -> None:
    assert isinstance(decode_any("cic/acks", payload, NOW), OperatorAction | Rejection)
