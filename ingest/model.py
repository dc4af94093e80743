"""Value types that leave the ingest edge."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum


class IngestError(Exception):
    """Base of the errors raised by :mod:`ingest` (bad broker address, bad topic, ...)."""


class RejectReason(StrEnum):
    """Why a message was not turned into a fix. The values are the codes on the wire."""

    BAD_TOPIC = "bad_topic"
    TOO_LARGE = "too_large"
    MALFORMED_JSON = "malformed_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    BAD_TYPE = "bad_type"
    OUT_OF_RANGE = "out_of_range"
    BAD_TIMESTAMP = "bad_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    STALE_TIMESTAMP = "stale_timestamp"
    UNKNOWN_DEVICE = "unknown_device"
    UNKNOWN_EVENT = "unknown_event"
    UNKNOWN_ACTION = "unknown_action"
    ENCRYPTED = "encrypted"
    #: A plaintext payload from an app that has an encryption key: whoever sent it does not
    #: hold the key (a device that encrypts stays encrypted).
    NOT_ENCRYPTED = "not_encrypted"
    NOT_A_POSITION = "not_a_position"
    UNKNOWN_ALARM = "unknown_alarm"
    #: A suspension the engine refuses: a panic or an escalation is never suspended.
    NOT_SUSPENDABLE = "not_suspendable"
    #: An acknowledgement of a command the engine has not sent this device (or no longer
    #: waits for: the pursuit is over, or a newer command replaced it).
    UNKNOWN_COMMAND = "unknown_command"
    #: The input made a decoder fail: a bug of the engine, not of the sender. The message is
    #: still taken (and acknowledged) as a rejection, so that it cannot come back.
    INTERNAL_ERROR = "internal_error"


#: Device event types (DESIGN.md ``devices/{id}/event``): a victim's panic button, a tag's
#: tamper or strap sensor, battery and power reports, and the device separated from its
#: wearer (a phone left behind, a tag out of range of its companion unit).
EVENT_TYPES = frozenset(
    {"panic", "tamper", "strap_removed", "battery_low", "power_off", "separated"}
)


@dataclass(frozen=True, slots=True)
class Fix:
    """One validated position report.

    Times are UTC epoch seconds: ``t_fix`` is when the device took the fix (it drives every
    rule), ``t_recv`` when it reached us (kept for latency accounting). ``acc_m`` is the 68 %
    horizontal radius in metres; NaN means unknown (a device that sends 0 or nothing).
    Optional fields are NaN (floats) or -1 (``seq``) when absent.
    """

    device: str
    t_fix: float
    t_recv: float
    lat: float
    lon: float
    acc_m: float = math.nan
    alt_m: float = math.nan
    speed_mps: float = math.nan
    heading_deg: float = math.nan
    battery_pct: float = math.nan
    seq: int = -1


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    """One validated device event: ``kind`` is one of :data:`EVENT_TYPES`; the position, if
    the device sent one, is NaN otherwise. Times are UTC epoch seconds."""

    device: str
    kind: str
    t_event: float
    t_recv: float
    lat: float = math.nan
    lon: float = math.nan
    acc_m: float = math.nan
    seq: int = -1


#: What a CIC operator can do to an alarm on ``cic/acks``.
OPERATOR_ACTIONS = frozenset({"acknowledge", "close", "suspend"})
#: A suspension's bounds: from 15 minutes to 2 hours after the action, give or take
#: SUSPEND_SLACK_S (a desk that asks for "15 minutes from now" stamps it a moment before
#: the engine stamps the action).
SUSPEND_MIN_S = 900.0
SUSPEND_MAX_S = 7200.0
SUSPEND_SLACK_S = 30.0
#: How an operator closes an alarm (``other`` needs a note saying what happened).
RESOLUTIONS = ("intervention_sent", "false_alarm", "technical", "victim_contacted", "other")


@dataclass(frozen=True, slots=True)
class SessionLost:
    """The broker had no session for the engine when it (re)connected: whatever was sent to
    the engine while it was not connected may be gone. ``t_lost`` is when the connection was
    lost (NaN at the first connection of the process: since the engine last ran);
    ``t_recv`` when the broker said so."""

    t_lost: float
    t_recv: float


@dataclass(frozen=True, slots=True)
class Wake:
    """No message: it only wakes the consumer of the queue (the engine's loop has work
    another thread gave it, such as a changed registry); ``t_recv`` when it was queued."""

    t_recv: float


@dataclass(frozen=True, slots=True)
class OperatorAction:
    """An operator's acknowledgement or closing of an alarm, from ``cic/acks``."""

    alarm_id: str
    operator: str
    action: str  # one of OPERATOR_ACTIONS
    note: str
    t_action: float
    t_recv: float
    resolution: str = ""  # one of RESOLUTIONS, for a close; "": none given
    until: float = math.nan  # a suspension's end (epoch s); NaN for the other actions


#: What a device says of a command it received (``devices/{id}/cmd/ack``).
COMMAND_STATUSES = frozenset({"ok", "rejected"})


@dataclass(frozen=True, slots=True)
class CommandAck:
    """A device's acknowledgement of a command (:mod:`cic.commands`): ``status`` ``ok`` (it
    obeys) or ``rejected`` (it cannot; ``detail`` may say why)."""

    device: str
    command_id: str
    status: str
    detail: str
    t_recv: float


@dataclass(frozen=True, slots=True)
class Rejection:
    """A message that was not used, with the reason code and a sentence for a person."""

    topic: str
    device: str | None
    reason: RejectReason
    detail: str
    t_recv: float

    def to_dict(self) -> dict[str, object]:
        """The JSON object published on the rejection topic (DESIGN.md contract)."""
        return {
            "topic": self.topic,
            "device": self.device,
            "reason": self.reason.value,
            "detail": self.detail,
            "received": self.t_recv,
        }
