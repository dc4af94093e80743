"""Pursuit mode: the devices of an alarm report faster while it lasts.

A device reporting every minute shows the police where the offender was, not where he is
going. Deployed systems therefore ask the devices to report faster during an alarm. Here,
when an alarm at level ``alarm`` or above opens (or rises to it) for a pair or a zone, the
offender's device and the protected person's (the pair's, or, for a zone, every protected
person of the case) are asked to report every :attr:`RuleConfig.pursuit_interval_s`:

* a ``report_interval`` command, until a time (the lease: a device that hears nothing more
  falls back by itself), renewed at half the lease while the pursuit goes on;
* ``report_now`` when an alarm of the pursuit escalates;
* when the episode's last alarm has ended (or been closed) and ``pursuit_tail_s`` more have
  passed, ``report_interval`` with the device's own interval: restored.

Each command has an id, an expiry and a reason, which names no alarm, case or person (the
offender's device gets its commands too). A device that can be commanded acknowledges
on ``devices/{id}/cmd/ack``; one that has not acknowledged within ``pursuit_ack_timeout_s``
gets the command again (at most ``pursuit_sends`` times). A device that acknowledged (or
cannot acknowledge: an OwnTracks phone) but sends no fix for three pursuit intervals after
that keeps its old cadence (so does one that never acknowledged, once the sends are used
up): the command goes again, and after the last send a ``pursuit_ignored`` health alarm
opens in the case, ended when the device reports at pursuit
pace again or the pursuit is over. A device that reports over HTTP only (OsmAnd / Traccar
Client: nothing can reach it) cannot be commanded: the alarm says that pursuit was not
possible for it. A device whose own interval is already the pursuit's or shorter gets no
command (it is not slowed down).

Every alarm event of a pursuit carries :class:`PursuitInfo` (the alarm message's
``pursuit``). Decisions follow the engine's clock and the arrival times of the fixes and the
acknowledgements, never how they were batched: the timers are looked at in the sweeps.
The commands are taken by whoever publishes them (:meth:`Pursuit.take`); the way they are
written for each kind of device is :mod:`cic.commands`'s.
"""

from __future__ import annotations

import math
import statistics
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from proximity.cases import Case, Device
from proximity.clock import iso_utc
from proximity.events import (
    AlarmEvent,
    AlarmLevel,
    AlarmState,
    AlarmType,
    DevicePursuit,
    PursuitInfo,
)
from proximity.rules import RuleConfig

COMMAND_NAMESPACE = uuid.UUID("8e2f6b1d-4c3a-4f9e-b7d2-5a1c0e9f3b64")
PURSUIT_ALARM_NAMESPACE = uuid.UUID("1b7c9e3f-2d4a-4e6b-8f1c-6d3a9b2e7c45")

#: The alarms of a pair or a zone: those that start a pursuit at level alarm or above.
PAIR_TYPES = frozenset({AlarmType.PROXIMITY, AlarmType.APPROACH, AlarmType.PROBING})
ZONE_TYPES = frozenset({AlarmType.ZONE, AlarmType.CURFEW})
PURSUIT_TYPES = PAIR_TYPES | ZONE_TYPES
_OVER = (AlarmState.ENDED, AlarmState.CLOSED)
#: How a device can be reached: its native command topic, the OwnTracks app's, or not at all.
MQTT, OWNTRACKS, NONE = "mqtt", "owntracks", "none"
#: A device in pursuit that sends no fix for this many pursuit intervals keeps its old pace.
IGNORED_INTERVALS = 3.0
#: ... and ignores it until its last KEPT_GAPS gaps are within twice the pursuit's interval.
KEPT_GAPS = 3


def command_mode(info: Mapping[str, object]) -> str:
    """How a device described by ``info`` (its case-file entry) is commanded: an OwnTracks
    app on its command topic; a device that reports over HTTP only (an ``osmand`` alias:
    OsmAnd, Traccar Client) not at all; any other on ``devices/{id}/cmd``."""
    if isinstance(info.get("owntracks"), dict):
        return OWNTRACKS
    if isinstance(info.get("osmand"), dict):
        return NONE
    return MQTT


@dataclass(frozen=True, slots=True)
class Command:
    """One command to one device. ``kind`` is ``report_interval`` (``interval_s`` until
    ``until``; ``until`` None: its own interval, restored) or ``report_now``. A command sent
    again keeps its id (the device takes it once); ``send`` counts the sends."""

    command_id: str
    device: str
    mode: str
    kind: str
    interval_s: float | None
    until: float | None
    issued: float
    expires: float
    reason: str
    case_ids: tuple[str, ...]
    send: int = 1


@dataclass
class _Chase:
    """One device in pursuit (or being restored)."""

    device: str
    mode: str
    own_s: float
    started: float
    alarms: set[str] = field(default_factory=set)
    cases: set[str] = field(default_factory=set)
    tail_until: float = math.inf  # inf: an alarm is open
    command: Command | None = None  # the last report_interval sent
    sent_at: float = math.nan
    acked_at: float = math.inf  # arrival of its acknowledgement (inf: none yet)
    restoring: bool = False
    gaps_from: int = -1  # gaps its cadence had counted at the pursuit's first sweep
    cadence: float | None = None  # the median gap since then, as of the last sweep
    ignored: str | None = None  # the open pursuit_ignored alarm's id
    ignored_case: str | None = None
    ignored_gaps: int = 0  # gaps its cadence had counted when the alarm opened
    sent_ids: set[str] = field(default_factory=set)  # every command sent to it in this pursuit
    next_at: float = -math.inf  # the sweep from which it is looked at again (tick)

    @property
    def needs_command(self) -> bool:
        return self.mode != NONE


def _reason(kind: str, device: str, interval: float | None, why: str) -> str:
    if kind == "report_now":
        return f"report your position now: {why}"
    if interval is None:
        return f"pursuit over ({why}): back to your own reporting interval"
    return f"pursuit: report every {interval:g} s ({why})"


class Pursuit:
    """The devices in pursuit, their commands and acknowledgements (see the module doc).

    ``own_interval_s(device)`` is a device's own (declared) reporting interval;
    ``last_fix(device)`` the time of its newest fix (NaN: none); ``gaps(device)`` how many
    gaps between its fixes the engine has counted and the latest of them, newest last
    (proximity.cadence: as decided, fix by fix, whatever the batching);
    ``silent(device)`` whether its silence alarm is open (then it is not said to ignore
    the pursuit as well); ``health_alarm(...)`` builds the ``pursuit_ignored`` alarm event
    (the device watch's)."""

    def __init__(
        self,
        cases: Sequence[Case],
        devices: Sequence[Device],
        rules: RuleConfig,
        own_interval_s: Callable[[str], float],
        last_fix: Callable[[str], float],
        gaps: Callable[[str], tuple[int, list[float]]],
        silent: Callable[[str], bool],
        health_alarm: Callable[[str, AlarmState, str, str, str, float], AlarmEvent],
    ) -> None:
        self.rules = rules
        self.cases = {c.id: c for c in cases}
        self.modes = {d.id: command_mode(d.info) for d in devices}
        self._own = own_interval_s
        self._last_fix = last_fix
        self._gaps = gaps
        self._silent = silent
        self._health_alarm = health_alarm
        self.chases: dict[str, _Chase] = {}
        self.pending: list[Command] = []
        #: Every command sent so far (repeats included) and acknowledgements taken.
        self.commands_sent = 0
        self.acks = 0
        self._serial = 0

    def mode(self, device: str) -> str:
        return self.modes.get(device, MQTT)

    # -- the alarms ---------------------------------------------------------------------------

    def devices_of(self, e: AlarmEvent) -> list[str]:
        """The devices a pursuit for ``e`` asks: the offender's, and the protected person's
        (the pair's; every protected person of the case for a zone)."""
        case = self.cases.get(e.case_id)
        protected = (
            [e.victim.device] if e.type in PAIR_TYPES else list(case.protected if case else [])
        )
        return list(dict.fromkeys([e.offender.device, *protected]))

    def decide(self, events: Sequence[AlarmEvent]) -> list[AlarmEvent]:
        """Take the published ``events`` into the pursuits; return them, those of a pursuit
        with its :class:`PursuitInfo`."""
        if not self.rules.pursuit:
            return list(events)
        out = []
        for e in events:
            if e.type not in PURSUIT_TYPES:
                out.append(e)
                continue
            now = e.t_decided
            involved = self.devices_of(e)
            serious = e.level >= AlarmLevel.ALARM and e.state not in _OVER
            if serious:
                for dev in involved:
                    self._join(dev, e, now)
                rose = e.state == AlarmState.UPDATE and e.previous_level is not None
                if e.level >= AlarmLevel.ESCALATION and (
                    e.state == AlarmState.OPEN
                    or (rose and e.previous_level is not None and e.previous_level < e.level)
                ):
                    for dev in involved:
                        self._report_now(dev, e, now)
            else:
                for dev in involved:
                    self._leave(dev, e.alarm_id, now)
            chased = [self.chases[d] for d in involved if d in self.chases]
            if chased and any(e.alarm_id in c.alarms or c.tail_until < math.inf for c in chased):
                out.append(replace(e, pursuit=self.info(involved, e.t_decided)))
            else:
                out.append(e)
        return out

    def resume(self, events: Sequence[AlarmEvent], now: float) -> int:
        """After a restart: the open alarms (their last events) at level alarm or above put
        their devices in pursuit again, asked at ``now``; how many devices."""
        if not self.rules.pursuit:
            return 0
        for e in events:
            if e.type in PURSUIT_TYPES and e.level >= AlarmLevel.ALARM and e.state not in _OVER:
                for dev in self.devices_of(e):
                    self._join(dev, e, now)
        return len(self.chases)

    def info(self, devices: Sequence[str], at: float) -> PursuitInfo:
        """The pursuit of ``devices`` as an event decided at ``at`` shows it (only what the
        events and the sweeps before ``at`` decided: not how far the batch has gone)."""
        shown = []
        not_possible = []
        active = False
        for dev in devices:
            c = self.chases.get(dev)
            mode = self.mode(dev)
            own = self._own(dev)
            if mode == NONE:
                not_possible.append(dev)
            fast_already = own <= self.rules.pursuit_interval_s
            asked = None
            if c is not None and not c.restoring and mode != NONE and not fast_already:
                asked = self.rules.pursuit_interval_s
            if c is not None and not c.restoring and (asked is not None or fast_already):
                active = True
            shown.append(
                DevicePursuit(
                    dev,
                    mode,
                    asked,
                    own,
                    c is not None and c.acked_at <= at,
                    c.cadence if c is not None else None,
                )
            )
        return PursuitInfo(active, self.rules.pursuit_interval_s, tuple(shown), tuple(not_possible))

    def _pace(self, c: _Chase) -> None:
        """At a sweep: the median gap between the device's fixes since the pursuit's first
        sweep (read at the sweeps only, whose instants and preceding fixes batching does
        not change)."""
        count, recent = self._gaps(c.device)
        if c.gaps_from < 0:
            c.gaps_from = count
        k = min(len(recent), count - c.gaps_from)
        c.cadence = statistics.median(recent[len(recent) - k :]) if k > 0 else None

    def _join(self, dev: str, e: AlarmEvent, now: float) -> None:
        c = self.chases.get(dev)
        if c is None or c.restoring:
            c = self.chases[dev] = _Chase(dev, self.mode(dev), self._own(dev), now)
        c.alarms.add(e.alarm_id)
        c.cases.add(e.case_id)
        c.tail_until = math.inf
        c.next_at = -math.inf
        if c.command is None and self._commandable(c):
            self._ask(c, now, "an alarm is open")

    def _leave(self, dev: str, alarm_id: str, now: float) -> None:
        c = self.chases.get(dev)
        if c is None or alarm_id not in c.alarms:
            return
        c.alarms.discard(alarm_id)
        if not c.alarms:
            c.tail_until = now + self.rules.pursuit_tail_s
            c.next_at = -math.inf

    def _commandable(self, c: _Chase) -> bool:
        return c.needs_command and c.own_s > self.rules.pursuit_interval_s

    def _report_now(self, dev: str, e: AlarmEvent, now: float) -> None:
        c = self.chases.get(dev)
        if c is None or not self._commandable(c):
            return
        why = "the alarm escalated"
        self._queue(
            Command(
                self._id(dev, "report_now", now),
                dev,
                c.mode,
                "report_now",
                None,
                None,
                now,
                now + self.rules.pursuit_ack_timeout_s * self.rules.pursuit_sends,
                _reason("report_now", dev, None, why),
                tuple(sorted(c.cases)),
            )
        )

    def _ask(self, c: _Chase, now: float, why: str) -> None:
        """Ask for the pursuit's interval, until the lease is over."""
        r = self.rules
        self._set_interval(c, now, r.pursuit_interval_s, now + r.pursuit_lease_s, why)

    def _restore(self, c: _Chase, now: float) -> None:
        """Give the device its own interval back."""
        c.restoring = True
        self._set_interval(c, now, c.own_s, None, "the alarm is over")

    def _set_interval(
        self, c: _Chase, now: float, interval_s: float, until: float | None, why: str
    ) -> None:
        cmd = Command(
            self._id(c.device, "report_interval" if until is not None else "restore", now),
            c.device,
            c.mode,
            "report_interval",
            interval_s,
            until,
            now,
            now + self.rules.pursuit_lease_s,
            _reason("report_interval", c.device, interval_s if until is not None else None, why),
            tuple(sorted(c.cases)),
        )
        c.command, c.sent_at, c.acked_at = cmd, now, math.inf
        self._queue(cmd)

    def _id(self, dev: str, what: str, now: float) -> str:
        self._serial += 1
        return str(uuid.uuid5(COMMAND_NAMESPACE, f"{dev}/{what}/{now!r}/{self._serial}"))

    def _queue(self, cmd: Command) -> None:
        self.pending.append(cmd)
        self.commands_sent += 1
        c = self.chases.get(cmd.device)
        if c is not None:
            c.sent_ids.add(cmd.command_id)

    def take(self) -> list[Command]:
        """The commands decided since the last call, in order."""
        out, self.pending = self.pending, []
        return out

    # -- what the devices do ------------------------------------------------------------------

    def acknowledged(self, device: str, command_id: str, t_recv: float, obeys: bool = True) -> bool:
        """Device ``device`` acknowledged command ``command_id`` (arrived at ``t_recv``;
        ``obeys`` False: it said it cannot); False when it is no command of its pursuit now
        (an old one, or another device's). Only an ``ok`` of its current ``report_interval``
        counts as obeying it."""
        c = self.chases.get(device)
        if c is None or command_id not in c.sent_ids:
            return False
        if obeys and c.command is not None and c.command.command_id == command_id:
            # (No visit is forced: its timers are computed from the acknowledgement's
            # arrival, whenever it was taken in.)
            c.acked_at = min(c.acked_at, t_recv)
        self.acks += 1
        return True

    def tick(self, now: float) -> list[AlarmEvent]:
        """The timers at ``now`` (a sweep): restores, re-sends, renewals, and the health
        alarms of devices that ignore the pursuit (returned). A device is looked at when one
        of its timers is due, or every pursuit interval (its pace), not at every sweep."""
        events: list[AlarmEvent] = []
        for dev in list(self.chases):
            c = self.chases[dev]
            if c.next_at > now:
                continue
            if self._visit(c, now, events):
                del self.chases[dev]
            else:
                c.next_at = self._next_visit(c, now)
        return events

    def _visit(self, c: _Chase, now: float, events: list[AlarmEvent]) -> bool:
        """One device's timers at ``now``; True when its pursuit is over."""
        r = self.rules
        if c.restoring:
            return (
                c.acked_at <= now
                or c.mode != MQTT
                or c.command is None
                or (now - c.sent_at >= r.pursuit_ack_timeout_s and not self._resend(c, now))
            )
        self._pace(c)
        if now >= c.tail_until:
            events.extend(self._end_ignored(c, now, "the pursuit is over"))
            if self._commandable(c) and c.command is not None:
                self._restore(c, now)
                return False
            return True
        if not self._commandable(c) or c.command is None:
            return False
        acked = c.acked_at <= now
        unanswered = c.mode == MQTT and not acked
        if unanswered and now - c.sent_at >= r.pursuit_ack_timeout_s and self._resend(c, now):
            return False
        if c.command.until is not None and now >= c.command.issued + r.pursuit_lease_s / 2:
            self._ask(c, now, "renewed: the pursuit goes on")
            return False
        # Its pace: a device that sends no fix for three pursuit intervals after the
        # command (acknowledged or not) keeps its old cadence.
        quiet_for = now - self._quiet_since(c, now)
        if quiet_for >= self._quiet_limit():
            if not self._resend(c, now):
                why = f"no fix for {quiet_for:.0f} s after it"
                if unanswered:
                    why = f"never acknowledged, and {why}"
                events.extend(self._raise_ignored(c, now, why))
        elif c.ignored is not None and self._keeps_pace(c):
            events.extend(self._end_ignored(c, now, "the device reports at pursuit pace"))
        return False

    def _quiet_since(self, c: _Chase, now: float) -> float:
        """Since when the device has sent nothing that shows it obeys: its last fix, or the
        command (its acknowledgement) if that came later."""
        since = c.acked_at if c.acked_at <= now else c.sent_at
        last = self._last_fix(c.device)
        return max(last if math.isfinite(last) else -math.inf, since)

    def _quiet_limit(self) -> float:
        return IGNORED_INTERVALS * self.rules.pursuit_interval_s + self.rules.pursuit_ack_timeout_s

    def _next_visit(self, c: _Chase, now: float) -> float:
        """When ``c`` must be looked at next: its nearest timer, and at least every pursuit
        interval (its pace, for the alarm message and the end of an ignored pursuit)."""
        r = self.rules
        due = [now + r.pursuit_interval_s, c.tail_until]
        if c.command is not None and math.isfinite(c.sent_at):
            if c.acked_at > now:
                due.append(c.sent_at + r.pursuit_ack_timeout_s)
            if c.command.until is not None:
                due.append(c.command.issued + r.pursuit_lease_s / 2)
            due.append(self._quiet_since(c, now) + self._quiet_limit())
        return min(d for d in due if d > now)

    def _keeps_pace(self, c: _Chase) -> bool:
        """Its last KEPT_GAPS gaps, all since the alarm opened, are within twice the
        pursuit's interval (one fix is not a pace: the alarm does not flap)."""
        count, recent = self._gaps(c.device)
        if count - c.ignored_gaps < KEPT_GAPS or len(recent) < KEPT_GAPS:
            return False
        return max(recent[-KEPT_GAPS:]) <= 2.0 * self.rules.pursuit_interval_s

    def _resend(self, c: _Chase, now: float) -> bool:
        """Send ``c``'s command again; False when it has been sent as often as allowed."""
        assert c.command is not None
        if c.command.send >= self.rules.pursuit_sends:
            return False
        cmd = replace(c.command, send=c.command.send + 1)
        c.command, c.sent_at = cmd, now
        self._queue(cmd)
        return True

    def _raise_ignored(self, c: _Chase, now: float, why: str) -> list[AlarmEvent]:
        # A silent device has its own alarm (signal_lost, victim_silent): not a second one.
        if c.ignored is not None or not c.cases or self._silent(c.device):
            return []
        case_id = sorted(c.cases)[0]
        c.ignored = str(uuid.uuid5(PURSUIT_ALARM_NAMESPACE, f"{case_id}/{c.device}/{c.started!r}"))
        c.ignored_case = case_id
        c.ignored_gaps = self._gaps(c.device)[0]
        sends = c.command.send if c.command is not None else 0
        reason = (
            f"device {c.device} ignores pursuit: asked {sends} time(s) since"
            f" {iso_utc(c.started)} to report every {self.rules.pursuit_interval_s:g} s,"
            f" {why}; its position on the map may be old"
        )
        return [self._health_alarm(c.ignored, AlarmState.OPEN, case_id, c.device, reason, now)]

    def _end_ignored(self, c: _Chase, now: float, why: str) -> list[AlarmEvent]:
        if c.ignored is None or c.ignored_case is None:
            return []
        alarm_id, case_id = c.ignored, c.ignored_case
        c.ignored = c.ignored_case = None
        reason = f"device {c.device} no longer ignores pursuit: {why}"
        return [self._health_alarm(alarm_id, AlarmState.ENDED, case_id, c.device, reason, now)]

    def adopt(self, old: Pursuit) -> None:
        """Go on with ``old``'s pursuits (the registry changed and the engine was rebuilt):
        those of devices still in a case, with their commands not yet taken."""
        self.chases = {
            d: c
            for d, c in old.chases.items()
            if any(d in (*k.offenders, *k.protected) for k in self.cases.values())
        }
        self.pending = old.pending + self.pending
        self.commands_sent, self.acks, self._serial = old.commands_sent, old.acks, old._serial

    def in_pursuit(self) -> set[str]:
        """The devices asked (or being asked) to report faster now."""
        return {d for d, c in self.chases.items() if not c.restoring}
