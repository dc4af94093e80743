"""What the engine decides: alarm events as plain values (no JSON, no MQTT).

Codes are ``IntEnum`` inside the engine and become strings only at the JSON edge
(:mod:`cic.messages`), through their lower-case ``name``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Any

from numerics.uncertainty import Classification


class AlarmType(IntEnum):
    PROXIMITY = 1
    ZONE = 2  # an exclusion zone entered
    CURFEW = 3  # outside an inclusion zone while it is in force
    SIGNAL_LOST = 4  # an offender's device is silent
    VICTIM_SILENT = 5  # a protected person's device is silent
    PANIC = 6  # the panic button (device event)
    TAMPER = 7  # tamper or strap removed (device event)
    BATTERY_LOW = 8
    POWER_OFF = 9
    SEPARATED = 10  # the device is no longer with its wearer
    APPROACH = 11  # a sustained approach, predicted to breach soon
    PROBING = 12  # repeated entries into the warning band
    ENGINE_FAULT = 13  # the engine stopped deciding: every case's protection is interrupted
    DATA_GAP = 14  # the broker lost the engine's session: messages of a time span may be gone
    PURSUIT_IGNORED = 15  # a device asked to report faster during an alarm does not


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
    SUSPENDED = 6


def wire_name(code: IntEnum) -> str:
    """The contract's spelling of a code: ``AlarmLevel.PRE_ALERT`` -> ``"pre_alert"``."""
    return code.name.lower()


@dataclass(frozen=True, slots=True)
class Motion:
    """How both parties of a pair move (from the motion filter's velocities; NaN unknown):
    ``parallel`` when both travel the same way at similar speeds (see RuleConfig)."""

    offender_speed_mps: float
    victim_speed_mps: float
    heading_difference_deg: float
    parallel: bool


@dataclass(frozen=True, slots=True)
class Position:
    """A device's last fix as the engine used it. Times are UTC epoch seconds.

    ``radius_m`` is the fix's 68 % radius at decision time (accuracy widened by age times the
    device's top speed); ``old`` says the age, not the accuracy, dominates it.
    """

    device: str
    lat: float
    lon: float
    acc_m: float
    t_fix: float
    t_recv: float
    seq: int
    radius_m: float = float("nan")
    old: bool = False


@dataclass(frozen=True, slots=True)
class ZoneRef:
    """The zone of a zone alarm: its label, ``exclusion`` or ``inclusion``, how far inside it
    the offender is (m, negative outside) and whether it is in force (its schedule)."""

    label: str
    kind: str
    inside_m: float
    in_force: bool


@dataclass(frozen=True, slots=True)
class DevicePursuit:
    """One device of a pursuit (proximity.pursuit) as the alarm message shows it."""

    device: str
    mode: str
    asked_interval_s: float | None  # None: not asked (cannot be commanded, or already fast)
    own_interval_s: float
    acknowledged: bool
    cadence_s: float | None  # the median gap of its fixes since the pursuit began


@dataclass(frozen=True, slots=True)
class PursuitInfo:
    """The pursuit of one alarm: ``active`` while its devices are asked to report faster
    (or already do); ``not_possible`` names the devices that cannot be commanded."""

    active: bool
    interval_s: float
    devices: tuple[DevicePursuit, ...]
    not_possible: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """One state change of one alarm; ``alarm_id`` is stable for the life of the alarm.

    ``trigger`` is the fix whose arrival led to the decision (the later-received of the two
    positions; the offender's for zone alarms), so its ``t_fix`` and ``t_recv`` are the
    alarm's fix and receipt times.
    ``cause`` is ``"fix"`` when a new fix led to the decision and ``"time"`` when the periodic
    sweep did (an old fix's uncertainty grew, a schedule changed, a device went silent), and
    ``"event"`` for a device event (panic, tamper, ...). ``uncertainty_m`` is the 99 % radius of the
    separation; ``probability`` that the true separation is within the order distance;
    ``closing_speed_mps`` positive when approaching (NaN: unknown); ``time_to_breach_s`` at
    that speed (0 inside, inf when not approaching, NaN unknown).

    Zone alarms (``type`` zone or curfew) carry ``zone``; their ``distance_m`` is the distance
    to the zone's boundary, ``uncertainty_m`` the 99 % radius of the offender's position,
    ``probability`` that he is inside an exclusion zone or outside an inclusion zone, and
    ``victim`` the last position of the case's first protected person.
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
    classification: Classification = Classification.UNKNOWN
    probability: float = float("nan")
    uncertainty_m: float = float("nan")
    closing_speed_mps: float = float("nan")
    time_to_breach_s: float = float("nan")
    cause: str = "fix"
    zone: ZoneRef | None = None
    #: The device a device alarm (silence, device event) is about; None for pair and zones.
    device: str | None = None
    #: The level before a level change (None when the alarm opens or nothing rose or fell).
    previous_level: AlarmLevel | None = None
    #: Both parties' motion (pair and approach alarms).
    motion: Motion | None = None
    #: Who acknowledged or closed the alarm (those states only).
    operator: str | None = None
    #: How an operator closed the alarm (ingest.model.RESOLUTIONS); None: not closed so.
    resolution: str | None = None
    #: Until when an operator suspended the alarm's source (``suspended`` events only).
    suspended_until: float | None = None
    #: The incident the alarm belongs to (proximity.incidents); None: not published yet.
    incident_id: str | None = None
    #: The pursuit of the alarm's devices (proximity.pursuit); None: no pursuit concerns it.
    pursuit: PursuitInfo | None = None

    def restated(
        self, state: AlarmState, t_decided: float, reason: str, cause: str, **more: Any
    ) -> AlarmEvent:
        """A new event of this alarm as it stands (its figures kept), in ``state``: what a
        previous event said of operators (who acknowledged, closed or suspended it, and how)
        and of a level change is not carried over unless given in ``more``."""
        cleared: dict[str, Any] = {
            "previous_level": None,
            "operator": None,
            "resolution": None,
            "suspended_until": None,
        }
        return replace(
            self, state=state, t_decided=t_decided, reason=reason, cause=cause, **(cleared | more)
        )

    @property
    def trigger(self) -> Position:
        if self.device is not None:
            return self.victim if self.device == self.victim.device else self.offender
        if self.zone is not None:  # a zone decision is about the offender's fix alone
            return self.offender
        return self.offender if self.offender.t_recv >= self.victim.t_recv else self.victim
