"""Device health and device events: the rules that watch devices rather than distances.

* Silence: nothing (fix or event) from a device for longer than its expected reporting
  interval plus a grace (:class:`~proximity.rules.RuleConfig`, or the case file's devices
  list per device) opens a "signal lost" alarm for an offender's device and a "victim device
  silent" pre-alert for a protected person's, in every case of the device: the pairs cannot
  be assessed, and the operator must know. The next message from the device ends it. A
  device that has never reported counts as silent from the engine's start.
* Sequence gaps: a device that numbers its fixes (``seq``, one more per fix it sends) shows
  what never arrived: numbers skipped by a later fix that have not come
  :data:`GAP_SETTLE_S` later (a device may send stored fixes after its live ones) open a
  ``data_gap`` alarm in every case of the device at the next sweep, naming the missing
  numbers and the span (the broker or the network lost them: :meth:`DeviceWatch.numbers`).
* Device events (``devices/{id}/event``): panic, tamper or strap removed, battery low, power
  off and separated from the wearer each become their own alarm type and level, in every case
  of the device. A panic is the highest level (escalation), forwarded at once.

Per device the state is arrays (last message time, silent or not); Python work happens only
for the devices whose state changes.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from ingest.model import DeviceEvent
from numerics.jit import kernel
from proximity import reasons
from proximity.alarms import SILENCE, AlarmBook
from proximity.cadence import Cadence
from proximity.cases import Case, Device
from proximity.clock import iso_utc
from proximity.events import AlarmEvent, AlarmLevel, AlarmState, AlarmType, Position
from proximity.rules import RuleConfig

HEALTH_ALARM_NAMESPACE = uuid.UUID("3a9d2c71-0f4e-4b8a-a6d5-7e1c9b2f4d60")
#: A fix numbered this much below its device's last one (and in no gap) starts the count
#: again (the device restarted its counter); closer below, it is a repeat.
SEQ_RESTART = 64
#: How long missing numbers may take to come after all (a device that sends what it stored
#: while out of coverage after its live fixes) before they are a data gap.
GAP_SETTLE_S = 30.0

#: Device event type -> (alarm type, level).
EVENT_ALARMS: dict[str, tuple[AlarmType, AlarmLevel]] = {
    "panic": (AlarmType.PANIC, AlarmLevel.ESCALATION),
    "tamper": (AlarmType.TAMPER, AlarmLevel.ALARM),
    "strap_removed": (AlarmType.TAMPER, AlarmLevel.ALARM),
    "power_off": (AlarmType.POWER_OFF, AlarmLevel.ALARM),
    "separated": (AlarmType.SEPARATED, AlarmLevel.ALARM),
    "battery_low": (AlarmType.BATTERY_LOW, AlarmLevel.PRE_ALERT),
}

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@kernel
def sequence_steps(
    slots: IntArray,
    seq: IntArray,
    t_recv: FloatArray,
    last_seq: IntArray,
    last_t: FloatArray,
    odd: BoolArray,
) -> int:
    """Fixes ``k`` (of device ``slots[k]``, numbered ``seq[k]``, -1: none, in arrival order;
    a device at most once) against each device's last number ``last_seq`` (-1: none yet):
    the usual fix (the next number, or a device's first) moves ``last_seq`` and its arrival
    ``last_t`` on here; the others (a skip, a repeat, one out of order, a new count) are
    marked in ``odd`` for :class:`DeviceWatch` to sort out. Returns how many are odd."""
    n = 0
    for k in range(slots.size):
        odd[k] = False
        q = seq[k]
        if q < 0:
            continue
        s = slots[k]
        prev = last_seq[s]
        if prev < 0 or q == prev + 1:
            last_seq[s] = q
            last_t[s] = t_recv[k]
        else:
            odd[k] = True
            n += 1
    return n


@dataclass(slots=True)
class Gap:
    """Numbers ``lo`` to ``hi`` of a device that had not arrived when a later one did."""

    lo: int
    hi: int
    since: float  # arrival of the fix before the gap
    until: float  # arrival of the fix after it (when the gap was seen)
    filled: set[int] = field(default_factory=set)  # those of them that came after all

    @property
    def missing(self) -> int:
        return self.hi - self.lo + 1 - len(self.filled)

    def fill(self, q: int) -> bool:
        if self.lo <= q <= self.hi and q not in self.filled:
            self.filled.add(q)
            return True
        return False


def _seconds(info: object, key: str, default: float) -> float:
    """A device's own timing from the case file (validated on import), else the default."""
    value = info.get(key) if isinstance(info, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return default
    return float(value)


class DeviceWatch:
    """Silence and device events of every device of the engine (one slot per device)."""

    def __init__(
        self,
        cases: Sequence[Case],
        slot_of: dict[str, int],
        devices: Sequence[Device],
        rules: RuleConfig,
        position: Callable[[int, float], Position],
        clock: Callable[[], float],
        book: AlarmBook,
    ) -> None:
        self.slot_of = slot_of
        self.ids = sorted(slot_of, key=slot_of.__getitem__)
        n = len(slot_of)
        info = {d.id: d.info for d in devices}
        self.interval_s = np.array(
            [
                _seconds(info.get(d), "reporting_interval_s", rules.reporting_interval_s)
                for d in self.ids
            ]
        )
        self.grace_s = np.array(
            [_seconds(info.get(d), "signal_grace_s", rules.signal_grace_s) for d in self.ids]
        )
        #: The cadence each device keeps (proximity.cadence; the intake learns it): a device
        #: that reports more slowly than declared is silent only after its own usual gap
        #: plus the grace.
        self.cadence = Cadence(self.interval_s)
        self.cases = tuple(cases)
        #: (case, role) of each slot: role True for an offender.
        self.cases_of: list[list[tuple[Case, bool]]] = [[] for _ in range(n)]
        for case in cases:
            for d in case.offenders:
                self.cases_of[slot_of[d]].append((case, True))
            for d in case.protected:
                self.cases_of[slot_of[d]].append((case, False))
        self._position = position
        self._clock = clock
        self.last_seen = np.full(n, clock())  # never heard: silent from the start
        self.silent = np.zeros(n, dtype=bool)
        self.alarm_ids = book.ids(SILENCE)  # (case id, slot) -> its open silence alarm
        self.last_seq = np.full(n, -1, dtype=np.int64)  # the newest fix number of each device
        self.last_seq_t = np.full(n, np.nan)
        self.fixes_missing = 0  # fixes the devices' numbers show never arrived
        self.gaps: dict[int, list[Gap]] = {}  # slot -> its open gaps

    def numbers(self, slots: IntArray, seq: IntArray, t_recv: FloatArray) -> None:
        """Fixes of ``slots`` numbered ``seq`` (-1: none), arrived at ``t_recv``, in arrival
        order (a device at most once): note the gaps in each device's numbers, and fill them
        with numbers that come late. A gap still open :data:`GAP_SETTLE_S` after it was seen
        is a ``data_gap`` alarm at the next sweep (:meth:`sweep`)."""
        odd = np.empty(slots.size, dtype=np.bool_)
        if not sequence_steps(slots, seq, t_recv, self.last_seq, self.last_seq_t, odd):
            return
        for k in np.flatnonzero(odd):  # rare: Python work only for these
            slot, q, now = int(slots[k]), int(seq[k]), float(t_recv[k])
            prev = int(self.last_seq[slot])
            gaps = self.gaps.setdefault(slot, [])
            if q > prev + 1:
                gaps.append(Gap(prev + 1, q - 1, float(self.last_seq_t[slot]), now))
            elif any(g.fill(q) for g in gaps):
                gaps[:] = [g for g in gaps if g.missing]
                continue
            elif q >= prev - SEQ_RESTART:
                continue  # a repeat
            self.last_seq[slot] = q  # past a gap, or a new count
            self.last_seq_t[slot] = now

    def _gap_events(self, now: float) -> list[AlarmEvent]:
        """``data_gap`` alarms, in every case of the device, for the gaps that stayed open
        :data:`GAP_SETTLE_S`."""
        out = []
        for slot in sorted(self.gaps):
            due = [g for g in self.gaps[slot] if now - g.until >= GAP_SETTLE_S]
            if not due:
                continue
            self.gaps[slot] = [g for g in self.gaps[slot] if now - g.until < GAP_SETTLE_S]
            if not self.gaps[slot]:
                del self.gaps[slot]
            dev = self.ids[slot]
            for g in due:
                self.fixes_missing += g.missing
                for case, is_offender in self.cases_of[slot]:
                    reason = reasons.sequence_gap(
                        dev,
                        is_offender,
                        missing=g.missing,
                        lo=g.lo,
                        hi=g.hi,
                        partly=bool(g.filled),
                        since=iso_utc(g.since),
                        until=iso_utc(g.until),
                    )
                    alarm_id = str(
                        uuid.uuid5(
                            HEALTH_ALARM_NAMESPACE,
                            f"{case.id}/{dev}/DATA_GAP/{g.lo}/{g.until!r}",
                        )
                    )
                    out.append(
                        self.alarm_event(
                            alarm_id,
                            AlarmType.DATA_GAP,
                            AlarmLevel.ALARM,
                            AlarmState.OPEN,
                            case,
                            slot,
                            is_offender,
                            reason,
                            now,
                        )
                    )
        return out

    def seen(self, slots: IntArray, t_recv: FloatArray) -> list[AlarmEvent]:
        """Messages arrived from ``slots`` (at ``t_recv``); end the silence of those devices,
        each decided at the arrival of its first message."""
        np.maximum.at(self.last_seen, slots, t_recv)
        was_silent = self.silent[slots]
        if not was_silent.any():
            return []
        events = []
        for k in np.flatnonzero(was_silent):
            s = int(slots[k])
            if self.silent[s]:
                self.silent[s] = False
                events.extend(self._silence_events(s, AlarmState.ENDED, float(t_recv[k])))
        return events

    def sweep(self, now: float) -> list[AlarmEvent]:
        """Open silence alarms for the devices that have just gone quiet."""
        quiet = ~self.silent & (now - self.last_seen > self.cadence.expected_s() + self.grace_s)
        events = []
        for s in np.flatnonzero(quiet):
            self.silent[s] = True
            events.extend(self._silence_events(int(s), AlarmState.OPEN, now))
        if self.gaps:
            events.extend(self._gap_events(now))
        return events

    def _silence_events(self, slot: int, state: AlarmState, now: float) -> list[AlarmEvent]:
        dev = self.ids[slot]
        quiet_s = now - float(self.last_seen[slot])
        out = []
        for case, is_offender in self.cases_of[slot]:
            kind = AlarmType.SIGNAL_LOST if is_offender else AlarmType.VICTIM_SILENT
            key = (case.id, slot)
            if state == AlarmState.OPEN:
                alarm_id = str(
                    uuid.uuid5(HEALTH_ALARM_NAMESPACE, f"{case.id}/{dev}/{kind.name}/{now!r}")
                )
                self.alarm_ids[key] = alarm_id
                reason = reasons.silence(
                    dev,
                    is_offender,
                    quiet_s=quiet_s,
                    interval_s=float(self.cadence.expected_s(np.array([slot]))[0]),
                    grace_s=float(self.grace_s[slot]),
                )
            else:
                if key not in self.alarm_ids:  # closed by an operator meanwhile: silent
                    continue
                alarm_id = self.alarm_ids.pop(key)
                reason = reasons.silence_over(dev)
            out.append(
                self.alarm_event(
                    alarm_id, kind, _level(kind), state, case, slot, is_offender, reason, now
                )
            )
        return out

    def device_events(self, events: Sequence[DeviceEvent]) -> list[AlarmEvent]:
        """Alarms for device events of known devices, in arrival order, each decided at its
        arrival."""
        out: list[AlarmEvent] = []
        for ev in events:
            now = ev.t_recv
            slot = self.slot_of[ev.device]
            kind, level = EVENT_ALARMS[ev.kind]
            for case, is_offender in self.cases_of[slot]:
                alarm_id = str(
                    uuid.uuid5(
                        HEALTH_ALARM_NAMESPACE, f"{case.id}/{ev.device}/{ev.kind}/{ev.t_event!r}"
                    )
                )
                reason = reasons.device_event(ev.kind, ev.device, is_offender, iso_utc(ev.t_event))
                out.append(
                    self.alarm_event(
                        alarm_id,
                        kind,
                        level,
                        AlarmState.OPEN,
                        case,
                        slot,
                        is_offender,
                        reason,
                        now,
                        ev,
                    )
                )
        return out

    def case_alarms(
        self, kind: AlarmType, level: AlarmLevel, reason: str, at: float, ns: uuid.UUID
    ) -> list[AlarmEvent]:
        """An alarm about the engine itself (``engine_fault``, ``data_gap``), one per case:
        every case is affected. Each names the case's first offender device and carries the
        parties' last positions."""
        return [
            self.alarm_event(
                str(uuid.uuid5(ns, f"{case.id}/{kind.name}/{at!r}")),
                kind,
                level,
                AlarmState.OPEN,
                case,
                self.slot_of[case.offenders[0]],
                True,
                reason,
                at,
            )
            for case in self.cases
        ]

    def alarm_event(
        self,
        alarm_id: str,
        kind: AlarmType,
        level: AlarmLevel,
        state: AlarmState,
        case: Case,
        slot: int,
        is_offender: bool,
        reason: str,
        now: float,
        source: DeviceEvent | None = None,
    ) -> AlarmEvent:
        """A device alarm's event about the device in ``slot`` (its health, its events, or
        for another rule the pursuit's ``pursuit_ignored``), with both parties' last
        positions; ``source`` the device event that caused it, if one did."""
        own = self._position(slot, now)
        if source is not None:
            # The event is the newest message of this device; its own position, when it has
            # one at least as new as the last fix, is the newest position too.
            own = replace(own, t_recv=source.t_recv, seq=source.seq)
            if not math.isnan(source.lat) and not source.t_event < own.t_fix:  # NaN: no fix
                own = replace(
                    own,
                    lat=source.lat,
                    lon=source.lon,
                    acc_m=source.acc_m,
                    t_fix=source.t_event,
                    radius_m=source.acc_m,
                    old=False,
                )
        other_dev = case.protected[0] if is_offender else case.offenders[0]
        other = self._position(self.slot_of[other_dev], now)
        off, vic = (own, other) if is_offender else (other, own)
        return AlarmEvent(
            alarm_id=alarm_id,
            type=kind,
            level=level,
            state=state,
            case_id=case.id,
            offender=off,
            victim=vic,
            distance_m=math.nan,
            order_distance_m=case.order_distance_m,
            margin_m=math.nan,
            reason=reason,
            t_decided=self._clock(),
            cause="event" if source is not None else "fix" if state == AlarmState.ENDED else "time",
            device=own.device,
        )


def _level(kind: AlarmType) -> AlarmLevel:
    return AlarmLevel.ALARM if kind == AlarmType.SIGNAL_LOST else AlarmLevel.PRE_ALERT
