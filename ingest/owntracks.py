"""OwnTracks over MQTT: the phone apps people already use, as fixes of the engine.

The apps publish ``_type: location`` (and ``lwt``, their last will) on
``owntracks/{user}/{device}`` and ``_type: transition`` (entering or leaving one of their own
regions, with the position of that moment) on ``owntracks/{user}/{device}/event``. The case
file's ``devices`` list maps an app to a device id: ``{"id": "phone-42", "owntracks":
{"user": "jane", "device": "nokia"}}`` (:func:`aliases`).

Units (https://owntracks.org/booklet/tech/json): ``tst`` is epoch seconds, ``acc`` the
accuracy in metres (the Android app can send it as a float; 0 or absent is unknown, never
perfect), ``vel`` km/h, ``cog`` degrees, ``alt`` metres, ``batt`` percent. Two messages with
the same ``tst`` (the apps send them, e.g. a ping after a location) are the same fix: the
engine counts the second as a duplicate. An encrypted payload (``_type: encrypted``, the
apps' libsodium secret box: ``data`` is base64 of the 24-byte nonce and the box, the key the
app's secret padded with zero bytes to 32) is opened with the key the devices list gives
(``"owntracks": {..., "key": "..."}``); without a key, or with the wrong one, it is rejected
with a reason saying so; and a plaintext payload for an app that has a key is rejected
(``not_encrypted``): only the app holds the key, anyone on the broker can send plaintext.
Other types (cards, waypoints, status, ...) and the last will are not positions and are
rejected as such.

:func:`decode_owntracks` never raises.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from ingest.codec import MAX_EPOCH_S, MAX_PAYLOAD_BYTES, MIN_EPOCH_S, shown, time_problem
from ingest.model import Fix, Rejection, RejectReason

SUBSCRIPTIONS = ("owntracks/+/+", "owntracks/+/+/event")
PREFIX = "owntracks/"
KMH = 1.0 / 3.6

Aliases = Mapping[tuple[str, str], str]
Keys = Mapping[tuple[str, str], bytes]
KEY_BYTES = 32
NONCE_BYTES = 24


def _apps(
    devices: Iterable[tuple[str, Mapping[str, Any]]],
) -> Iterable[tuple[str, Mapping[str, Any]]]:
    for dev_id, info in devices:
        ot = info.get("owntracks")
        if isinstance(ot, Mapping) and all(isinstance(ot.get(k), str) for k in ("user", "device")):
            yield dev_id, ot


def aliases(devices: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[tuple[str, str], str]:
    """(user, device) -> device id, from ``(id, info)`` device descriptions."""
    return {(ot["user"], ot["device"]): dev_id for dev_id, ot in _apps(devices)}


def keys(devices: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[tuple[str, str], bytes]:
    """(user, device) -> the app's payload key (its secret, zero-padded to 32 bytes)."""
    return {
        (ot["user"], ot["device"]): ot["key"].encode()[:KEY_BYTES].ljust(KEY_BYTES, b"\0")
        for _, ot in _apps(devices)
        if isinstance(ot.get("key"), str) and ot["key"]
    }


def _open(data: object, key: bytes) -> bytes:
    """The plaintext of an OwnTracks encrypted payload's ``data``; ValueError if it cannot be
    opened with ``key``."""
    from nacl.exceptions import CryptoError
    from nacl.secret import SecretBox

    if not isinstance(data, str):
        raise ValueError("field 'data' must be base64 text")
    try:
        raw = base64.b64decode(data, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"field 'data' is not base64: {exc}") from exc
    if len(raw) <= NONCE_BYTES:
        raise ValueError("field 'data' is too short to hold a nonce and a box")
    try:
        return bytes(SecretBox(key).decrypt(raw[NONCE_BYTES:], raw[:NONCE_BYTES]))
    except CryptoError as exc:
        raise ValueError("it does not open with the configured key (wrong key?)") from exc


def _number(obj: Mapping[str, Any], key: str, lo: float, hi: float) -> float | None:
    v = obj.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"field {key!r} = {shown(v)} must be a number")
    try:
        x = float(v)
    except OverflowError:  # an integer beyond any float
        x = math.inf
    if not lo <= x <= hi:  # also NaN and infinities
        raise OverflowError(f"field {key!r} = {shown(v)} is outside [{lo:g}, {hi:g}]")
    return x


def decode_owntracks(
    topic: str,
    payload: bytes | bytearray,
    t_recv: float,
    known: Aliases,
    secrets: Keys | None = None,
) -> Fix | Rejection:
    """One OwnTracks message -> a fix of the mapped device, or a rejection with a reason."""
    parts = topic.split("/")
    if (
        len(parts) not in (3, 4)
        or parts[0] != "owntracks"
        or (len(parts) == 4 and parts[3] != "event")
    ):
        return Rejection(
            topic,
            None,
            RejectReason.BAD_TOPIC,
            "expected owntracks/{user}/{device} or owntracks/{user}/{device}/event",
            t_recv,
        )
    user, app = parts[1], parts[2]
    device = known.get((user, app))
    if device is None:
        return Rejection(
            topic,
            None,
            RejectReason.UNKNOWN_DEVICE,
            f"OwnTracks user {user!r} device {app!r} is in no case file's devices list"
            ' (add {"id": ..., "owntracks": {"user": ..., "device": ...}})',
            t_recv,
        )

    def reject(reason: RejectReason, detail: str) -> Rejection:
        return Rejection(topic, device, reason, detail, t_recv)

    if len(payload) > MAX_PAYLOAD_BYTES:
        return reject(RejectReason.TOO_LARGE, f"payload of {len(payload)} bytes")
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        return reject(RejectReason.MALFORMED_JSON, f"not valid JSON: {exc}")
    if not isinstance(obj, dict):
        return reject(RejectReason.NOT_AN_OBJECT, "expected a JSON object")
    kind = obj.get("_type")
    key = (secrets or {}).get((user, app))
    if kind != "encrypted" and key is not None:
        # Anyone who can publish on the app's topic can send plaintext; only the app holds
        # its key.
        return reject(
            RejectReason.NOT_ENCRYPTED,
            f"plaintext OwnTracks payload (_type {shown(kind)}) from an app that encrypts:"
            " its devices-list entry has a key, so only encrypted payloads are taken",
        )
    if kind == "encrypted":
        if key is None:
            return reject(
                RejectReason.ENCRYPTED,
                "encrypted OwnTracks payload and no key for this app: add the app's secret as"
                ' "key" to its "owntracks" entry in the devices list',
            )
        try:
            inner = orjson.loads(_open(obj.get("data"), key))
        except (ValueError, orjson.JSONDecodeError) as exc:
            return reject(RejectReason.ENCRYPTED, f"encrypted OwnTracks payload: {exc}")
        if not isinstance(inner, dict) or inner.get("_type") == "encrypted":
            return reject(RejectReason.ENCRYPTED, "the decrypted payload is not a message")
        obj, kind = inner, inner.get("_type")
    expected = "transition" if len(parts) == 4 else "location"
    if kind != expected:
        return reject(
            RejectReason.NOT_A_POSITION,
            f"OwnTracks _type {shown(kind)} on this topic carries no position"
            f" (expected {expected!r})",
        )
    try:
        tst = obj.get("tst")
        if tst is None:
            return reject(RejectReason.MISSING_FIELD, "field 'tst' is required")
        t = _number(obj, "tst", MIN_EPOCH_S, MAX_EPOCH_S)
        lat = _number(obj, "lat", -90.0, 90.0)
        lon = _number(obj, "lon", -180.0, 180.0)
        if lat is None or lon is None:
            return reject(RejectReason.MISSING_FIELD, "fields 'lat' and 'lon' are required")
        acc = _number(obj, "acc", 0.0, 1e6)
        vel = _number(obj, "vel", 0.0, 5000.0)
        cog = _number(obj, "cog", 0.0, 360.0)
        alt = _number(obj, "alt", -1000.0, 100000.0)
        batt = _number(obj, "batt", 0.0, 100.0)
    except ValueError as exc:
        return reject(RejectReason.BAD_TYPE, str(exc))
    except OverflowError as exc:
        return reject(RejectReason.OUT_OF_RANGE, str(exc))
    assert t is not None
    problem = time_problem(t, t_recv)
    if problem is not None:
        return reject(*problem)
    nan = math.nan
    return Fix(
        device=device,
        t_fix=t,
        t_recv=t_recv,
        lat=lat,
        lon=lon,
        acc_m=acc if acc else nan,  # 0 or absent: unknown, never perfect
        alt_m=nan if alt is None else alt,
        speed_mps=nan if vel is None else vel * KMH,
        heading_deg=nan if cog is None else cog,
        battery_pct=nan if batt is None else batt,
    )
