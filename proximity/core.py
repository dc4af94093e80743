"""The proximity core: per-device geometry, and pair evaluation with uncertainty and approach.

Per fix (once per device, not per pair) :func:`apply_fixes` places the fix on the
ellipsoid (ECEF), resolves its accuracy (unknown -> default), and filters it into the
device's estimate of position and velocity. Per pair, :func:`evaluate_pairs` then needs
no trigonometry: distance (:func:`numerics.geodesy.chord_arc_m`), combined uncertainty,
classification and probability (:mod:`numerics.uncertainty`), closing speed and time to
breach.

Device geometry is one row of :data:`ROW` float64 per device, 64-byte aligned (one cache line),
not one array per quantity: a pair reads two devices anywhere in memory, and one row keeps
each read to one cache line instead of eight. Column indices are the constants below. To fit,
the row stores ``R0 = r68 - t_eff * growth`` instead of the estimate's 68 % radius and the
fix time, so the 68 % radius at ``now`` is ``R0 + now * growth`` (one multiply-add; with
epoch seconds near 1.8e9 and 40 m/s the rounding is 1e-5 m). ``growth`` is the top speed
times ``K68 / K99`` (:data:`GROWTH_PER_TOP_SPEED`): an old fix's 99 % radius grows at the
device's top speed, the farthest it can have gone, not twice that. Beyond
``max_uncertainty_m`` of a pair's 99 % radius its verdict is ``unknown``
(:meth:`ProximityCore.evaluate`): an old fix then says "position unknown", not a distance.
``t_eff`` is the fix time, or the time it was applied if the device's clock is ahead (a fix is
never younger than new).

Position and velocity are not the raw fix: each device has a constant-velocity Kalman filter
(white acceleration of spectral density ``accel_psd``, one 2x2 covariance shared by the three
ECEF axes since a fix's error is isotropic, the fix's variance from its 68 % radius). With
1-s fixes of 15 m accuracy a standing device's estimate is good to 5 m (68 %) instead of
15, and its velocity to 1 m/s: GPS jitter is averaged away while a walk keeps no lag (the model
moves with him). A fix that the prediction cannot explain (a turn, a stop, a jump, normalised
innovation above :data:`GATE`) widens the prediction's covariance until it does, so the
estimate follows a manoeuvre within a fix or two. After a gap longer than :data:`MAX_GAP_S`,
the filter starts again from the fix. ``R0`` holds the estimate's 68 % radius, and the
velocity columns are NaN while the filter's velocity is still uncertain (standard deviation
per axis above :data:`VELOCITY_SIGMA_MAX_MPS`: the first few fixes), and zero while it is not
significantly different from standing still (squared speed within
:data:`VELOCITY_SIGNIFICANCE` variances: a phone indoors whose fixes wander is not walking).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from numerics.geodesy import CHORD_MAX_M, chord_arc_inv, long_geodesic_m, surface_xyz
from numerics.jit import inline, kernel
from numerics.uncertainty import (
    K68,
    K99,
    UNKNOWN_ACCURACY_M,
    Classification,
    quadrature_nodes,
    rice_cdf,
    rice_tail,
)
from proximity.cases import Case
from proximity.pairs import PairTable, gather_pairs

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Int8Array = npt.NDArray[np.int8]

# Columns of a device row. R0: see the module docstring; NaN until the device's first fix.
X, Y, Z, R0, VMAX, VX, VY, VZ = range(8)
ROW = 8

# Columns of the filter's state (one row per device, next to the rows the pairs read).
PPP, PPV, PVV, T_LAST, FVX, FVY, FVZ, T_GATE = range(8)
KF = 8

#: White-acceleration spectral density of the motion model (m^2/s^3): walking, cycling and
#: driving at steady speeds; turns and stops are handled by the gate.
ACCEL_PSD = 0.1
#: Normalised innovation above which a fix counts as a manoeuvre: the 99.9 % point of a
#: chi-squared with 2 degrees of freedom (the error is horizontal).
GATE = 13.8
#: A gap after which the previous estimate says nothing useful: start again from the fix.
MAX_GAP_S = 300.0
#: Velocity prior of a fresh filter (m/s, per axis): anything up to a fast car.
INITIAL_VELOCITY_SIGMA_MPS = 50.0
#: The velocity is reported (for closing speed) once its standard deviation per axis is below.
VELOCITY_SIGMA_MAX_MPS = 2.5
#: A velocity counts as motion when its squared speed exceeds this many times the variance
#: per axis (two standard deviations: a walk at 1.4 m/s with 10 m fixes at 1 Hz counts,
#: the wander of a phone indoors with 60 m fixes mostly does not).
VELOCITY_SIGNIFICANCE = 4.0

_UNKNOWN = np.int8(Classification.UNKNOWN)

#: The filtered position's 68 % radius is never below this fraction of its last fix's stated
#: accuracy. The filter averages fixes as if their errors were independent, but they are not:
#: indoors, or by a building, a phone's fixes share a bias that drifts slowly, of about their
#: stated accuracy, which no averaging removes. The estimate stays the filter's (jitter is
#: still averaged); only its stated uncertainty keeps to what the device can know.
ESTIMATE_FLOOR = 0.5
#: An old fix's 68 % radius grows at this fraction of its device's top speed, so that its
#: 99 % radius grows at the top speed itself.
GROWTH_PER_TOP_SPEED = K68 / K99
#: A pair's 99 % radius beyond which its verdict is unknown (the rules' default).
MAX_UNCERTAINTY_M = 1000.0


@inline
def _store(
    rows: FloatArray,
    kf: FloatArray,
    i: int,
    t: float,
    t_eff: float,
    x: float,
    y: float,
    z: float,
    vx: float,
    vy: float,
    vz: float,
    ppp: float,
    ppv: float,
    pvv: float,
    floor_var: float,
) -> None:
    """Write device ``i``'s filtered state after its fix at ``t`` (``t_eff``: the fix time,
    or when it was taken in if that is earlier) into its row and its filter; its radius is
    never below the floor (``floor_var``, a variance per axis: see ESTIMATE_FLOOR)."""
    rows[i, X] = x
    rows[i, Y] = y
    rows[i, Z] = z
    rows[i, R0] = K68 * math.sqrt(max(ppp, floor_var)) - t_eff * rows[i, VMAX]
    known = pvv <= VELOCITY_SIGMA_MAX_MPS * VELOCITY_SIGMA_MAX_MPS
    moving = vx * vx + vy * vy + vz * vz > VELOCITY_SIGNIFICANCE * pvv
    rows[i, VX] = (vx if moving else 0.0) if known else math.nan
    rows[i, VY] = (vy if moving else 0.0) if known else math.nan
    rows[i, VZ] = (vz if moving else 0.0) if known else math.nan
    kf[i, PPP] = ppp
    kf[i, PPV] = ppv
    kf[i, PVV] = pvv
    kf[i, T_LAST] = t
    kf[i, FVX] = vx
    kf[i, FVY] = vy
    kf[i, FVZ] = vz


@kernel
def apply_fixes(
    slots: IntArray,
    lat: FloatArray,
    lon: FloatArray,
    t_fix: FloatArray,
    acc_m: FloatArray,
    now: FloatArray,
    unknown_acc_m: float,
    accel_psd: float,
    floor2: float,
    rows: FloatArray,
    kf: FloatArray,
) -> None:
    """Filter fix ``k`` of the inputs into device row ``slots[k]`` (slots distinct, fixes newer
    than the row's), taken in at time ``now[k]``: one constant-velocity Kalman step (see the
    module docstring)."""
    q = accel_psd
    for k in range(slots.size):
        i = slots[k]
        zx, zy, zz = surface_xyz(lat[k], lon[k])
        t = t_fix[k]
        a = acc_m[k]
        a = a if a > 0.0 else unknown_acc_m  # NaN and 0 are "unknown", never "perfect"
        r = (a / K68) * (a / K68)  # the fix's variance per axis
        dt = t - kf[i, T_LAST]
        if dt <= MAX_GAP_S:
            dt = max(dt, 0.0)
            vx = kf[i, FVX]
            vy = kf[i, FVY]
            vz = kf[i, FVZ]
            # Predict.
            px = rows[i, X] + vx * dt
            py = rows[i, Y] + vy * dt
            pz = rows[i, Z] + vz * dt
            ppp = kf[i, PPP] + dt * (2.0 * kf[i, PPV] + dt * kf[i, PVV]) + q * dt * dt * dt / 3.0
            ppv = kf[i, PPV] + dt * kf[i, PVV] + q * dt * dt / 2.0
            pvv = kf[i, PVV] + q * dt
            # Innovation. A manoeuvre (or a real jump that the fix filter let through) fails
            # the gate: the prediction is then trusted less, by the factor that would just
            # pass it, so the estimate follows within a fix or two while a single outlier of
            # ordinary noise moves it little.
            ex = zx - px
            ey = zy - py
            ez = zz - pz
            s = ppp + r
            nis = (ex * ex + ey * ey + ez * ez) / s
            if nis > GATE:
                kf[i, T_GATE] = t  # a manoeuvre or a jump: breaches wait to be confirmed
                f = nis / GATE
                ppp *= f
                ppv *= f
                pvv *= f
                s = ppp + r
            kp = ppp / s
            kv = ppv / s
            x = px + kp * ex
            y = py + kp * ey
            z = pz + kp * ez
            vx += kv * ex
            vy += kv * ey
            vz += kv * ez
            pvv -= kv * ppv
            ppv *= 1.0 - kp
            ppp *= 1.0 - kp
        else:  # the first fix (NaN gap), or a gap too long to predict across: start afresh
            x = zx
            y = zy
            z = zz
            vx = 0.0
            vy = 0.0
            vz = 0.0
            ppp = r
            ppv = 0.0
            pvv = INITIAL_VELOCITY_SIGMA_MPS * INITIAL_VELOCITY_SIGMA_MPS
        _store(rows, kf, i, t, min(t, now[k]), x, y, z, vx, vy, vz, ppp, ppv, pvv, floor2 * r)


@kernel
def evaluate_pairs(
    rows: FloatArray,
    lat: FloatArray,
    lon: FloatArray,
    offender: IntArray,
    victim: IntArray,
    order_m: FloatArray,
    warning_m: FloatArray,
    idx: IntArray,
    now: FloatArray,
    gh_y: FloatArray,
    gh_w: FloatArray,
    inv_int: FloatArray,
    dist: FloatArray,
    unc: FloatArray,
    prob: FloatArray,
    cls: Int8Array,
    closing: FloatArray,
    ttb: FloatArray,
    approach: bool,
) -> None:
    """Evaluate pair ``idx[k]`` at time ``now[k]`` (epoch s) into output ``k``.

    ``dist``: geodesic metres; ``unc``: the 99 % radius of the separation's uncertainty (from
    the accuracies widened by age times top speed); ``prob``: P(true separation <= order);
    ``cls``: a :class:`Classification` code; ``closing``: closing speed (m/s, positive when
    approaching; a device without a velocity estimate yet counts as standing still, and with
    neither known it is NaN); ``ttb``: seconds until the order distance at that speed (0
    inside it, inf when not approaching, NaN unknown). With ``approach`` False, closing speed
    and time to breach are neither computed nor written: a sweep for fix age does not need
    them, since only time has changed, and they cost a third of the time.
    """
    # Two passes. The first is straight-line code for every pair: no call and no early exit
    # in the loop, so the compiler keeps it tight (25 % faster than one pass with branches).
    # The second fixes up the few pairs the first could not finish: a device without a fix,
    # a chord beyond CHORD_MAX_M, a probability near the boundary.
    _first_pass(
        rows,
        offender,
        victim,
        order_m,
        warning_m,
        idx,
        now,
        dist,
        unc,
        prob,
        cls,
        closing,
        ttb,
        approach,
    )
    _fix_up(
        rows,
        lat,
        lon,
        offender,
        victim,
        order_m,
        warning_m,
        idx,
        gh_y,
        gh_w,
        inv_int,
        dist,
        unc,
        prob,
        cls,
        closing,
        ttb,
        approach,
    )


@kernel
def _first_pass(
    rows: FloatArray,
    offender: IntArray,
    victim: IntArray,
    order_m: FloatArray,
    warning_m: FloatArray,
    idx: IntArray,
    now: FloatArray,
    dist: FloatArray,
    unc: FloatArray,
    prob: FloatArray,
    cls: Int8Array,
    closing: FloatArray,
    ttb: FloatArray,
    approach: bool,
) -> None:
    """The straight-line pass of :func:`evaluate_pairs` over every pair."""
    inv_k68 = 1.0 / K68
    for k in range(idx.size):
        p = idx[k]
        i = offender[p]
        j = victim[p]
        # rows[i, c], not a row view: a view costs two atomic reference-count updates.
        at = now[k]
        rad_i = rows[i, R0] + at * rows[i, VMAX]  # 68 % radii then: accuracy widened by age
        rad_j = rows[j, R0] + at * rows[j, VMAX]
        dx = rows[j, X] - rows[i, X]
        dy = rows[j, Y] - rows[i, Y]
        dz = rows[j, Z] - rows[i, Z]
        c2 = dx * dx + dy * dy + dz * dz

        # Relative velocity. A device whose velocity is not known yet (one fix) counts as
        # standing still, as long as the other's is known: "he approaches at 5 m/s" is what
        # the operator needs.
        dot = 0.0
        neg_dot = 1.0
        wx = 0.0
        wy = 0.0
        wz = 0.0
        known = False
        if approach:
            vi_known = not math.isnan(rows[i, VX])
            vj_known = not math.isnan(rows[j, VX])
            wx = (rows[j, VX] if vj_known else 0.0) - (rows[i, VX] if vi_known else 0.0)
            wy = (rows[j, VY] if vj_known else 0.0) - (rows[i, VY] if vi_known else 0.0)
            wz = (rows[j, VZ] if vj_known else 0.0) - (rows[i, VZ] if vi_known else 0.0)
            dot = dx * wx + dy * wy + dz * wz  # closing speed = -dot / c
            known = (vi_known or vj_known) and c2 >= 1e-6  # no direction under a millimetre
            neg_dot = -dot if dot != 0.0 else 1.0

        d, _c, inv_c, _ = chord_arc_inv(
            rows[i, X], rows[i, Y], rows[i, Z], rows[j, X], rows[j, Y], rows[j, Z], neg_dot
        )
        s = math.sqrt(rad_i * rad_i + rad_j * rad_j) * inv_k68
        u = K99 * s
        order = order_m[p]
        dist[k] = d
        unc[k] = u
        near = d - u
        cls[k] = 1 + (near <= warning_m[p]) + (near <= order) + (d + u <= order)
        prob[k] = rice_tail(d, s, order)  # -1: near the boundary, or NaN (pass 2)
        if approach:
            v = -dot * inv_c
            closing[k] = v if known else math.nan
            # When the straight line of the relative motion enters the order circle:
            # |r + w t| = order. Head-on this is (d - order) / v; a course that passes by
            # (closest approach beyond the order distance) never enters, however fast it
            # closes now: a car driving past at 800 m is not an approach.
            w2 = wx * wx + wy * wy + wz * wz if known else 0.0
            disc = dot * dot - w2 * (c2 - order * order)
            t = (-dot - math.sqrt(disc)) / w2 if (v > 0.0 and disc >= 0.0) else math.inf
            t = t if known else math.nan
            ttb[k] = 0.0 if d <= order else t


@kernel
def _fix_up(
    rows: FloatArray,
    lat: FloatArray,
    lon: FloatArray,
    offender: IntArray,
    victim: IntArray,
    order_m: FloatArray,
    warning_m: FloatArray,
    idx: IntArray,
    gh_y: FloatArray,
    gh_w: FloatArray,
    inv_int: FloatArray,
    dist: FloatArray,
    unc: FloatArray,
    prob: FloatArray,
    cls: Int8Array,
    closing: FloatArray,
    ttb: FloatArray,
    approach: bool,
) -> None:
    """The second pass of :func:`evaluate_pairs`: the pairs the first could not finish."""
    chord_max2 = CHORD_MAX_M * CHORD_MAX_M
    for k in range(idx.size):
        if not (prob[k] < 0.0 or dist[k] > CHORD_MAX_M):
            continue
        p = idx[k]
        i = offender[p]
        j = victim[p]
        if math.isnan(rows[i, R0]) or math.isnan(rows[j, R0]):  # a device without a fix yet
            dist[k] = math.nan
            unc[k] = math.nan
            prob[k] = math.nan
            cls[k] = _UNKNOWN
            if approach:
                closing[k] = math.nan
                ttb[k] = math.nan
            continue
        d = dist[k]
        order = order_m[p]
        u = unc[k]
        s = u * (1.0 / K99)
        dx = rows[j, X] - rows[i, X]
        dy = rows[j, Y] - rows[i, Y]
        dz = rows[j, Z] - rows[i, Z]
        if dx * dx + dy * dy + dz * dz > chord_max2:  # beyond the chord formula: Vincenty
            d = long_geodesic_m(lat[i], lon[i], lat[j], lon[j])
            dist[k] = d
            near = d - u
            cls[k] = 1 + (near <= warning_m[p]) + (near <= order) + (d + u <= order)
            if approach and closing[k] > 0.0:
                ttb[k] = (d - order) / closing[k]
        pr = rice_tail(d, s, order)
        if pr < 0.0:  # near the boundary: the series or the quadrature
            pr = rice_cdf(d, s, order, gh_y, gh_w, inv_int)
        prob[k] = pr


@dataclass(frozen=True, slots=True)
class PairEvaluation:
    """The core's verdict on pairs ``idx`` (parallel arrays; see :func:`evaluate_pairs`)."""

    idx: IntArray
    distance_m: FloatArray
    uncertainty_m: FloatArray
    probability: FloatArray
    classification: Int8Array
    closing_mps: FloatArray
    time_to_breach_s: FloatArray

    def __len__(self) -> int:
        return int(self.idx.size)

    @property
    def sigma_m(self) -> FloatArray:
        """Per-axis standard deviation of the separation's noise (m)."""
        return self.uncertainty_m / K99

    @classmethod
    def allocate(cls, n: int) -> PairEvaluation:
        """Output buffers for up to ``n`` pairs (see :meth:`ProximityCore.evaluate`)."""
        return cls(
            idx=np.empty(n, dtype=np.int64),
            distance_m=np.empty(n),
            uncertainty_m=np.empty(n),
            probability=np.empty(n),
            classification=np.empty(n, dtype=np.int8),
            closing_mps=np.empty(n),
            time_to_breach_s=np.empty(n),
        )

    def head(self, idx: IntArray) -> PairEvaluation:
        """Views of the first ``idx.size`` entries, labelled with ``idx``."""
        n = idx.size
        return PairEvaluation(
            idx=idx,
            distance_m=self.distance_m[:n],
            uncertainty_m=self.uncertainty_m[:n],
            probability=self.probability[:n],
            classification=self.classification[:n],
            closing_mps=self.closing_mps[:n],
            time_to_breach_s=self.time_to_breach_s[:n],
        )


class ProximityCore:
    """Device geometry and the pair table, evaluated incrementally.

    Parameters
    ----------
    n_devices : int
        Number of device slots (the pair table's offender/victim values index them).
    pairs : PairTable
        Who must stay away from whom.
    top_speed_mps : array_like, shape (n_devices,)
        Plausible top speed of each device, m/s (see :data:`numerics.uncertainty.MOBILITY_MPS`).
    unknown_accuracy_m : float
        68 % radius assumed for a fix without a usable accuracy.
    accel_psd : float
        The motion model's white-acceleration spectral density, m^2/s^3 (:data:`ACCEL_PSD`).
    max_uncertainty_m : float
        A pair's 99 % radius beyond which its classification is ``unknown``.
    estimate_floor : float
        The filtered position's 68 % radius is at least this fraction of its fix's accuracy
        (:data:`ESTIMATE_FLOOR`).
    """

    def __init__(
        self,
        n_devices: int,
        pairs: PairTable,
        top_speed_mps: Sequence[float] | FloatArray,
        unknown_accuracy_m: float = UNKNOWN_ACCURACY_M,
        accel_psd: float = ACCEL_PSD,
        max_uncertainty_m: float = MAX_UNCERTAINTY_M,
        estimate_floor: float = ESTIMATE_FLOOR,
    ) -> None:
        speeds = np.asarray(top_speed_mps, dtype=np.float64)
        if speeds.shape != (n_devices,) or not np.all(np.isfinite(speeds) & (speeds >= 0)):
            raise ValueError(
                f"top_speed_mps needs one finite speed >= 0 per device ({n_devices});"
                f" got shape {speeds.shape}"
            )
        if not (math.isfinite(accel_psd) and accel_psd > 0):
            raise ValueError(f"accel_psd must be > 0 m^2/s^3, got {accel_psd!r}")
        if not (math.isfinite(unknown_accuracy_m) and unknown_accuracy_m > 0):
            raise ValueError(f"unknown_accuracy_m must be > 0 m, got {unknown_accuracy_m!r}")
        if not max_uncertainty_m > 0:
            raise ValueError(f"max_uncertainty_m must be > 0 m, got {max_uncertainty_m!r}")
        self.pairs = pairs
        self.unknown_accuracy_m = float(unknown_accuracy_m)
        self.max_uncertainty_m = float(max_uncertainty_m)
        if not 0.0 <= estimate_floor <= 1.0:
            raise ValueError(f"estimate_floor must be within 0 .. 1, got {estimate_floor!r}")
        self.estimate_floor = float(estimate_floor)
        self.top_speed_mps = speeds
        #: How fast each device's 68 % radius grows with the age of its fix.
        self.growth_mps = speeds * GROWTH_PER_TOP_SPEED
        self.rows = _aligned_rows(n_devices)
        self.rows[:, VMAX] = self.growth_mps
        self.lat = np.full(n_devices, np.nan)
        self.lon = np.full(n_devices, np.nan)
        self.t_eff = np.full(n_devices, np.nan)  # fix time, or apply time if that is earlier
        self.acc_m = np.full(n_devices, np.nan)  # accuracy used (unknown -> default)
        self.accel_psd = float(accel_psd)
        self.kf = np.full((n_devices, KF), np.nan)
        self._nodes = quadrature_nodes()
        self._mark = np.zeros(len(pairs), dtype=np.bool_)
        self._scratch = np.empty(len(pairs), dtype=np.int64)
        self._all = np.arange(len(pairs), dtype=np.int64)
        self._nan = np.full(len(pairs), np.nan)
        self._nan.flags.writeable = False

    def velocity(self, slot: int) -> npt.NDArray[np.float64]:
        """Device ``slot``'s velocity (ECEF m/s; NaN until the filter knows it)."""
        return self.rows[slot, VX : VZ + 1].copy()

    def own_course(
        self, movers: IntArray, targets: IntArray, radius_m: FloatArray
    ) -> tuple[FloatArray, FloatArray]:
        """How each device of ``movers`` itself heads for the filtered position of the matching
        ``targets`` device, as if that one stood still: the speed (m/s) at which it closes in,
        and the seconds until its straight course enters the circle of ``radius_m`` around it
        (0 inside, inf when the course passes by or leads away; both NaN while its velocity is
        unknown). The target's own velocity is left out on purpose: her phone's drift indoors,
        or her walking towards him, is no course of his."""
        r = self.rows
        los = r[targets, X : Z + 1] - r[movers, X : Z + 1]
        v = r[movers, VX : VZ + 1]
        c2 = np.einsum("ij,ij->i", los, los)
        dot = np.einsum("ij,ij->i", v, los)  # > 0: heading towards her
        v2 = np.einsum("ij,ij->i", v, v)
        disc = dot * dot - v2 * (c2 - radius_m * radius_m)
        with np.errstate(invalid="ignore", divide="ignore"):
            closing = dot / np.sqrt(c2)
            enters = (dot > 0) & (disc >= 0)
            t = np.where(enters, (dot - np.sqrt(np.where(enters, disc, 0.0))) / v2, np.inf)
        t = np.where(c2 <= radius_m * radius_m, 0.0, t)
        t = np.where(np.isnan(v2), np.nan, t)
        return closing, t

    def gated_last(self, slots: IntArray) -> npt.NDArray[np.bool_]:
        """Which devices' last fix was outside their filter's gate (a manoeuvre or a jump)."""
        return self.kf[slots, T_GATE] == self.kf[slots, T_LAST]

    def manoeuvred(self, slots: IntArray, within_s: float) -> npt.NDArray[np.bool_]:
        """Which devices' filters met a fix outside their gate (a manoeuvre, or a jump such
        as a multipath burst) within ``within_s`` seconds of fixes before their last one."""
        kf = self.kf
        return kf[slots, T_LAST] - kf[slots, T_GATE] < within_s  # NaN (never): False

    def apply(
        self,
        slots: IntArray,
        lat: FloatArray,
        lon: FloatArray,
        t_fix: FloatArray,
        acc_m: FloatArray,
        now: float | FloatArray,
    ) -> None:
        """Take one new fix per slot at time ``now`` (one time, or one per fix: when each
        arrived; slots distinct; the caller drops late fixes). A fix stamped after its ``now``
        (device clock ahead) counts as taken then."""
        now = _times(now, slots.size)
        lat = np.ascontiguousarray(lat, dtype=np.float64)
        lon = np.ascontiguousarray(lon, dtype=np.float64)
        t_fix = np.ascontiguousarray(t_fix, dtype=np.float64)
        acc_m = np.ascontiguousarray(acc_m, dtype=np.float64)
        self.lat[slots] = lat
        self.lon[slots] = lon
        self.t_eff[slots] = np.minimum(t_fix, now)
        self.acc_m[slots] = np.where(acc_m > 0, acc_m, self.unknown_accuracy_m)
        apply_fixes(
            slots,
            lat,
            lon,
            t_fix,
            acc_m,
            now,
            self.unknown_accuracy_m,
            self.accel_psd,
            self.estimate_floor * self.estimate_floor,
            self.rows,
            self.kf,
        )

    def keep_speeds(self) -> None:
        """After rows saved with other top speeds were put back (a restart with a changed
        case file): the configured speeds, each row's 68 % radius unchanged."""
        r = self.rows
        r[:, R0] += self.t_eff * (r[:, VMAX] - self.growth_mps)
        r[:, VMAX] = self.growth_mps

    def pairs_of(self, slots: IntArray) -> IntArray:
        """The distinct pairs in which any of ``slots`` takes part."""
        p = self.pairs
        n = gather_pairs(slots, p.dev_ptr, p.dev_pairs, self._mark, self._scratch)
        return self._scratch[:n].copy()

    def evaluate(
        self,
        idx: IntArray,
        now: float | FloatArray,
        out: PairEvaluation | None = None,
        *,
        approach: bool = True,
    ) -> PairEvaluation:
        """Evaluate pairs ``idx`` at time ``now`` (UTC epoch seconds: one time for all, or one
        per pair, parallel to ``idx``).

        ``approach=False`` leaves closing speed and time to breach out (NaN), for sweeps.

        With ``out`` (from :meth:`PairEvaluation.allocate`, at least ``idx.size`` long) the
        results are written into it and views of it are returned: no allocation on the hot
        path, and the views are overwritten by the next call that uses the same ``out``.
        """
        if out is None:
            out = PairEvaluation.allocate(idx.size)
        elif len(out) < idx.size:
            raise ValueError(f"out holds {len(out)} pairs; {idx.size} needed")
        res = out.head(idx)
        at = _times(now, idx.size)
        p = self.pairs
        evaluate_pairs(
            self.rows,
            self.lat,
            self.lon,
            p.offender,
            p.victim,
            p.order_m,
            p.warning_m,
            idx,
            at,
            *self._nodes,
            res.distance_m,
            res.uncertainty_m,
            res.probability,
            res.classification,
            res.closing_mps,
            res.time_to_breach_s,
            approach,
        )
        # An old fix's uncertainty beyond the cap: "position unknown", not a distance.
        res.classification[res.uncertainty_m > self.max_uncertainty_m] = _UNKNOWN
        if not approach:  # not computed: read-only NaN, not whatever the buffer held
            nan = self._nan[: idx.size]
            res = replace(res, closing_mps=nan, time_to_breach_s=nan)
        return res

    def evaluate_all(
        self, now: float | FloatArray, out: PairEvaluation | None = None, *, approach: bool = True
    ) -> PairEvaluation:
        """Every pair (the periodic sweep passes ``approach=False``)."""
        return self.evaluate(self._all, now, out, approach=approach)

    def radius_m(self, slot: int, now: float) -> float:
        """A device's 68 % radius at ``now``: the estimate's, widened by its fix's age."""
        return float(self.radii_m(np.array([slot]), now)[0])

    def radii_m(self, slots: IntArray, now: float | FloatArray) -> FloatArray:
        """:meth:`radius_m` of devices ``slots`` at ``now`` (one time, or one per slot)."""
        at = np.maximum(now, self.t_eff[slots])
        return self.rows[slots, R0] + at * self.rows[slots, VMAX]


def _times(now: float | FloatArray, n: int) -> FloatArray:
    """``now`` as ``n`` contiguous float64 times (a scalar is repeated)."""
    if np.ndim(now) == 0:
        return np.full(n, float(now))
    t = np.ascontiguousarray(now, dtype=np.float64)
    if t.shape != (n,):
        raise ValueError(f"now needs one time or {n} (one per item); got shape {t.shape}")
    return t


def _aligned_rows(n: int) -> FloatArray:
    """An (n, ROW) float64 array of NaN whose rows start on 64-byte cache-line boundaries."""
    raw = np.full(n * ROW + 8, np.nan)
    skip = (-raw.ctypes.data % 64) // 8
    return raw[skip : skip + n * ROW].reshape(n, ROW)


def warm_up() -> float:
    """Compile (or load from the cache) every kernel of the core on a throw-away table, so the
    first real fix does not pay for it; return the seconds it took."""
    t0 = time.perf_counter()
    case = Case("warm-up", ("a",), ("b",), 100.0, 200.0)
    table = PairTable.build([case], {"a": 0, "b": 1}, 0.1, 25.0)
    core = ProximityCore(2, table, [3.0, 3.0])
    slots = np.array([0, 1], dtype=np.int64)
    for t in (0.0, 5.0):
        core.apply(
            slots,
            np.array([50.0, 50.001]),
            np.array([4.0, 4.0]),
            np.array([t, t]),
            np.array([5.0, np.nan]),
            t,
        )
    core.evaluate(core.pairs_of(slots), 6.0)
    core.evaluate_all(6.0, PairEvaluation.allocate(1), approach=False)
    core.apply(
        slots[:1], np.array([-50.0]), np.array([-176.0]), np.array([7.0]), np.array([5.0]), 7.0
    )
    core.evaluate_all(7.0)  # a long distance: compiles the Vincenty branch too
    return time.perf_counter() - t0
