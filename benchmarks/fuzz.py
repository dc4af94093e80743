"""Fuzzing every input decoder: whatever the bytes, the answer is a fix, an event, an
operator action or a rejection with a reason, never an exception.

Run with ``scripts/fuzz`` (``--help`` for the options). Each payload is a valid sample of one
decoder (:func:`targets`: native fixes, device events and acknowledgements, OwnTracks
locations and transitions, plain and encrypted, OsmAnd query strings and form bodies,
Traccar Client's JSON body, and MQTT topics) with one to four mutations (:func:`mutate`):
bit flips, byte replacements, insertions of random bytes or of tokens that have broken
parsers before (``NaN``, ``1e999``, ``①``, ``%00``, ...), deletions, duplications, splices
with another sample, and the substitution of one JSON value (or one query parameter) by a
hostile one (a list where text is expected, a huge integer, deep nesting, ...). The run is
seeded: the same seed gives the same payloads.

The decoders are called directly, without the wall of :mod:`ingest.subscriber` that turns an
exception into an ``internal_error`` rejection: an exception that escapes is a decoder that is
not total. The report gives, per decoder, the payloads, what they became (accepted, or
rejected by reason) and the escaped exceptions (the first ones with their payload); the exit
status is 1 when any escaped or a decoder returned something else than its result types.

``--atheris`` runs the same decoders under atheris, the coverage-guided fuzzer (optional:
``pip install -e '.[fuzz]'``, which ``scripts/fuzz --atheris`` does when it is missing).
"""

from __future__ import annotations

import argparse
import base64
import math
import random
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode

import orjson
from nacl.secret import SecretBox

from ingest.codec import decode
from ingest.model import CommandAck, DeviceEvent, Fix, OperatorAction, Rejection
from ingest.osmand import decode_request
from ingest.owntracks import decode_owntracks
from ingest.subscriber import decode_message

DEFAULT_PAYLOADS = 1_000_000
DEFAULT_SEED = 17
#: Escaped exceptions shown in full (the rest are counted).
SHOW_ESCAPED = 5

OWNTRACKS_APP = ("jane", "pixel")
#: An app without a key, whose plaintext payloads are fuzzed (an app with a key has them
#: rejected as not_encrypted).
OWNTRACKS_PLAIN = ("joe", "nokia")
OWNTRACKS_KNOWN = {OWNTRACKS_APP: "phone-42", OWNTRACKS_PLAIN: "phone-43"}
OWNTRACKS_SECRET = b"correct horse battery".ljust(32, b"\0")
OWNTRACKS_KEYS = {OWNTRACKS_APP: OWNTRACKS_SECRET}

#: JSON texts that have broken parsers and decoders: other types where a scalar is expected,
#: numbers beyond 64 bits or any float, the non-standard literals, other scripts' digits,
#: nesting near and beyond the parser's depth limit, texts that are almost times.
JSON_TOKENS: tuple[bytes, ...] = (
    b"null",
    b"true",
    b"false",
    b"[]",
    b"{}",
    b'["panic"]',
    b'["close"]',
    b'{"type": "panic"}',
    b"[[[[1]]]]",
    b"0",
    b"-0",
    b"-1",
    b"0.0000001",
    b"1e308",
    b"1e999",
    b"-1e999",
    b"1E-400",
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"9223372036854775807",
    b"9223372036854775808",
    b"-9223372036854775809",
    b"18446744073709551616",
    b"123456789012345678901234567890123456789",
    b'""',
    b'" "',
    b'"panic"',
    b'"close"',
    b'"acknowledge"',
    '"①"'.encode(),
    '"²"'.encode(),
    '"١٢٣"'.encode(),
    '"１０"'.encode(),
    b'"1_0"',
    b'" 5"',
    b'"inf"',
    b'"nan"',
    b'"0x10"',
    b'"\\u0000"',
    b'"\\ud800"',
    b'"\\udfff\\ud800"',
    b'"2026-11-23T10:00:00"',
    b'"2026-11-23T10:00:00+99:00"',
    b'"0001-01-01T00:00:00+23:59"',
    b'"9999-12-31T23:59:59-23:59"',
    b'"2026-W47-1T10:00Z"',
    b'"' + b"x" * 5000 + b'"',
    b"[" * 500 + b"]" * 500,
    b"[" * 1100 + b"]" * 1100,
    b'{"a":' * 300 + b"1" + b"}" * 300,
)
#: Query and form values in the same spirit, as they travel (percent-escaped or not).
QUERY_TOKENS: tuple[str, ...] = (
    "",
    "1_0",
    " 10",
    "10 ",
    "+5",
    "１０",
    "²",
    "①",
    "١٢٣",
    "inf",
    "-inf",
    "nan",
    "NaN",
    "0x10",
    "1e999",
    "-1e999",
    "1e-400",
    "1.0E-4",
    "9" * 400,
    "1." + "0" * 50,
    "2026-11-23T10:00:00",
    "2026-11-23T10:00:00+99:00",
    "true",
    "[1]",
    "%",
    "%zz",
    "%00",
    "%ff%fe",
    "%ED%A0%80",
    "&",
    "=",
    "==",
    "\x00",
    "é",
)
#: Bytes inserted on their own.
BYTE_TOKENS: tuple[bytes, ...] = (
    b"\x00",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b'"',
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"-",
    b".",
    b"e",
    b"E",
    b"0",
    b"9",
    b"_",
    b"%",
    b"&",
    b"=",
    b"+",
    b"/",
    b"#",
    "²".encode(),
    "①".encode(),
)


Result = Fix | DeviceEvent | OperatorAction | Rejection


@dataclass(frozen=True)
class Target:
    """One decoder under test: ``decode`` takes the payload's bytes; ``samples`` are valid
    payloads to mutate; ``kind`` says which substitution applies (``json``, ``query``, or
    ``text`` for none); ``results`` are the types it may return."""

    name: str
    decode: Callable[[bytes], object]
    samples: tuple[bytes, ...]
    kind: str
    results: tuple[type, ...]


def seal(plaintext: bytes, nonce: bytes) -> bytes:
    """An OwnTracks encrypted envelope of ``plaintext`` under the fuzzed app's key."""
    box = SecretBox(OWNTRACKS_SECRET).encrypt(plaintext, nonce)
    return orjson.dumps({"_type": "encrypted", "data": base64.b64encode(bytes(box)).decode()})


def targets(t_recv: float) -> list[Target]:
    """Every decoder, with valid samples stamped a few seconds before ``t_recv``."""
    ts = t_recv - 5.0
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
    dump = orjson.dumps
    fix = {"ts": ts, "lat": 50.8503, "lon": 4.3517, "acc": 8, "alt": 60, "speed": 1.4}
    fixes = (
        dump({**fix, "heading": 90, "battery": 80, "seq": 17}),
        dump({"ts": iso, "lat": -33.9, "lon": 151.2}),
        dump({"ts": int(ts), "lat": 0, "lon": 0, "acc": 0, "seq": 0}),
    )
    events = (
        dump({"ts": ts, "type": "panic", "lat": 50.85, "lon": 4.35, "acc": 12, "seq": 3}),
        dump({"ts": iso, "type": "strap_removed"}),
    )
    acks = (
        dump({"alarm_id": "9c558f23", "operator": "desk 4", "ts": ts}),
        dump(
            {
                "alarm_id": "9c558f23",
                "operator": "desk 4",
                "ts": iso,
                "action": "close",
                "note": "offender detained",
            }
        ),
    )
    tst = int(ts)
    location = dump(
        {
            "_type": "location",
            "acc": 12.5,
            "alt": 61.0,
            "batt": 78,
            "bs": 1,
            "conn": "m",
            "lat": 50.8503124,
            "lon": 4.3517211,
            "m": 1,
            "t": "u",
            "tid": "ja",
            "tst": tst,
            "vac": 3,
            "vel": 18,
            "cog": 270,
        }
    )
    transition = dump(
        {
            "_type": "transition",
            "acc": 10,
            "desc": "home",
            "event": "leave",
            "lat": 50.85,
            "lon": 4.35,
            "t": "c",
            "tid": "ja",
            "tst": tst,
            "wtst": tst - 600,
        }
    )
    query = urlencode(
        {
            "id": "48241179",
            "timestamp": str(tst),
            "lat": "50.8503",
            "lon": "4.3517",
            "speed": "10.0",
            "bearing": "90.0",
            "altitude": "60.0",
            "accuracy": "12.0",
            "batt": "77.0",
        }
    ).encode()
    query_iso = urlencode(
        {
            "deviceid": "tag-17",
            "timestamp": iso,
            "lat": "50.84",
            "lon": "4.36",
            "accuracy": "1.0E-4",
        }
    ).encode()
    query_ms = f"id=tag-17&timestamp={tst * 1000}&lat=50.1&lon=-4.2".encode()
    traccar = dump(
        {
            "location": {
                "timestamp": iso,
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
    )
    mqtt = (Fix, DeviceEvent, OperatorAction, CommandAck, Rejection)
    command_acks = (
        orjson.dumps({"command_id": "6f0c3d1e-8b1a-5c52-9c1e-2a4b7d9e0f11", "status": "ok"}),
        orjson.dumps(
            {"command_id": "6f0c3d1e", "status": "rejected", "detail": "no GPS", "ts": t_recv}
        ),
    )
    http = (Fix, Rejection)
    envelope_nonce = bytes(range(24))

    def owntracks(topic: str) -> Callable[[bytes], object]:
        return lambda p: decode_owntracks(topic, p, t_recv, OWNTRACKS_KNOWN, OWNTRACKS_KEYS)

    def osmand(query: bool, ctype: str) -> Callable[[bytes], object]:
        def run(p: bytes) -> object:
            out = (
                decode_request(p, "", b"", t_recv)
                if query
                else decode_request(b"", ctype, p, t_recv)
            )
            return out[1] if isinstance(out, tuple) else out

        return run

    def sealed(p: bytes) -> object:
        # The plaintext is fuzzed inside a valid box: what a key holder could send.
        return decode_owntracks(
            "owntracks/jane/pixel",
            seal(p, envelope_nonce),
            t_recv,
            OWNTRACKS_KNOWN,
            OWNTRACKS_KEYS,
        )

    def topic(p: bytes) -> object:
        # The topic is fuzzed (as the broker hands it on: text), the payload is valid.
        return decode_message(
            p.decode("utf-8", "replace"), fixes[0], t_recv, OWNTRACKS_KNOWN, OWNTRACKS_KEYS
        )

    return [
        Target("fix", lambda p: decode("devices/tag-17/fix", p, t_recv), fixes, "json", mqtt),
        Target("event", lambda p: decode("devices/tag-17/event", p, t_recv), events, "json", mqtt),
        Target("ack", lambda p: decode("cic/acks", p, t_recv), acks, "json", mqtt),
        Target(
            "command_ack",
            lambda p: decode("devices/tag-17/cmd/ack", p, t_recv),
            command_acks,
            "json",
            mqtt,
        ),
        Target("owntracks_location", owntracks("owntracks/joe/nokia"), (location,), "json", http),
        Target(
            "owntracks_transition",
            owntracks("owntracks/joe/nokia/event"),
            (transition,),
            "json",
            http,
        ),
        Target("owntracks_encrypted", sealed, (location,), "json", http),
        Target(
            "owntracks_envelope",
            owntracks("owntracks/jane/pixel"),
            (seal(location, envelope_nonce),),
            "json",
            http,
        ),
        Target("osmand_query", osmand(True, ""), (query, query_iso, query_ms), "query", http),
        Target(
            "osmand_form",
            osmand(False, "application/x-www-form-urlencoded"),
            (query, query_iso, query_ms),
            "query",
            http,
        ),
        Target("traccar_json", osmand(False, "application/json"), (traccar,), "json", http),
        Target(
            "mqtt_topic",
            topic,
            (
                b"devices/tag-17/fix",
                b"devices/tag-17/event",
                b"cic/acks",
                b"cic/acks/desk-4",
                b"owntracks/jane/pixel",
                b"owntracks/jane/pixel/event",
            ),
            "text",
            mqtt,
        ),
    ]


# Mutations. Each takes the generator, the payload and the target's other samples.

_SENTINEL = "\x00fuzz\x00"
_SENTINEL_JSON = orjson.dumps(_SENTINEL)


def _paths(value: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def substitute_json(rng: random.Random, payload: bytes) -> bytes:
    """Replace one value of the JSON document (or add a member to one of its objects) with a
    hostile JSON text; payloads that are no longer JSON get the token spliced in."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return insert(rng, payload, rng.choice(JSON_TOKENS))
    paths = _paths(doc)
    path = rng.choice(paths)
    if not path:
        return rng.choice(JSON_TOKENS)
    parent: object = doc
    for step in path[:-1]:
        parent = parent[step]  # type: ignore[index]
    if isinstance(parent, dict) and rng.random() < 0.2:
        parent[rng.choice(("ts", "type", "action", "lat", "_type", "data", "x"))] = _SENTINEL
    else:
        parent[path[-1]] = _SENTINEL  # type: ignore[index]
    try:
        text = orjson.dumps(doc)
    except orjson.JSONEncodeError:  # nested beyond orjson's limit by an earlier substitution
        return insert(rng, payload, rng.choice(JSON_TOKENS))
    return text.replace(_SENTINEL_JSON, rng.choice(JSON_TOKENS), 1)


def substitute_query(rng: random.Random, payload: bytes) -> bytes:
    """Replace, drop, repeat or add one parameter of a query string or form body."""
    pairs = parse_qsl(payload.decode("latin-1"), keep_blank_values=True)
    if not pairs:
        return payload + b"&" + rng.choice(QUERY_TOKENS).encode()
    i = rng.randrange(len(pairs))
    value = rng.choice(QUERY_TOKENS)
    op = rng.randrange(4)
    if op == 0:
        pairs[i] = (pairs[i][0], value)
    elif op == 1:
        del pairs[i]
    elif op == 2:
        pairs.insert(i, (pairs[i][0], value))
    else:
        pairs[i] = (value, pairs[i][1])
    if rng.random() < 0.5:  # as a client that forgets to escape would send it
        return "&".join(f"{k}={v}" for k, v in pairs).encode()
    return "&".join(f"{quote(k)}={quote(v)}" for k, v in pairs).encode()


def flip(rng: random.Random, payload: bytes) -> bytes:
    if not payload:
        return bytes([rng.randrange(256)])
    i = rng.randrange(len(payload))
    return payload[:i] + bytes([payload[i] ^ (1 << rng.randrange(8))]) + payload[i + 1 :]


def replace_byte(rng: random.Random, payload: bytes) -> bytes:
    if not payload:
        return rng.choice(BYTE_TOKENS)
    i = rng.randrange(len(payload))
    return payload[:i] + rng.choice(BYTE_TOKENS)[:1] + payload[i + 1 :]


def insert(rng: random.Random, payload: bytes, what: bytes | None = None) -> bytes:
    if what is None:
        r = rng.random()
        if r < 0.4:
            what = rng.choice(BYTE_TOKENS)
        elif r < 0.7:
            what = rng.randbytes(rng.randint(1, 8))
        else:
            what = rng.choice(JSON_TOKENS)
    i = rng.randrange(len(payload) + 1)
    return payload[:i] + what + payload[i:]


def delete(rng: random.Random, payload: bytes) -> bytes:
    if not payload:
        return payload
    i = rng.randrange(len(payload))
    return payload[:i] + payload[i + rng.randint(1, 16) :]


def duplicate(rng: random.Random, payload: bytes) -> bytes:
    if not payload:
        return payload
    i = rng.randrange(len(payload))
    j = min(len(payload), i + rng.randint(1, 32))
    return payload[:j] + payload[i:j] * rng.randint(1, 4) + payload[j:]


def splice(rng: random.Random, payload: bytes, other: bytes) -> bytes:
    """The head of ``payload`` and the tail of ``other``, cut at random points."""
    return payload[: rng.randrange(len(payload) + 1)] + other[rng.randrange(len(other) + 1) :]


def mutate(
    rng: random.Random, sample: bytes, others: Sequence[bytes], kind: str, n: int | None = None
) -> bytes:
    """``sample`` after ``n`` (one to four when None) mutations drawn with ``rng``: bit
    flips, byte replacements, insertions, deletions, duplications, splices with one of
    ``others``, and (half of them) substitutions of a JSON value (``kind`` ``json``) or a
    query parameter (``query``)."""
    payload = sample
    for _ in range(rng.randint(1, 4) if n is None else n):
        # Half the mutations are substitutions: byte-level ones mostly break the syntax,
        # and the parser's answer to that is quickly known.
        op = rng.randrange(12)
        if op == 0:
            payload = flip(rng, payload)
        elif op == 1:
            payload = replace_byte(rng, payload)
        elif op == 2:
            payload = insert(rng, payload)
        elif op == 3:
            payload = delete(rng, payload)
        elif op == 4:
            payload = duplicate(rng, payload)
        elif op == 5:
            payload = splice(rng, payload, rng.choice(others))
        elif kind == "json":
            payload = substitute_json(rng, payload)
        elif kind == "query":
            payload = substitute_query(rng, payload)
        else:
            payload = insert(rng, payload)
    return payload


def check(target: Target, result: object) -> str:
    """What a decoder's result is: ``accepted`` or the rejection's reason; raises
    AssertionError for a result of another type or a fix out of range."""
    if not isinstance(result, target.results):
        raise AssertionError(f"{target.name} returned a {type(result).__name__}")
    if isinstance(result, Rejection):
        return result.reason.value
    if isinstance(result, Fix | DeviceEvent):
        t = result.t_fix if isinstance(result, Fix) else result.t_event
        lat_ok = math.isnan(result.lat) if isinstance(result, DeviceEvent) else False
        if not (math.isfinite(t) and (lat_ok or (-90 <= result.lat <= 90))):
            raise AssertionError(f"{target.name} accepted an impossible {result!r}")
    return "accepted"


@dataclass
class Tally:
    payloads: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    escaped: int = 0
    examples: list[str] = field(default_factory=list)


def run(payloads: int, seed: int, names: Sequence[str] | None, progress_every: int) -> int:
    t_recv = time.time()
    chosen = [t for t in targets(t_recv) if not names or t.name in names]
    if not chosen:
        raise SystemExit(f"no decoder named {', '.join(names or [])}")
    rng = random.Random(seed)
    tallies = {t.name: Tally() for t in chosen}
    started = time.perf_counter()
    print(f"fuzz: {payloads:,} payloads over {len(chosen)} decoders, seed {seed}", file=sys.stderr)
    for k in range(payloads):
        target = chosen[k % len(chosen)]
        tally = tallies[target.name]
        payload = mutate(rng, rng.choice(target.samples), target.samples, target.kind)
        tally.payloads += 1
        try:
            tally.outcomes[check(target, target.decode(payload))] += 1
        except Exception as exc:
            tally.escaped += 1
            if len(tally.examples) < SHOW_ESCAPED:
                frame = traceback.extract_tb(exc.__traceback__)[-1]
                where = f"{Path(frame.filename).name}:{frame.lineno}"
                tally.examples.append(f"{type(exc).__name__}: {exc} at {where} on {payload!r:.300}")
        if progress_every and (k + 1) % progress_every == 0:
            escaped = sum(t.escaped for t in tallies.values())
            elapsed = time.perf_counter() - started
            print(
                f"fuzz: {k + 1:,}/{payloads:,} payloads, {elapsed:.1f} s, {escaped} escaped",
                file=sys.stderr,
            )
    elapsed = time.perf_counter() - started
    return report(tallies, elapsed, seed)


def report(tallies: dict[str, Tally], elapsed: float, seed: int) -> int:
    width = max(len(n) for n in tallies)
    print(f"{'decoder':<{width}}  {'payloads':>9}  {'accepted':>8}  {'escaped':>7}  rejections")
    for name, t in tallies.items():
        rejected = sorted(
            ((r, c) for r, c in t.outcomes.items() if r != "accepted"), key=lambda rc: -rc[1]
        )
        reasons = ", ".join(f"{r} {c:,}" for r, c in rejected)
        print(
            f"{name:<{width}}  {t.payloads:>9,}  {t.outcomes['accepted']:>8,}  {t.escaped:>7,}"
            f"  {reasons}"
        )
        for example in t.examples:
            print(f"{'':<{width}}  escaped: {example}")
    total = sum(t.payloads for t in tallies.values())
    escaped = sum(t.escaped for t in tallies.values())
    accepted = sum(t.outcomes["accepted"] for t in tallies.values())
    all_reasons: Counter[str] = Counter()
    for t in tallies.values():
        all_reasons.update(t.outcomes)
    del all_reasons["accepted"]
    print(
        f"{'all':<{width}}  {total:>9,}  {accepted:>8,}  {escaped:>7,}  "
        f"{sum(all_reasons.values()):,} rejected"
    )
    print(
        f"{total:,} payloads in {elapsed:.1f} s ({total / max(elapsed, 1e-9):,.0f}/s), seed {seed}:"
        f" {escaped} escaped exception(s)"
    )
    return 1 if escaped else 0


def run_atheris(runs: int, seed: int) -> int:
    """The decoders under atheris (libFuzzer): the first input byte picks the decoder."""
    try:
        import atheris
    except ImportError:
        print("fuzz: atheris is not installed: pip install -e '.[fuzz]'", file=sys.stderr)
        return 2
    chosen = targets(time.time())

    def one_input(data: bytes) -> None:
        if not data:
            return
        target = chosen[data[0] % len(chosen)]
        check(target, target.decode(data[1:]))

    atheris.instrument_all()
    corpus = [bytes([i]) + s for i, t in enumerate(chosen) for s in t.samples]
    seeds = Path(tempfile.mkdtemp(prefix="proximity-fuzz-corpus-"))
    for i, sample in enumerate(corpus):
        (seeds / f"sample-{i}").write_bytes(sample)
    # libFuzzer adds what it finds there, and ends the process itself (no cleanup after).
    print(f"fuzz: atheris, {runs:,} runs, seed {seed}, corpus in {seeds}", file=sys.stderr)
    atheris.Setup([sys.argv[0], f"-runs={runs}", f"-seed={seed}", str(seeds)], one_input)
    atheris.Fuzz()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/fuzz",
        description="Fuzz every input decoder with mutated valid payloads (bit flips,"
        " insertions, deletions, splices, JSON value and query parameter substitutions) and"
        " report, per decoder, the payloads, the rejections by reason and the exceptions that"
        " escaped; exit status 1 if any escaped.",
        epilog="Decoders: the native fix, event and acknowledgement (cic/acks) messages;"
        " OwnTracks locations and transitions, clear, with the plaintext fuzzed inside a valid"
        " encrypted envelope, and with the envelope itself fuzzed; the OsmAnd query string and"
        " form body and Traccar Client's JSON body (the HTTP input's decoder, after its secret"
        " check); and MQTT topics. Each payload is a valid sample after one to four mutations."
        " The decoders are called without the wall that turns an exception into an"
        " internal_error rejection, so an escaped exception is a decoder that is not total."
        " The same seed gives the same payloads.",
    )
    parser.add_argument(
        "--payloads",
        type=int,
        default=DEFAULT_PAYLOADS,
        help="how many payloads in all, spread evenly over the decoders"
        f" (default {DEFAULT_PAYLOADS:,})",
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help="the random seed (default %(default)s)"
    )
    parser.add_argument(
        "--decoder",
        action="append",
        metavar="NAME",
        help="fuzz only this decoder (repeatable): "
        + ", ".join(t.name for t in targets(time.time())),
    )
    parser.add_argument(
        "--progress-every",
        type=int,
        default=100_000,
        metavar="N",
        help="a progress line on stderr every N payloads (0: none; default %(default)s)",
    )
    parser.add_argument(
        "--atheris",
        action="store_true",
        help="instead, run the coverage-guided fuzzer atheris for --payloads runs (optional"
        " dependency, extra 'fuzz')",
    )
    args = parser.parse_args(argv)
    if args.atheris:
        return run_atheris(args.payloads, args.seed)
    return run(args.payloads, args.seed, args.decoder, args.progress_every)


if __name__ == "__main__":
    sys.exit(main())
