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
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import orjson

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
        out.append(offender_notice(e.offender.device, kind, severity, e.t_decided))
    return out
