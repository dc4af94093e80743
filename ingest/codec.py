"""Pure decoders: ``bytes -> Fix | DeviceEvent | Rejection``. They never raise on any input.

Every decoder is total: any bytes, and any JSON value where a field is expected (a list or an
object instead of a number or a text, a huge number, a deeply nested value), give a
:class:`~ingest.model.Rejection` with the specific reason (``bad_type``, ``out_of_range``,
``bad_timestamp``, ...). Details quote input values through :func:`shown`, which never
renders a container (a value nested 1,000 deep would exhaust the recursion limit) nor more
than :data:`SHOWN_CHARS` characters of a text.

The native fix format (DESIGN.md) on ``devices/{device_id}/fix`` is a JSON object::

    {"ts": "2026-11-23T10:00:00Z" | 1795428000.0, "lat": 50.85, "lon": 4.35, "acc": 8,
     "alt": 60, "speed": 1.4, "heading": 90, "battery": 80, "seq": 17}

``ts``, ``lat`` and ``lon`` are required; ``acc`` is strongly expected (without it the fix's
accuracy is unknown); the rest is optional.

A device event on ``devices/{device_id}/event`` is a JSON object with ``ts`` and ``type``
(:data:`ingest.model.EVENT_TYPES`), and optionally the position (``lat``, ``lon``, ``acc``)
and ``seq``::

    {"ts": 1795428000.0, "type": "panic", "lat": 50.85, "lon": 4.35, "acc": 12}
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import orjson

from ingest.model import (
    COMMAND_STATUSES,
    EVENT_TYPES,
    OPERATOR_ACTIONS,
    RESOLUTIONS,
    SUSPEND_MAX_S,
    SUSPEND_MIN_S,
    SUSPEND_SLACK_S,
    CommandAck,
    DeviceEvent,
    Fix,
    OperatorAction,
    Rejection,
    RejectReason,
)

#: Payloads larger than this are not parsed (a fix is about 150 bytes).
MAX_PAYLOAD_BYTES = 64 * 1024
#: A fix time later than its arrival by more than this is a device clock fault, not a fix.
MAX_FUTURE_S = 300.0
#: Fix times before 2000-01-01 are a device that has not synchronised its clock.
MIN_EPOCH_S = 946684800.0
#: Epoch seconds at or beyond this (year 5138) are not a time but a unit or clock fault.
MAX_EPOCH_S = 1e11
#: An ISO 8601 time is at most this long ("2026-11-23T10:00:00.123456+01:00" is 32).
MAX_ISO_CHARS = 64
#: How many characters of an input text a rejection's detail quotes.
SHOWN_CHARS = 40
#: A fix taken longer than this before it arrived is a broken clock, not a buffered fix (a
#: phone that was offline delivers hours-old fixes, which are kept for the record).
MAX_PAST_S = 7 * 86400.0


def time_problem(t: float, t_recv: float) -> tuple[RejectReason, str] | None:
    """Why a fix time ``t`` arriving at ``t_recv`` cannot be used, or None."""
    if t > t_recv + MAX_FUTURE_S:
        return (
            RejectReason.FUTURE_TIMESTAMP,
            f"time is {t - t_recv:.0f} s after arrival (tolerance {MAX_FUTURE_S:.0f} s):"
            " check the device clock",
        )
    if t < t_recv - MAX_PAST_S:
        return (
            RejectReason.STALE_TIMESTAMP,
            f"time is {(t_recv - t) / 86400:.1f} days before arrival (at most"
            f" {MAX_PAST_S / 86400:.0f}): check the device clock",
        )
    return None


FIX_TOPIC_PREFIX = "devices/"
FIX_TOPIC_SUFFIX = "/fix"
EVENT_TOPIC_SUFFIX = "/event"
COMMAND_ACK_SUFFIX = "/cmd/ack"
#: Operators' acknowledgements and closings of alarms (the CIC's side of the channel): on
#: ``cic/acks/{account}`` the operator is the broker account the topic names (the generated
#: ACL lets each CIC account write only its own), on ``cic/acks`` (unsecured brokers) the
#: one the payload names.
ACK_TOPIC = "cic/acks"
ACK_SUBSCRIPTION = ACK_TOPIC + "/+"


class InvalidInputError(Exception):
    """A field of a message is wrong: ``reason`` is the rejection's code, ``detail`` its
    sentence. Raised by :func:`parse_timestamp` and the field readers; the decoders turn it
    into a :class:`~ingest.model.Rejection`."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def shown(value: object) -> str:
    """A short description of an input value for a rejection's detail: numbers and short
    texts as written, long texts cut, lists and objects by their kind only.

    >>> shown("panic")
    "'panic'"
    >>> shown(["panic"])
    'a list'
    >>> shown("x" * 100)
    "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... (100 characters)"
    """
    if isinstance(value, str):
        if len(value) <= SHOWN_CHARS:
            return repr(value)
        return f"{value[:SHOWN_CHARS]!r}... ({len(value)} characters)"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _kind(value: object) -> str:
    """The JSON name of a value's type, for "must be a number, got ..." details."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def device_from_fix_topic(topic: str, suffix: str = FIX_TOPIC_SUFFIX) -> str | None:
    """``devices/{device_id}/fix`` (or another ``suffix``) -> ``device_id``; None for any
    other topic.

    >>> device_from_fix_topic("devices/tag-17/fix")
    'tag-17'
    >>> device_from_fix_topic("devices//fix") is None
    True
    >>> device_from_fix_topic("devices/phone-4/event", EVENT_TOPIC_SUFFIX)
    'phone-4'
    """
    if not (topic.startswith(FIX_TOPIC_PREFIX) and topic.endswith(suffix)):
        return None
    device = topic[len(FIX_TOPIC_PREFIX) : -len(suffix)]
    if not device or "/" in device:
        return None
    return device


def _number(obj: dict[str, Any], key: str, lo: float, hi: float, required: bool) -> float:
    value = obj.get(key)
    if value is None:
        if required:
            raise InvalidInputError(RejectReason.MISSING_FIELD, f"field '{key}' is required")
        return math.nan
    # bool is an int in Python; true/false is never a coordinate.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError(
            RejectReason.BAD_TYPE, f"field '{key}' must be a number, got {_kind(value)}"
        )
    try:
        x = float(value)
    except OverflowError:  # an integer beyond any float
        x = math.inf
    if not (lo <= x <= hi):  # also rejects NaN and infinities
        raise InvalidInputError(
            RejectReason.OUT_OF_RANGE, f"field '{key}' = {shown(value)} is outside [{lo}, {hi}]"
        )
    return x


def parse_timestamp(value: object, field: str = "ts") -> float:
    """``ts`` (or another time ``field``) as ISO 8601 with a UTC offset, or epoch seconds ->
    epoch seconds (float).

    >>> parse_timestamp("2026-11-23T10:00:00Z")
    1795428000.0
    >>> parse_timestamp(1795428000)
    1795428000.0

    Raises :class:`InvalidInputError` (``bad_timestamp``) for anything else, whatever its
    type: an ISO 8601 text must be ASCII (``datetime`` would read other scripts' digits).
    """
    if isinstance(value, bool):
        raise InvalidInputError(
            RejectReason.BAD_TIMESTAMP, f"field {field!r} must be ISO 8601 or epoch seconds"
        )
    if isinstance(value, int | float):
        try:
            t = float(value)
        except OverflowError:  # an integer beyond any float
            t = math.inf
    elif isinstance(value, str):
        if len(value) > MAX_ISO_CHARS or not value.isascii():
            raise InvalidInputError(
                RejectReason.BAD_TIMESTAMP, f"field {field!r} = {shown(value)} is not ISO 8601"
            )
        try:
            dt = datetime.fromisoformat(value)
        except ValueError as exc:
            raise InvalidInputError(
                RejectReason.BAD_TIMESTAMP, f"field {field!r} = {shown(value)} is not ISO 8601"
            ) from exc
        if dt.tzinfo is None:
            raise InvalidInputError(
                RejectReason.BAD_TIMESTAMP,
                f"field {field!r} = {shown(value)} has no UTC offset;"
                " send e.g. '2026-11-23T10:00:00Z'",
            )
        try:
            t = dt.timestamp()
        except (OverflowError, ValueError):  # year 1 or 9999 shifted past the calendar
            t = math.nan
    else:
        raise InvalidInputError(
            RejectReason.BAD_TIMESTAMP,
            f"field {field!r} must be ISO 8601 or epoch seconds, got {_kind(value)}",
        )
    if not (MIN_EPOCH_S <= t < MAX_EPOCH_S):  # also NaN and infinities
        raise InvalidInputError(
            RejectReason.BAD_TIMESTAMP, f"field {field!r} = {shown(value)} is not a plausible time"
        )
    return t


def decode_fix(topic: str, payload: bytes | bytearray, t_recv: float) -> Fix | Rejection:
    """Decode one native fix message; never raises.

    Parameters
    ----------
    topic : str
        The MQTT topic, ``devices/{device_id}/fix``.
    payload : bytes or bytearray
        The message body (UTF-8 JSON).
    t_recv : float
        Arrival time, UTC epoch seconds.
    """
    device = device_from_fix_topic(topic)
    if device is None:
        return Rejection(
            topic, None, RejectReason.BAD_TOPIC, "expected devices/{device_id}/fix", t_recv
        )
    try:
        obj, t_fix = _object_and_time(payload, t_recv)
        lat = _number(obj, "lat", -90.0, 90.0, required=True)
        lon = _number(obj, "lon", -180.0, 180.0, required=True)
        acc = _number(obj, "acc", 0.0, 1e6, required=False)
        seq = _seq(obj)
        return Fix(
            device=device,
            t_fix=t_fix,
            t_recv=t_recv,
            lat=lat,
            lon=lon,
            # 0 is what many devices send when they do not know: unknown, never "perfect".
            acc_m=acc if acc > 0.0 else math.nan,
            alt_m=_number(obj, "alt", -1000.0, 100000.0, required=False),
            speed_mps=_number(obj, "speed", 0.0, 1000.0, required=False),
            heading_deg=_number(obj, "heading", 0.0, 360.0, required=False),
            battery_pct=_number(obj, "battery", 0.0, 100.0, required=False),
            seq=seq,
        )
    except InvalidInputError as bad:
        return Rejection(topic, device, bad.reason, bad.detail, t_recv)


def _object(payload: bytes | bytearray) -> dict[str, Any]:
    """The message's JSON object (at most MAX_PAYLOAD_BYTES)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise InvalidInputError(
            RejectReason.TOO_LARGE,
            f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}",
        )
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(RejectReason.MALFORMED_JSON, f"not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise InvalidInputError(
            RejectReason.NOT_AN_OBJECT, f"expected a JSON object, got {_kind(obj)}"
        )
    return obj


def _object_and_time(payload: bytes | bytearray, t_recv: float) -> tuple[dict[str, Any], float]:
    """The message's JSON object and its ``ts``, checked against the arrival time."""
    obj = _object(payload)
    if "ts" not in obj:
        raise InvalidInputError(RejectReason.MISSING_FIELD, "field 'ts' is required")
    t = parse_timestamp(obj["ts"])
    problem = time_problem(t, t_recv)
    if problem is not None:
        raise InvalidInputError(*problem)
    return obj, t


def _seq(obj: dict[str, Any]) -> int:
    seq_raw = obj.get("seq")
    if seq_raw is None:
        return -1
    if isinstance(seq_raw, int) and not isinstance(seq_raw, bool) and 0 <= seq_raw < 2**63:
        return seq_raw
    raise InvalidInputError(
        RejectReason.BAD_TYPE, f"field 'seq' = {shown(seq_raw)} must be an integer >= 0"
    )


def decode_event(topic: str, payload: bytes | bytearray, t_recv: float) -> DeviceEvent | Rejection:
    """Decode one device event message (``devices/{device_id}/event``); never raises."""
    device = device_from_fix_topic(topic, EVENT_TOPIC_SUFFIX)
    if device is None:
        return Rejection(
            topic, None, RejectReason.BAD_TOPIC, "expected devices/{device_id}/event", t_recv
        )
    try:
        obj, t_event = _object_and_time(payload, t_recv)
        kind = obj.get("type")
        if kind is None:
            raise InvalidInputError(RejectReason.MISSING_FIELD, "field 'type' is required")
        # A list or an object is unhashable: test the type before the membership.
        if not isinstance(kind, str):
            raise InvalidInputError(
                RejectReason.BAD_TYPE, f"field 'type' must be text, got {_kind(kind)}"
            )
        if kind not in EVENT_TYPES:
            raise InvalidInputError(
                RejectReason.UNKNOWN_EVENT,
                f"event type {shown(kind)} is not one of {', '.join(sorted(EVENT_TYPES))}",
            )
        has_position = obj.get("lat") is not None or obj.get("lon") is not None
        lat = _number(obj, "lat", -90.0, 90.0, required=has_position)
        lon = _number(obj, "lon", -180.0, 180.0, required=has_position)
        acc = _number(obj, "acc", 0.0, 1e6, required=False)
        return DeviceEvent(
            device=device,
            kind=str(kind),
            t_event=t_event,
            t_recv=t_recv,
            lat=lat,
            lon=lon,
            acc_m=acc if acc > 0.0 else math.nan,
            seq=_seq(obj),
        )
    except InvalidInputError as bad:
        return Rejection(topic, device, bad.reason, bad.detail, t_recv)


def decode_ack(topic: str, payload: bytes | bytearray, t_recv: float) -> OperatorAction | Rejection:
    """Decode one operator action on ``cic/acks`` or ``cic/acks/{account}``: ``{"alarm_id",
    "operator", "ts", "action": "acknowledge" (the default) or "close", "resolution",
    "note", "until"}`` (a close needs its resolution, one of :data:`RESOLUTIONS`, or a note
    saying why; ``other`` needs the note; ``"action": "suspend"`` needs ``until``, ISO 8601
    with its offset or epoch seconds, 15 min to 2 h after the action, and a note saying
    why); never raises. The HTTP API's actions are decoded here too.

    On ``cic/acks/{account}`` the operator is the account (the broker authenticated it and
    lets only it write there); a name the payload gives beside it is kept after it, in
    brackets (``desk-4 (J. Peeters)``), and ``operator`` may be left out."""
    account = topic[len(ACK_TOPIC) + 1 :] if topic != ACK_TOPIC else None
    if account is not None and (not account or "/" in account):
        return Rejection(
            topic, None, RejectReason.BAD_TOPIC, "expected cic/acks or cic/acks/{account}", t_recv
        )
    try:
        obj, t = _object_and_time(payload, t_recv)
        texts = {}
        for key in ("alarm_id", "operator"):
            value = obj.get(key)
            if value is None and key == "operator" and account is not None:
                texts[key] = account
                continue
            if value is None:
                raise InvalidInputError(RejectReason.MISSING_FIELD, f"field {key!r} is required")
            if not isinstance(value, str) or not value.strip():
                raise InvalidInputError(
                    RejectReason.BAD_TYPE,
                    f"field {key!r} must be a non-empty string, got {shown(value)}",
                )
            texts[key] = value.strip()
        if account is not None and texts["operator"] != account:
            texts["operator"] = f"{account} ({texts['operator']})"
        action = obj.get("action", "acknowledge")
        # A list or an object is unhashable: test the type before the membership.
        if not isinstance(action, str):
            raise InvalidInputError(
                RejectReason.BAD_TYPE, f"field 'action' must be text, got {_kind(action)}"
            )
        if action not in OPERATOR_ACTIONS:
            raise InvalidInputError(
                RejectReason.UNKNOWN_ACTION,
                f"action {shown(action)} is not one of {', '.join(sorted(OPERATOR_ACTIONS))}",
            )
        note = obj.get("note", "")
        if not isinstance(note, str):
            raise InvalidInputError(
                RejectReason.BAD_TYPE, f"field 'note' must be text, got {_kind(note)}"
            )
        resolution = obj.get("resolution", "")
        if not isinstance(resolution, str):
            raise InvalidInputError(
                RejectReason.BAD_TYPE, f"field 'resolution' must be text, got {_kind(resolution)}"
            )
        if resolution and resolution not in RESOLUTIONS:
            raise InvalidInputError(
                RejectReason.UNKNOWN_ACTION,
                f"resolution {shown(resolution)} is not one of {', '.join(RESOLUTIONS)}",
            )
        if resolution and action != "close":
            raise InvalidInputError(
                RejectReason.BAD_TYPE, "a 'resolution' is given only with action 'close'"
            )
        until = math.nan
        if action == "suspend":
            until = _until(obj.get("until"), t)
            if not note.strip():
                raise InvalidInputError(
                    RejectReason.MISSING_FIELD, "a suspension needs a 'note' saying why"
                )
        elif "until" in obj:
            raise InvalidInputError(
                RejectReason.BAD_TYPE, "an 'until' is given only with action 'suspend'"
            )
        if action == "close" and not note.strip() and resolution in ("", "other"):
            raise InvalidInputError(
                RejectReason.MISSING_FIELD,
                "closing an alarm needs a 'resolution' ("
                + ", ".join(RESOLUTIONS)
                + ") or a 'note' saying why; 'other' needs the note",
            )
        return OperatorAction(
            texts["alarm_id"],
            texts["operator"],
            str(action),
            note.strip(),
            t,
            t_recv,
            resolution,
            until,
        )
    except InvalidInputError as bad:
        return Rejection(topic, None, bad.reason, bad.detail, t_recv)


def _until(value: object, t: float) -> float:
    """A suspension's ``until`` (ISO 8601 with an offset, or epoch seconds), within
    SUSPEND_MIN_S .. SUSPEND_MAX_S of the action's time ``t`` (give or take
    SUSPEND_SLACK_S)."""
    if value is None:
        raise InvalidInputError(
            RejectReason.MISSING_FIELD, "a suspension needs 'until' (ISO 8601 or epoch seconds)"
        )
    until = parse_timestamp(value, "until")
    span = until - t
    if not SUSPEND_MIN_S - SUSPEND_SLACK_S <= span <= SUSPEND_MAX_S + SUSPEND_SLACK_S:
        raise InvalidInputError(
            RejectReason.OUT_OF_RANGE,
            f"a suspension lasts {SUSPEND_MIN_S / 60:.0f} min to {SUSPEND_MAX_S / 3600:.0f} h"
            f" after the action; this one would end {span / 60:.1f} min after it",
        )
    return until


def decode_command_ack(
    topic: str, payload: bytes | bytearray, t_recv: float
) -> CommandAck | Rejection:
    """Decode a device's acknowledgement of a command (``devices/{device_id}/cmd/ack``):
    ``{"command_id": ..., "status": "ok" | "rejected", "detail": ...}`` (``ts`` optional);
    never raises."""
    device = device_from_fix_topic(topic, COMMAND_ACK_SUFFIX)
    if device is None:
        return Rejection(
            topic, None, RejectReason.BAD_TOPIC, "expected devices/{device_id}/cmd/ack", t_recv
        )
    try:
        obj = _object(payload)
        command_id = obj.get("command_id")
        if command_id is None:
            raise InvalidInputError(RejectReason.MISSING_FIELD, "field 'command_id' is required")
        if not isinstance(command_id, str) or not command_id or len(command_id) > 64:
            raise InvalidInputError(
                RejectReason.BAD_TYPE,
                f"field 'command_id' must be the command's id (text), got {shown(command_id)}",
            )
        status = obj.get("status", "ok")
        if not isinstance(status, str) or status not in COMMAND_STATUSES:
            raise InvalidInputError(
                RejectReason.OUT_OF_RANGE,
                f"field 'status' = {shown(status)} must be one of"
                f" {', '.join(sorted(COMMAND_STATUSES))}",
            )
        detail = obj.get("detail", "")
        if not isinstance(detail, str):
            raise InvalidInputError(
                RejectReason.BAD_TYPE, f"field 'detail' must be text, got {_kind(detail)}"
            )
        return CommandAck(device, command_id, status, detail[:500], t_recv)
    except InvalidInputError as bad:
        return Rejection(topic, device, bad.reason, bad.detail, t_recv)


def decode(
    topic: str, payload: bytes | bytearray, t_recv: float
) -> Fix | DeviceEvent | OperatorAction | CommandAck | Rejection:
    """Dispatch on the topic: fixes, device events, operator actions and command
    acknowledgements; never raises."""
    if topic == ACK_TOPIC or topic.startswith(ACK_TOPIC + "/"):
        return decode_ack(topic, payload, t_recv)
    if topic.endswith(COMMAND_ACK_SUFFIX):
        return decode_command_ack(topic, payload, t_recv)
    if topic.endswith(EVENT_TOPIC_SUFFIX):
        return decode_event(topic, payload, t_recv)
    return decode_fix(topic, payload, t_recv)
