"""Messages to the offender's own device: the "move away" notice.

In practice the monitoring centre calls the offender at a pre-alert and tells him to move
away; a tag or phone app can show the same notice. The offender must never learn where the
protected person is, so the notice is built by :func:`offender_notice`, whose only inputs are
his device id, what kind of rule he is breaking, how serious it is and the time: it has no
parameter through which a position, a distance, a bearing or a zone's location could reach
it, and its text is fixed per kind and severity. (A distance, or a notice that changes as he
moves, would let him home in on her.)

:func:`notices_for` picks the alarm events that warrant a notice (an alarm opening or rising,
about an offender) and passes only those four fields on. Notices are published on
``devices/{device}/notice`` (:data:`NOTICE_TOPIC`).

The protected person's device gets notices too (:class:`VictimNotices`), on its own
``devices/{device}/notice``: graded by level, with the distance band, and, only where the
case allows it, the offender's position. They are built from the alarm events, apart from
the offender's: nothing of hers can reach his, whatever hers say.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import IntEnum

import orjson

from proximity.cases import Case
from proximity.clock import iso_utc
from proximity.events import AlarmEvent, AlarmLevel, AlarmState, AlarmType

NOTICE_TOPIC = "devices/{device}/notice"

NOTICE_NAMESPACE = uuid.UUID("c3a9e1f4-6b27-4d8e-9f05-2e7b4a1d6c38")


class NoticeKind(IntEnum):
    STAY_AWAY = 1  # a person or a place he must keep away from
    CURFEW = 2  # a place he must be at (a curfew)


class Severity(IntEnum):
    WARNING = 1  # close to it (pre-alert, approach)
    VIOLATION = 2  # breaking it (alarm, escalation)


TEXT = {
    (NoticeKind.STAY_AWAY, Severity.WARNING): (
        "You are close to a person or place that a court order tells you to keep away from."
        " Move away now."
    ),
    (NoticeKind.STAY_AWAY, Severity.VIOLATION): (
        "You are breaking a court order that tells you to keep away. Leave the area now."
        " The monitoring centre has been alerted."
    ),
    (NoticeKind.CURFEW, Severity.WARNING): (
        "Your curfew is in force. Go to the place the court order names now."
    ),
    (NoticeKind.CURFEW, Severity.VIOLATION): (
        "You are breaking your curfew. Go to the place the court order names now."
        " The monitoring centre has been alerted."
    ),
}


@dataclass(frozen=True, slots=True)
class OffenderNotice:
    """One notice to one offender device; ``payload`` is what the device receives."""

    device: str
    notice_id: str
    kind: NoticeKind
    severity: Severity
    issued: float
    text: str
    #: The case of the alarm that caused it (for the evidence record; not sent).
    case_id: str = ""

    @property
    def topic(self) -> str:
        return NOTICE_TOPIC.format(device=self.device)

    @property
    def payload(self) -> bytes:
        return orjson.dumps(
            {
                "notice_id": self.notice_id,
                "kind": self.kind.name.lower(),
                "severity": self.severity.name.lower(),
                "text": self.text,
                "issued": iso_utc(self.issued),
            }
        )


def offender_notice(
    device: str, kind: NoticeKind, severity: Severity, issued: float
) -> OffenderNotice:
    """The notice for offender device ``device`` (see the module docstring for why these
    are its only inputs)."""
    notice_id = str(
        uuid.uuid5(NOTICE_NAMESPACE, f"{device}/{kind.name}/{severity.name}/{issued!r}")
    )
    return OffenderNotice(device, notice_id, kind, severity, issued, TEXT[(kind, severity)])


_KIND = {
    AlarmType.PROXIMITY: NoticeKind.STAY_AWAY,
    AlarmType.APPROACH: NoticeKind.STAY_AWAY,
    AlarmType.ZONE: NoticeKind.STAY_AWAY,
    AlarmType.CURFEW: NoticeKind.CURFEW,
}


def notices_for(events: Sequence[AlarmEvent]) -> list[OffenderNotice]:
    """Notices for the events that open an alarm about an offender or raise its level (an
    approach is a warning: he has not reached the order distance yet). One fix that raises
    several of his alarms alike (the pair's and a zone's pre-alert) makes one notice, not
    two identical ones."""
    out = []
    sent: set[tuple[str, NoticeKind, Severity, float]] = set()
    for e in events:
        kind = _KIND.get(e.type)
        rising = e.state == AlarmState.OPEN or (
            e.state == AlarmState.UPDATE
            and e.previous_level is not None
            and e.level > e.previous_level
        )
        if kind is None or not rising:
            continue
        serious = e.level >= AlarmLevel.ALARM and e.type != AlarmType.APPROACH
        severity = Severity.VIOLATION if serious else Severity.WARNING
        key = (e.offender.device, kind, severity, e.trigger.t_recv)
        if key in sent:
            continue
        sent.add(key)
        notice = offender_notice(e.offender.device, kind, severity, e.t_decided)
        out.append(replace(notice, case_id=e.case_id))
    return out


# --- the protected person's own device ------------------------------------------------------

#: Distance bands of a victim notice: the upper bound (metres), its name, and how it reads.
BANDS = (
    (200.0, "under_200m", "under 200 m"),
    (500.0, "under_500m", "under 500 m"),
    (1000.0, "under_1km", "under 1 km"),
)
FAR_BAND = ("over_1km", "more than 1 km")

VICTIM_TEXT = {
    AlarmLevel.PRE_ALERT: (
        "Stay alert: the person the court order protects you from may be {where}."
        " The monitoring centre is watching."
    ),
    AlarmLevel.ALARM: (
        "The police have been alerted: the person the court order protects you from is {where}."
        " Go to a safe place now."
    ),
    AlarmLevel.ESCALATION: (
        "Danger: the person the court order protects you from is {where}. The police are on"
        " their way. Go to a safe place now and call 112 if you can."
    ),
}
#: The alarms whose distance is the one between the two parties.
_PAIR = frozenset({AlarmType.PROXIMITY, AlarmType.APPROACH, AlarmType.PROBING})


def band_of(distance_m: float) -> tuple[str, str]:
    """``(name, words)`` of the band ``distance_m`` falls in."""
    for bound, name, words in BANDS:
        if distance_m < bound:
            return name, words
    return FAR_BAND


def _rank(band: str | None) -> int:
    names = [b[1] for b in BANDS]
    return names.index(band) if band in names else len(names)


def _bearing_deg(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Initial great-circle bearing from point 1 to point 2, degrees from north."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(lon2 - lon1)
    y = math.sin(dl) * math.cos(p2)
    x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return (math.degrees(math.atan2(y, x)) + 360.0) % 360.0


@dataclass(frozen=True, slots=True)
class VictimNotice:
    """One notice to one protected person's device; ``body`` is what it receives."""

    device: str
    notice_id: str
    case_id: str
    body: dict[str, object]

    @property
    def topic(self) -> str:
        return NOTICE_TOPIC.format(device=self.device)

    @property
    def payload(self) -> bytes:
        return orjson.dumps(self.body)


class VictimNotices:
    """The protected person's notices: one when an alarm about her opens, and one each time
    an alarm of the episode (her case's alarms about her, while one is open) reaches a higher
    level or the offender a closer band (pair alarms); graded by level
    (:data:`VICTIM_TEXT`) with the distance band (:data:`BANDS`), never the offender's
    position or direction, unless the case allows it (``share_offender_position``: then
    his last position, its accuracy and time, the exact distance and the bearing from her
    to him are added). A zone alarm (he entered a place the order protects) tells every
    protected person of the case, without a band."""

    def __init__(self) -> None:
        #: (case id, device) -> (level, band rank) of the last notice sent in the episode
        #: (while any alarm of the case about her is open), and those alarms.
        self._sent: dict[tuple[str, str], tuple[int, int]] = {}
        self._open: dict[tuple[str, str], set[str]] = {}

    def take(self, events: Sequence[AlarmEvent], cases: Mapping[str, Case]) -> list[VictimNotice]:
        out: list[VictimNotice] = []
        for e in events:
            if e.type not in _PAIR and e.type != AlarmType.ZONE:
                continue
            case = cases.get(e.case_id)
            if case is None:
                continue
            targets = [e.victim.device] if e.type in _PAIR else list(case.protected)
            for dev in targets:
                key = (e.case_id, dev)
                alarms = self._open.setdefault(key, set())
                if e.state in (AlarmState.ENDED, AlarmState.CLOSED):
                    alarms.discard(e.alarm_id)
                    if not alarms:  # the episode is over: the next alarm tells her again
                        self._open.pop(key, None)
                        self._sent.pop(key, None)
                    continue
                alarms.add(e.alarm_id)
                notice = self._notice(e, case, dev, key)
                if notice is not None:
                    out.append(notice)
        return out

    def _notice(
        self, e: AlarmEvent, case: Case, dev: str, key: tuple[str, str]
    ) -> VictimNotice | None:
        pair = e.type in _PAIR and math.isfinite(e.distance_m)
        band, words = band_of(e.distance_m) if pair else (None, "near a place the order protects")
        rank = _rank(band)
        was = self._sent.get(key)
        if was is not None and int(e.level) <= was[0] and rank >= was[1]:
            return None  # nothing more serious, no closer band
        if was is None and e.state not in (AlarmState.OPEN, AlarmState.UPDATE):
            return None
        self._sent[key] = (
            max(int(e.level), was[0] if was else 0),
            min(rank, was[1] if was else rank),
        )
        text = VICTIM_TEXT[e.level].format(where=(f"{words} from you" if pair else words))
        notice_id = str(uuid.uuid5(NOTICE_NAMESPACE, f"{dev}/{e.alarm_id}/{e.t_decided!r}"))
        body: dict[str, object] = {
            "notice_id": notice_id,
            "kind": "protection",
            "level": e.level.name.lower(),
            "band": band,
            "text": text,
            "issued": iso_utc(e.t_decided),
        }
        off = e.offender
        if case.share_offender_position and math.isfinite(off.lat):
            body["offender"] = {
                "lat": round(off.lat, 6),
                "lon": round(off.lon, 6),
                "acc_m": round(off.acc_m, 1) if math.isfinite(off.acc_m) else None,
                "fix_time": iso_utc(off.t_fix),
            }
            if pair:
                body["distance_m"] = round(e.distance_m, 1)
                me = e.victim
                if math.isfinite(me.lat):
                    body["bearing_deg"] = round(_bearing_deg(me.lat, me.lon, off.lat, off.lon), 1)
        return VictimNotice(dev, notice_id, e.case_id, body)
