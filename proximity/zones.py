"""The zone rule: every offender against every zone of his cases, as a state machine per
(offender, zone) entry.

Each entry is a level machine (:mod:`proximity.states`), with the pair rule's confirmation,
dwell, escalation and re-notification.

* Exclusion zone (the victim's home, workplace, the children's school): a pre-alert when the
  offender is possibly inside or within the zone's warning band (signed distance minus the
  99 % radius U at most ``warning_m``); the alarm at once when he is certainly inside
  (s + U <= 0), or when his best estimate has been inside (s <= 0) for the confirmation time.
  A level is left when even the pessimistic position is outside its distance by the margin
  (s - U > margin) for the dwell time, and at once when the zone goes out of force.
* Inclusion zone (home, with a curfew schedule): a violation is likely when the best estimate
  of the offender's position is outside (s > 0): a small home zone with indoor fixes of 30 m
  would otherwise be "possibly outside" all night; it is certain when even the optimistic
  position is outside (s - U > 0). It ends when he is back inside by the margin (the smaller
  of the margin and a quarter of the zone's size, so a small zone can be re-entered) or
  certainly inside, for the dwell time, or at once when the curfew ends.

Schedules are followed to the second: each zone keeps whether it is in force and the instant
of its next change (:meth:`geofence.schedule.Schedule.next_change`); the engine's periodic
sweep flips the flag when that instant passes and re-evaluates every entry, so a curfew that
starts while the offender is away raises an alarm without any new fix.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from geofence import kernels as gk
from geofence.compiled import ZoneSet
from geofence.model import Zone, ZoneKind, parse_zones
from numerics.uncertainty import Classification
from proximity import reasons
from proximity.alarms import ZONE, ZONE_PROBING, AlarmBook
from proximity.cases import Case
from proximity.clock import iso_utc
from proximity.core import R0, VMAX, ProximityCore
from proximity.errors import RegistryError
from proximity.events import AlarmEvent, AlarmLevel, AlarmState, AlarmType, Position, ZoneRef
from proximity.pairs import gather_pairs
from proximity.rules import RuleConfig
from proximity.states import (
    ALARM,
    NONE,
    Conditions,
    EntryCounter,
    LevelMachine,
    Step,
    Timing,
    Transition,
    audible,
)

IntArray = npt.NDArray[np.int64]

#: alarm ids: uuid5(namespace, "case/offender/zone index/opening fix time").
ZONE_ALARM_NAMESPACE = uuid.UUID("0b6f7a4e-3c59-4f0e-9d61-5d2b8f1c7a93")
ZONE_PROBING_NAMESPACE = uuid.UUID("5e2d8b71-9a46-4c03-b8f7-1d6e3a9c4f25")

U_PER_R68 = gk.K99 / gk.K68  # 99 % radius per 68 % radius of a 2-D Gaussian


class ZoneWatch:
    """Zone entries of one engine: compiled zones, entry arrays, state and schedules."""

    def __init__(
        self,
        cases: Sequence[Case],
        slot_of: dict[str, int],
        core: ProximityCore,
        rules: RuleConfig,
        position: Callable[[int, float], Position],
        clock: Callable[[], float],
        book: AlarmBook,
    ) -> None:
        zones: list[Zone] = []
        owner: list[int] = []
        entry_slot: list[int] = []
        entry_zone: list[int] = []
        names: list[str] = []  # each entry's stable name (what a restart keeps it by)
        for ci, case in enumerate(cases):
            parsed, problems = parse_zones(case.zones)
            if problems:  # validated on import, but a registry may predate a rule
                raise RegistryError(
                    f"case {case.id} in the registry has zones this version rejects:"
                    f" {'; '.join(problems)}. Correct the case file and import it again."
                )
            for n, z in enumerate(parsed):
                zi = len(zones)
                zones.append(z)
                owner.append(ci)
                for o in case.offenders:
                    entry_slot.append(slot_of[o])
                    entry_zone.append(zi)
                    names.append(f"{case.id}/{n}/{z.label}/{o}")
        self._names = names
        self.cases = tuple(cases)
        self.core = core
        self.slot_of = slot_of
        self._position = position
        self._clock = clock
        self.set = ZoneSet.compile(zones, owner)
        self.slot = np.array(entry_slot, dtype=np.int64)
        self.zone = np.array(entry_zone, dtype=np.int64)
        n_slots = len(slot_of)
        order = np.argsort(self.slot, kind="stable")
        self.dev_entries = order.astype(np.int64)
        self.dev_ptr = np.zeros(n_slots + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.slot, minlength=n_slots), out=self.dev_ptr[1:])
        self._mark = np.zeros(len(self), dtype=np.bool_)
        self._scratch = np.empty(len(self), dtype=np.int64)
        self.exclusion = np.array([z.kind == ZoneKind.EXCLUSION for z in zones], dtype=bool)
        margin_min_m = rules.margin_min_m
        self.margin_m = np.where(
            self.exclusion, margin_min_m, np.minimum(margin_min_m, 0.25 * self.set.size_m)
        )
        self.warning_m = np.array([z.warning_m for z in zones], dtype=np.float64)
        self.rules = rules
        timing = Timing(rules.confirm_s, rules.dwell_s, rules.escalate_after_s, rules.renotify_s)
        self.levels = LevelMachine(len(self), timing)
        self.probes = EntryCounter(
            rules.probe_entries,
            rules.probe_window_s,
            rules.probe_min_gap_s,
            alarm_ids=book.ids(ZONE_PROBING),
        )
        self.alarm_ids = book.ids(ZONE)  # zone entry -> its open zone or curfew alarm
        self.opened: dict[int, float] = {}
        self.active = np.ones(len(zones), dtype=bool)
        self.next_change = np.array(
            [-math.inf if z.schedule is not None else math.inf for z in zones]
        )

    def entry_names(self) -> list[str]:
        """``case/zone number/label/offender`` of each entry: what a restart keeps it by."""
        return list(self._names)

    def __len__(self) -> int:
        return int(self.slot.size)

    def update_schedules(self, now: float) -> int:
        """Bring the in-force flags up to ``now``; return how many zones changed."""
        due = np.flatnonzero(self.next_change <= now)
        changed = 0
        for zi in due:
            sched = self.set.zones[zi].schedule
            assert sched is not None
            active = sched.active(now)
            changed += int(active != self.active[zi])
            self.active[zi] = active
            self.next_change[zi] = sched.next_change(now)
        return changed

    def entries_of(self, slots: IntArray) -> IntArray:
        n = gather_pairs(slots, self.dev_ptr, self.dev_entries, self._mark, self._scratch)
        return self._scratch[:n].copy()

    def decide(
        self, idx: IntArray, now: float | npt.NDArray[np.float64], cause: str
    ) -> list[AlarmEvent]:
        """Evaluate entries ``idx`` at ``now`` (one time, or one per entry: the entries of one
        device share the time) and return their alarm state changes."""
        if idx.size == 0:
            return []
        rows = self.core.rows
        now = np.broadcast_to(np.asarray(now, dtype=np.float64), idx.shape)
        slots = self.slot[idx]
        r68 = np.full(rows.shape[0], np.nan)  # each device's 68 % radius at its entries' time
        r68[slots] = rows[slots, R0] + now * rows[slots, VMAX]
        zone = self.zone[idx]
        ev = self.set.evaluate_xyz(rows, r68, slots, zone)
        u = U_PER_R68 * r68[slots]
        s = ev.signed_m
        cls = ev.classification
        excl = self.exclusion[zone]
        active = self.active[zone]
        margin = self.margin_m[zone]
        warning = self.warning_m[zone]
        beyond = u > self.rules.max_uncertainty_m  # "position unknown" (see Conditions)
        known = (cls != gk.UNKNOWN) & ~beyond
        live = active & known
        # NaN (no fix) compares False: an entry without a position never leaves by distance.
        left = np.where(excl, s - u > margin, (s <= -margin) | (cls == gk.CERTAIN_INSIDE))
        # Time alone only grows an old fix's uncertainty: a sweep holds a pre-alert, never
        # enters one; beyond max_uncertainty_m the position is unknown and nothing changes.
        fresh = cause != "time"
        cond = Conditions(
            pre=excl & live & (cls >= gk.WARNING) & fresh,  # the warning band, or a possible entry
            likely=np.where(excl, s <= 0.0, s > 0.0) & live,
            certain=np.where(excl, cls == gk.CERTAIN_INSIDE, s - u > 0.0) & live,
            escalate=np.zeros(idx.size, dtype=bool),
            leave_alarm=left,
            leave_pre=np.where(excl & (warning > 0), s - u > warning + margin, left),
            force_end=~active,
            unknown=beyond,
        )
        moves = audible(self.levels.step(idx, cond, now, fresh=fresh), idx, self.alarm_ids)
        if not moves:
            return []
        verdict = np.where(
            excl,
            cls,
            np.where(
                s - u > 0.0,
                Classification.CERTAIN_BREACH,
                np.where(s > 0.0, Classification.POSSIBLE_BREACH, Classification.CLEAR),
            ),
        )
        verdict = np.where(known, verdict, Classification.UNKNOWN)
        p_breach = np.where(excl, ev.p_inside, 1.0 - ev.p_inside)
        decided = self._clock()
        events = []
        for m in moves:
            e = int(idx[m.k])
            at = float(now[m.k])
            args = (
                float(s[m.k]),
                float(u[m.k]),
                Classification(int(verdict[m.k])),
                float(p_breach[m.k]),
                bool(active[m.k]),
                at,
                decided,
                cause,
            )
            events.append(self._event(e, m, *args))
            # Boundary probing: repeated entries into an exclusion zone or its warning band.
            if m.step == Step.OPEN and excl[m.k] and self.probes.enter(e, at):
                events.append(self._event(e, m, *args, probing=AlarmState.OPEN))
        return events

    def probe_expiry(self, now: float) -> list[AlarmEvent]:
        """Probing alarms with no entry for a whole window end (called by the sweep)."""
        done = self.probes.expired(now)
        if not done:
            return []
        idx = np.array(done, dtype=np.int64)
        rows = self.core.rows
        r68 = rows[:, R0] + now * rows[:, VMAX]
        ev = self.set.evaluate_xyz(rows, r68, self.slot[idx], self.zone[idx])
        u = U_PER_R68 * r68[self.slot[idx]]
        decided = self._clock()
        none = Transition(0, Step.END, NONE, NONE, False)
        return [
            self._event(
                int(e),
                none,
                float(ev.signed_m[k]),
                float(u[k]),
                Classification(int(ev.classification[k])),
                float(ev.p_inside[k]),
                bool(self.active[self.zone[e]]),
                now,
                decided,
                "time",
                probing=AlarmState.ENDED,
            )
            for k, e in enumerate(idx)
        ]

    def _event(
        self,
        e: int,
        m: Transition,
        s: float,
        u: float,
        verdict: Classification,
        p_breach: float,
        active: bool,
        now: float,
        decided: float,
        cause: str,
        probing: AlarmState | None = None,
    ) -> AlarmEvent:
        """The event of transition ``m`` of entry ``e``; with ``probing``, instead, the
        opening or end of the entry's boundary-probing alarm."""
        zi = int(self.zone[e])
        zone = self.set.zones[zi]
        case = self.cases[int(self.set.owner[zi])]
        off = self._position(int(self.slot[e]), now)
        # The protected person's last position tells the team whether she is there too.
        vic = self._position(self.slot_of[case.protected[0]], now)
        excl = zone.kind == ZoneKind.EXCLUSION
        name = reasons.zone_name(zone.label, excl)
        where = reasons.zone_where(off.device, s, u, name)
        r = self.rules
        figures = (s, u, verdict, p_breach, active, decided, cause, off, vic)
        if probing is not None:
            alarm_id, reason = self._probing(e, probing == AlarmState.OPEN, where, name, off.device)
            return self._zone_event(
                e, AlarmType.PROBING, ALARM, 0, probing, alarm_id, reason, *figures
            )
        if m.new_alarm:
            again = "" if m.step == Step.OPEN else f"/reopened/{now!r}"
            key = f"{case.id}/{off.device}/{zi}/{off.t_fix!r}{again}"
            self.alarm_ids[e] = str(uuid.uuid5(ZONE_ALARM_NAMESPACE, key))
            self.opened[e] = now
        alarm_id = self.alarm_ids[e]
        if m.step == Step.END:
            del self.alarm_ids[e]
        reason = reasons.zone(
            m.step,
            m.level,
            where,
            name=name,
            exclusion=excl,
            in_force=bool(active),
            certain=verdict == Classification.CERTAIN_BREACH,
            possibly_inside=s - u <= 0.0,
            warning_m=float(self.warning_m[zi]),
            margin_m=float(self.margin_m[zi]),
            opened=iso_utc(self.opened.get(e, now)),
            curfew_began=cause == "time",
            dwell_s=r.dwell_s,
            confirm_s=r.confirm_s,
            escalate_after_s=r.escalate_after_s,
        )
        state = (
            AlarmState.OPEN
            if m.new_alarm
            else AlarmState.ENDED
            if m.step == Step.END
            else AlarmState.UPDATE
        )
        kind = AlarmType.ZONE if excl else AlarmType.CURFEW
        before = m.before if m.level else 0
        return self._zone_event(
            e, kind, m.level or m.before, before, state, alarm_id, reason, *figures
        )

    def _probing(self, e: int, opened: bool, where: str, name: str, device: str) -> tuple[str, str]:
        """The id and the reason of entry ``e``'s boundary-probing alarm, as it opens (or
        ends: its id then leaves the book's open alarms)."""
        zi = int(self.zone[e])
        if opened:
            case = self.cases[int(self.set.owner[zi])]
            key = f"{case.id}/{device}/{zi}/{self.probes.entries[e][0]!r}"
            self.probes.alarm_ids[e] = alarm_id = str(uuid.uuid5(ZONE_PROBING_NAMESPACE, key))
        else:
            alarm_id = self.probes.alarm_ids.pop(e)
        reason = reasons.zone_probing(
            opened,
            where,
            count=len(self.probes.entries.get(e, ())),
            name=name,
            window_s=self.rules.probe_window_s,
        )
        return alarm_id, reason

    def _zone_event(
        self,
        e: int,
        kind: AlarmType,
        level: int,
        before: int,
        state: AlarmState,
        alarm_id: str,
        reason: str,
        s: float,
        u: float,
        verdict: Classification,
        p_breach: float,
        active: bool,
        decided: float,
        cause: str,
        off: Position,
        vic: Position,
    ) -> AlarmEvent:
        """One zone alarm message; ``before`` the previous level (0: none, or unchanged)."""
        zi = int(self.zone[e])
        zone = self.set.zones[zi]
        case = self.cases[int(self.set.owner[zi])]
        excl = zone.kind == ZoneKind.EXCLUSION
        return AlarmEvent(
            alarm_id=alarm_id,
            type=kind,
            level=AlarmLevel(level),
            state=state,
            case_id=case.id,
            offender=off,
            victim=vic,
            distance_m=abs(s),
            order_distance_m=case.order_distance_m,
            margin_m=float(self.margin_m[zi]),
            reason=reason,
            t_decided=decided,
            classification=verdict,
            probability=p_breach,
            uncertainty_m=u,
            cause=cause,
            zone=ZoneRef(zone.label, "exclusion" if excl else "inclusion", -s, active),
            previous_level=AlarmLevel(before) if before and before != level else None,
        )
