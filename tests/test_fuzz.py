"""Every decoder is total: arbitrary bytes, arbitrary JSON values where its fields are
expected, and mutations of its valid samples give a fix, an event, an operator action or a
rejection with a specific reason, never an exception (and never ``internal_error``, which
is kept for decoder bugs). Seeded (derandomized) hypothesis runs, a few thousand examples per
decoder; ``scripts/fuzz`` runs a million mutated payloads the same way (benchmarks.fuzz).
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable
from urllib.parse import quote

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.fuzz import JSON_TOKENS, QUERY_TOKENS, Target, check, mutate, seal, targets
from ingest.model import Fix, RejectReason
from ingest.subscriber import decode_message
from tests.conftest import now

T_RECV = now()
TARGETS = {t.name: t for t in targets(T_RECV)}


def fuzz_settings(examples: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return settings(
        max_examples=examples,
        derandomize=True,  # seeded: the same examples on every run
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def decoded(target: Target, payload: bytes) -> str:
    """Decode; the outcome (``accepted`` or the reason), checked never to be an exception
    nor ``internal_error``."""
    outcome = check(target, target.decode(payload))
    assert outcome != RejectReason.INTERNAL_ERROR.value
    return outcome


# JSON texts, built as bytes so that they can hold what json.dumps cannot write: NaN and
# Infinity literals, numbers beyond 64 bits, lone surrogate escapes, deep nesting.
json_leaves = st.one_of(
    st.sampled_from(JSON_TOKENS),
    st.none().map(lambda _: b"null"),
    st.booleans().map(lambda b: b"true" if b else b"false"),
    st.integers(-(2**70), 2**70).map(lambda i: str(i).encode()),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: repr(f).encode()),
    st.text(max_size=12).map(orjson.dumps),
)
json_texts = st.recursive(
    json_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda xs: b"[" + b",".join(xs) + b"]"),
        st.lists(st.tuples(st.text(max_size=6), inner), max_size=4).map(
            lambda kv: b"{" + b",".join(orjson.dumps(k) + b":" + v for k, v in kv) + b"}"
        ),
    ),
    max_leaves=10,
)


def sample_keys(target: Target) -> list[str]:
    """Every object key of the target's samples, at any depth."""
    keys: set[str] = set()

    def walk(value: object) -> None:
        if isinstance(value, dict):
            keys.update(value)
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    for sample in target.samples:
        walk(orjson.loads(sample))
    return sorted(keys)


@st.composite
def json_documents(draw: st.DrawFn, target: Target) -> bytes:
    """A valid sample whose members (at any depth) are replaced, or joined, by arbitrary
    JSON values under the sample's own keys."""
    doc = orjson.loads(draw(st.sampled_from(target.samples)))
    keys = sample_keys(target)
    sentinels: list[bytes] = []

    def visit(value: object) -> None:
        if isinstance(value, dict):
            for k in list(value):
                if draw(st.booleans()):
                    sentinels.append(draw(json_texts))
                    value[k] = f"\x00{len(sentinels) - 1}\x00"
                else:
                    visit(value[k])
            if draw(st.booleans()):
                sentinels.append(draw(json_texts))
                value[draw(st.sampled_from(keys))] = f"\x00{len(sentinels) - 1}\x00"

    visit(doc)
    text = orjson.dumps(doc)
    for i, value in enumerate(sentinels):
        text = text.replace(orjson.dumps(f"\x00{i}\x00"), value, 1)
    return text


@st.composite
def queries(draw: st.DrawFn, target: Target) -> bytes:
    """Query strings and form bodies: the sample's parameter names (and others) with
    arbitrary values, escaped or not."""
    names = ["id", "deviceid", "timestamp", "lat", "lon", "speed", "accuracy", "batt", "x"]
    values = st.one_of(st.sampled_from(QUERY_TOKENS), st.text(max_size=12))
    pairs = draw(st.lists(st.tuples(st.sampled_from(names), values), max_size=10))
    base = draw(st.sampled_from(target.samples)) if draw(st.booleans()) else b""
    raw = draw(st.booleans())
    extra = "&".join(f"{k}={v if raw else quote(v)}" for k, v in pairs).encode()
    return base + (b"&" if base and extra else b"") + extra


JSON_TARGETS = [n for n, t in TARGETS.items() if t.kind == "json"]
QUERY_TARGETS = [n for n, t in TARGETS.items() if t.kind == "query"]


@pytest.mark.parametrize("name", list(TARGETS))
@fuzz_settings(500)
@given(payload=st.binary(max_size=400))
def test_arbitrary_bytes(name: str, payload: bytes) -> None:
    decoded(TARGETS[name], payload)


@pytest.mark.parametrize("name", list(TARGETS))
@fuzz_settings(1000)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 6))
def test_mutations_of_valid_samples(name: str, seed: int, n: int) -> None:
    target = TARGETS[name]
    rng = random.Random(seed)
    decoded(target, mutate(rng, rng.choice(target.samples), target.samples, target.kind, n))


@pytest.mark.parametrize("name", JSON_TARGETS)
@fuzz_settings(1000)
@given(data=st.data())
def test_arbitrary_json_values_in_every_field(name: str, data: st.DataObject) -> None:
    target = TARGETS[name]
    decoded(target, data.draw(json_documents(target)))


@pytest.mark.parametrize("name", JSON_TARGETS)
@fuzz_settings(300)
@given(payload=json_texts)
def test_arbitrary_json_documents(name: str, payload: bytes) -> None:
    decoded(TARGETS[name], payload)


@pytest.mark.parametrize("name", QUERY_TARGETS)
@fuzz_settings(1500)
@given(data=st.data())
def test_arbitrary_query_parameters(name: str, data: st.DataObject) -> None:
    target = TARGETS[name]
    decoded(target, data.draw(queries(target)))


def test_the_samples_are_accepted() -> None:
    """The mutations start from payloads every decoder takes."""
    for target in TARGETS.values():
        if target.name == "mqtt_topic":
            continue
        for sample in target.samples:
            assert decoded(target, sample) == "accepted", (target.name, sample)


@pytest.mark.parametrize(
    ("name", "payload", "reason"),
    [
        # The poison messages of a lost day: each one stopped all intake.
        ("event", {"type": ["panic"]}, RejectReason.BAD_TYPE),
        ("event", {"type": {"kind": "panic"}}, RejectReason.BAD_TYPE),
        ("event", {"type": "panic", "seq": [[[[1]]]]}, RejectReason.BAD_TYPE),
        ("ack", {"action": ["close"], "alarm_id": "a", "operator": "b"}, RejectReason.BAD_TYPE),
        ("ack", {"action": {"x": 1}, "alarm_id": "a", "operator": "b"}, RejectReason.BAD_TYPE),
        ("ack", {"alarm_id": ["a"], "operator": "b"}, RejectReason.BAD_TYPE),
        ("fix", {"lat": [50.8], "lon": 4.3}, RejectReason.BAD_TYPE),
        ("fix", {"lat": True, "lon": 4.3}, RejectReason.BAD_TYPE),
        ("fix", {"lat": 50.8, "lon": 4.3, "seq": {"n": 1}}, RejectReason.BAD_TYPE),
        ("owntracks_location", {"_type": ["location"]}, RejectReason.NOT_A_POSITION),
    ],
)
def test_lists_and_objects_where_text_is_expected_are_bad_types(
    name: str, payload: dict[str, object], reason: RejectReason
) -> None:
    body = {"ts": T_RECV, **payload}
    if name.startswith("owntracks"):
        body = {"tst": int(T_RECV), "lat": 50.8, "lon": 4.3, **payload}
    assert decoded(TARGETS[name], orjson.dumps(body)) == reason.value


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"ts": %d, "lat": 1e999, "lon": 4}', RejectReason.MALFORMED_JSON),
        (b'{"ts": %d, "lat": NaN, "lon": 4}', RejectReason.MALFORMED_JSON),
        (b'{"ts": %d, "lat": Infinity, "lon": 4}', RejectReason.MALFORMED_JSON),
        (b'{"ts": %d, "lat": 18446744073709551616, "lon": 4}', RejectReason.OUT_OF_RANGE),
        (b'{"ts": 1%d00000000000000000000, "lat": 1, "lon": 4}', RejectReason.BAD_TIMESTAMP),
        (b'{"ts": %d, "lat": ' + b"[" * 1100 + b"]" * 1100 + b"}", RejectReason.MALFORMED_JSON),
        (b'{"ts": %d, "seq": ' + b"[" * 900 + b"]" * 900 + b', "lat": 1, "lon": 4}', "bad_type"),
        (
            '{"ts": "２０２６-11-23T10:00:00Z", "lat": 1, "lon": 4, "x": %d}'.encode(),
            "bad_timestamp",
        ),
        (b'{"ts": "0001-01-01T00:00:00+23:59", "lat": 1, "lon": 4, "x": %d}', "bad_timestamp"),
        (b'{"ts": "' + b"2" * 5000 + b'", "lat": 1, "lon": 4, "x": %d}', "bad_timestamp"),
    ],
)
def test_hostile_numbers_and_nesting_have_their_reason(raw: bytes, reason: str) -> None:
    assert decoded(TARGETS["fix"], raw % int(T_RECV)) == reason


def test_a_decoder_bug_becomes_an_internal_error_with_the_payload_digest(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The wall of the MQTT input: whatever a decoder raises is a rejection, logged with the
    payload's SHA-256 and never the payload (it can hold a position)."""
    import ingest.subscriber

    def broken(topic: str, payload: bytes | bytearray, t_recv: float) -> Fix:
        raise ValueError(f"cannot read {payload!r}")

    monkeypatch.setattr(ingest.subscriber, "decode", broken)
    payload = orjson.dumps({"ts": T_RECV, "lat": 50.8503, "lon": 4.3517})
    with caplog.at_level(logging.WARNING, logger="ingest.rejections"):
        out = decode_message("devices/tag-17/fix", payload, T_RECV, {}, {})
    assert out.__class__.__name__ == "Rejection"
    assert getattr(out, "reason", None) == RejectReason.INTERNAL_ERROR
    digest = hashlib.sha256(payload).hexdigest()
    assert digest in getattr(out, "detail", "")
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    text = record.getMessage()
    assert digest in text and "ValueError" in text
    assert "50.8503" not in text and "cannot read" not in text


def test_an_encrypted_envelope_holds_any_plaintext() -> None:
    """The sealed plaintext is decoded like a clear one (the fuzz targets rely on it)."""
    out = TARGETS["owntracks_envelope"].decode(seal(b"[1, 2]", bytes(24)))
    assert check(TARGETS["owntracks_envelope"], out) == "encrypted"
