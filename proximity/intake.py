"""The devices' state, in one place: each device's last accepted fix, how it was taken, and
what the rules need to know about it (whether it jumped, whether anything checked it).

:meth:`FixIntake.apply` takes one round of fixes into that state: late and duplicate fixes
(not newer than the device's last one) never move it back, implausible jumps are set aside
(:mod:`proximity.quality`), a fix stamped ahead of its arrival counts as taken when it
arrived, and the rest goes to the proximity core's motion filter (:mod:`proximity.core`).
The rules read the state through :meth:`FixIntake.settled`, :meth:`FixIntake.jump_time`,
:meth:`FixIntake.current_until` and :meth:`FixIntake.position`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from ingest.batch import FixBatch
from proximity.cadence import Cadence
from proximity.core import ProximityCore
from proximity.events import Position
from proximity.quality import FixFilter
from proximity.rules import RuleConfig

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

#: A fix stamped more than this after its arrival is counted as from a clock that runs ahead
#: (``fixes_clock_ahead``); any fix stamped after its arrival counts as taken at its arrival.
CLOCK_SKEW_S = 1.0
#: A fix stands as current evidence until its device's next report is due, plus this.
EVIDENCE_SLACK_S = 3.0
#: A fix is called old in an alarm's reason when it is at least this old and its age, times
#: the device's top speed, outweighs its own accuracy.
OLD_FIX_S = 5.0


class IntakeStats(Protocol):
    fixes_late: int
    fixes_duplicate: int
    fixes_implausible: int
    fixes_clock_ahead: int
    fixes_applied: int


class DeviceTable:
    """Last accepted fix of every device as reported (for messages), one slot per device.

    ``lat`` and ``lon`` are the proximity core's own arrays, shared rather than copied.
    """

    def __init__(
        self, device_ids: Sequence[str], lat: npt.NDArray[np.float64], lon: npt.NDArray[np.float64]
    ) -> None:
        self.ids = tuple(device_ids)
        n = len(self.ids)
        self.lat = lat
        self.lon = lon
        self.acc_m = np.full(n, np.nan)
        self.t_fix = np.full(n, np.nan)
        self.t_recv = np.full(n, np.nan)
        self.seq = np.full(n, -1, dtype=np.int64)

    def position(self, slot: int, radius_m: float = float("nan"), old: bool = False) -> Position:
        return Position(
            device=self.ids[slot],
            lat=float(self.lat[slot]),
            lon=float(self.lon[slot]),
            acc_m=float(self.acc_m[slot]),
            t_fix=float(self.t_fix[slot]),
            t_recv=float(self.t_recv[slot]),
            seq=int(self.seq[slot]),
            radius_m=radius_m,
            old=old,
        )


class FixIntake:
    """Every device's state: its last fix (``devices``), the fix filter's (``quality``), the
    motion filter's (``core``), and when its newest stamp and its last unchecked fix were.

    ``cadence`` is each device's reporting cadence (the health watch's, shared): the
    declared interval, or the slower one the device keeps (:mod:`proximity.cadence`).
    """

    def __init__(
        self,
        device_ids: Sequence[str],
        core: ProximityCore,
        rules: RuleConfig,
        unknown_accuracy_m: float,
        cadence: Cadence,
        stats: IntakeStats,
    ) -> None:
        n = len(device_ids)
        self.core = core
        self.rules = rules
        self.devices = DeviceTable(device_ids, core.lat, core.lon)
        self.quality = FixFilter(n, rules, unknown_accuracy_m)
        self.cadence = cadence
        self.stats = stats
        #: When each device last sent a fix that nothing checked (see apply); NaN: never.
        self.t_unchecked = np.full(n, np.nan)
        #: Each device's newest stamp (a clock ahead of its arrival included).
        self.t_stamped = np.full(n, np.nan)
        #: Rows of the current batch that were used, per round (the evidence record's).
        self.used_rows: list[IntArray] = []

    def apply(self, batch: FixBatch, rows: IntArray, t: FloatArray) -> tuple[IntArray, FloatArray]:
        """Write one round's fixes (decided at ``t``, parallel to ``rows``) into the device
        state; return the slots that took a fix and those fixes' times.

        A fix stamped after it arrived (its device's clock is ahead) counts as taken when it
        arrived: a fix from the future would otherwise make every real fix after it "late"
        until the real clock caught up (up to the 300 s the edge allows), and hide a breach
        for that long. Its own stamp still tells a repeat of it: a fix stamped ahead of its
        arrival is new only if its stamp is newer than every stamp its device sent before
        (a repeat of an earlier one is a duplicate, or late)."""
        dev = self.devices
        st = self.stats
        slots = batch.slot[rows]
        stamped = batch.t_fix[rows]
        lead = stamped - batch.t_recv[rows]  # > 0: stamped after it arrived
        t_fix = np.where(lead > 0, batch.t_recv[rows], stamped)
        st.fixes_clock_ahead += int(np.count_nonzero(lead > CLOCK_SKEW_S))
        ahead = lead > 0
        # NaN (no fix yet) compares False: a device's first fix is always new.
        seen = self.t_stamped[slots]  # the newest stamp of the device so far
        duplicate = (t_fix == dev.t_fix[slots]) | (ahead & (stamped == seen))
        late = ~duplicate & ((t_fix < dev.t_fix[slots]) | (ahead & (stamped < seen)))
        st.fixes_late += int(late.sum())
        st.fixes_duplicate += int(duplicate.sum())
        keep = ~(late | duplicate)
        rows, slots = rows[keep], slots[keep]
        t, t_fix, stamped = t[keep], t_fix[keep], stamped[keep]
        if slots.size == 0:
            return slots, t
        use = self.quality.screen(
            slots,
            batch.lat[rows],
            batch.lon[rows],
            t_fix,
            batch.acc_m[rows],
            dev.lat[slots],
            dev.lon[slots],
            dev.t_fix[slots],
            dev.acc_m[slots],
        )
        st.fixes_implausible += int(slots.size - use.sum())
        rows, slots = rows[use], slots[use]
        t, t_fix, stamped = t[use], t_fix[use], stamped[use]
        # A fix that nothing checks: a device's first, or its first after a dropout (more
        # than twice the cadence it keeps): across the gap, the motion filter's prediction
        # and the jump rule allow almost anything, and a multipath burst passes for a walk.
        # Like a jump, it cannot make a breach certain until confirm_s of later fixes. The
        # cadence is the device's own, learned (a logger's usual gaps between bursts are no
        # dropout: read against a declared 1 s, every burst would start unchecked again and
        # a breach would never become certain).
        gap = t_fix - dev.t_fix[slots]  # NaN: the first fix
        unchecked = ~(gap <= 2.0 * self.cadence.expected_s(slots) + EVIDENCE_SLACK_S)
        self.t_unchecked[slots[unchecked]] = t_fix[unchecked]
        self.cadence.observe(slots, gap)
        dev.acc_m[slots] = batch.acc_m[rows]
        dev.t_fix[slots] = t_fix
        dev.t_recv[slots] = batch.t_recv[rows]
        dev.seq[slots] = batch.seq[rows]
        self.t_stamped[slots] = np.fmax(self.t_stamped[slots], stamped)
        self.core.apply(slots, batch.lat[rows], batch.lon[rows], t_fix, batch.acc_m[rows], t)
        st.fixes_applied += int(slots.size)
        self.used_rows.append(rows)
        return slots, t

    def settled(self, slots: IntArray) -> npt.NDArray[np.bool_]:
        """Devices that neither jumped nor manoeuvred (a fix taken although it jumped, or
        one outside the motion filter's gate), nor sent a fix nothing checks (the first, or
        the first after a dropout), within confirm_s of fixes before their last."""
        w = self.rules.confirm_s
        t = self.devices.t_fix[slots]
        return (
            self.quality.settled(slots, t)
            & ~self.core.manoeuvred(slots, w)
            & ~(t - self.t_unchecked[slots] < w)  # NaN (never unchecked): settled
        )

    def jump_time(self, slots: IntArray) -> FloatArray:
        """The time of each device's last fix if that fix jumped (set aside and then taken,
        or outside the motion filter's gate); -inf if it did not."""
        t = self.devices.t_fix[slots]
        jumped = (self.quality.jumped_t[slots] == t) | self.core.gated_last(slots)
        return np.where(jumped, t, -np.inf)

    def current_until(self, slots: IntArray) -> FloatArray:
        """Up to when each device's last fix stands as current: until its next report is
        due (the cadence it keeps, plus EVIDENCE_SLACK_S)."""
        return self.devices.t_fix[slots] + self.cadence.expected_s(slots) + EVIDENCE_SLACK_S

    def position(self, slot: int, now: float) -> Position:
        """Device ``slot``'s last fix as of ``now``: its 68 % radius then, and whether its
        age rather than its accuracy makes it uncertain (``old``)."""
        acc = float(self.core.acc_m[slot])
        radius = self.core.radius_m(slot, now)
        age = now - float(self.devices.t_fix[slot])
        return self.devices.position(slot, radius, old=age >= OLD_FIX_S and radius - acc > acc)
