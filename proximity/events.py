"""What the engine decides: alarm events as plain values (no JSON, no MQTT).

Codes are ``IntEnum`` inside the engine and become strings only at the JSON edge
(:mod:`proximity.messages`), through their lower-case ``name``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class AlarmType(IntEnum):
    PROXIMITY = 1


class AlarmLevel(IntEnum):
    PRE_ALERT = 1
    ALARM = 2
    ESCALATION = 3


class AlarmState(IntEnum):
    OPEN = 1
    UPDATE = 2
    ENDED = 3
    ACKNOWLEDGED = 4
    CLOSED = 5


def wire_name(code: IntEnum) -> str:
    """The contract's spelling of a code: ``AlarmLevel.PRE_ALERT`` -> ``"pre_alert"``."""
    return code.name.lower()


@dataclass(frozen=True, slots=True)
class Position:
    """A device's last fix as the engine used it. Times are UTC epoch seconds."""

    device: str
    lat: float
    lon: float
    acc_m: float
    t_fix: float
    t_recv: float
    seq: int


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """One state change of one alarm; ``alarm_id`` is stable for the life of the alarm.

    ``trigger`` is the fix whose arrival led to the decision (the later-received of the two
    positions), so its ``t_fix`` and ``t_recv`` are the alarm's fix and receipt times.
    """

    alarm_id: str
    type: AlarmType
    level: AlarmLevel
    state: AlarmState
    case_id: str
    offender: Position
    victim: Position
    distance_m: float
    order_distance_m: float
    margin_m: float
    reason: str
    t_decided: float

    @property
    def trigger(self) -> Position:
        return self.offender if self.offender.t_recv >= self.victim.t_recv else self.victim
