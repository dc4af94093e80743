"""The proximity core: per-device geometry, and pair evaluation with uncertainty and approach.

Per fix (once per device, not per pair) :func:`apply_fixes` places the device on the
ellipsoid (ECEF position and normal), resolves its accuracy (unknown -> default), and
re-estimates its velocity from its recent fixes. Per pair, :func:`evaluate_pairs` then needs
no trigonometry: distance (:func:`proximity.geodesy.chord_arc_m`), combined uncertainty,
classification and probability (:mod:`proximity.uncertainty`), closing speed and time to
breach.

Device geometry is one row of :data:`ROW` float64 per device (two cache lines), not one array
per quantity: a pair reads two random devices, and one row keeps each read to two cache lines
instead of twelve. Column indices are the constants below.

Velocity is the least-squares slope of the device's last :data:`HISTORY` positions within
:data:`VELOCITY_WINDOW_S` of its newest fix (at least two fixes spanning
:data:`VELOCITY_MIN_SPAN_S`): with 1-s fixes of 7 m noise the slope's noise is about 1 m/s,
where a two-fix difference would be 10 m/s. Unknown (NaN) until that much history exists.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from proximity._jit import kernel
from proximity.cases import Case
from proximity.geodesy import CHORD_MAX_M, chord_arc_m, geodesic_m, surface_point
from proximity.pairs import PairTable, gather_pairs
from proximity.uncertainty import (
    K68,
    K99,
    UNKNOWN_ACCURACY_M,
    Classification,
    quadrature_nodes,
    rice_cdf,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Int8Array = npt.NDArray[np.int8]

# Columns of a device row.
X, Y, Z, NX, NY, NZ, T_FIX, ACC, VMAX, VX, VY, VZ = range(12)
ROW = 16

HISTORY = 8
VELOCITY_WINDOW_S = 60.0
VELOCITY_MIN_SPAN_S = 2.0

_UNKNOWN = np.int8(Classification.UNKNOWN)
_CLEAR = np.int8(Classification.CLEAR)
_WARNING = np.int8(Classification.WARNING)
_POSSIBLE = np.int8(Classification.POSSIBLE_BREACH)
_CERTAIN = np.int8(Classification.CERTAIN_BREACH)


@kernel
def apply_fixes(
    slots: IntArray,
    lat: FloatArray,
    lon: FloatArray,
    t_fix: FloatArray,
    acc_m: FloatArray,
    unknown_acc_m: float,
    rows: FloatArray,
    hist: FloatArray,
    hist_n: IntArray,
) -> None:
    """Write fix ``k`` of the inputs into device row ``slots[k]`` (slots distinct, fixes newer
    than the row's); update the device's position history and velocity."""
    n_hist = hist.shape[1]
    for k in range(slots.size):
        i = slots[k]
        x, y, z, nx, ny, nz = surface_point(lat[k], lon[k])
        t = t_fix[k]
        r = rows[i]
        r[X] = x
        r[Y] = y
        r[Z] = z
        r[NX] = nx
        r[NY] = ny
        r[NZ] = nz
        r[T_FIX] = t
        a = acc_m[k]
        r[ACC] = a if a > 0.0 else unknown_acc_m  # NaN and 0 are "unknown", never "perfect"

        # History: a ring of the newest positions, newest at index hist_n % n_hist - 1.
        h = hist[i]
        pos = hist_n[i] % n_hist
        h[pos, 0] = x
        h[pos, 1] = y
        h[pos, 2] = z
        h[pos, 3] = t
        hist_n[i] += 1

        # Least-squares velocity over the recent window.
        m = min(hist_n[i], n_hist)
        cnt = 0
        st = 0.0
        sx = 0.0
        sy = 0.0
        sz = 0.0
        t_min = t
        for q in range(m):
            tq = h[q, 3]
            if t - tq <= VELOCITY_WINDOW_S:
                cnt += 1
                st += tq - t  # relative times keep the sums well conditioned
                sx += h[q, 0] - x
                sy += h[q, 1] - y
                sz += h[q, 2] - z
                t_min = min(t_min, tq)
        if cnt < 2 or t - t_min < VELOCITY_MIN_SPAN_S:
            r[VX] = math.nan
            r[VY] = math.nan
            r[VZ] = math.nan
            continue
        mt = st / cnt
        mx = sx / cnt
        my = sy / cnt
        mz = sz / cnt
        stt = 0.0
        stx = 0.0
        sty = 0.0
        stz = 0.0
        for q in range(m):
            tq = h[q, 3]
            if t - tq <= VELOCITY_WINDOW_S:
                dt = tq - t - mt
                stt += dt * dt
                stx += dt * (h[q, 0] - x - mx)
                sty += dt * (h[q, 1] - y - my)
                stz += dt * (h[q, 2] - z - mz)
        r[VX] = stx / stt
        r[VY] = sty / stt
        r[VZ] = stz / stt


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
    now: float,
    gh_y: FloatArray,
    gh_w: FloatArray,
    gl_t: FloatArray,
    gl_w: FloatArray,
    dist: FloatArray,
    sigma: FloatArray,
    unc: FloatArray,
    prob: FloatArray,
    cls: Int8Array,
    closing: FloatArray,
    ttb: FloatArray,
) -> None:
    """Evaluate the pairs ``idx`` at time ``now`` (epoch s); output ``k`` is pair ``idx[k]``.

    ``dist``: geodesic metres; ``sigma``: per-axis sigma of the separation (m), from the
    accuracies widened by age times top speed; ``unc``: its 99 % radius; ``prob``: P(true
    separation <= order); ``cls``: a :class:`Classification` code; ``closing``: closing speed
    (m/s, positive when approaching; a device without a velocity estimate yet counts as
    standing still, and with neither known it is NaN); ``ttb``: seconds until the
    order distance at that speed (0 inside it, inf when not approaching, NaN unknown).
    """
    chord_max2 = CHORD_MAX_M * CHORD_MAX_M
    for k in range(idx.size):
        p = idx[k]
        i = offender[p]
        j = victim[p]
        ri = rows[i]
        rj = rows[j]
        if math.isnan(ri[T_FIX]) or math.isnan(rj[T_FIX]):
            dist[k] = math.nan
            sigma[k] = math.nan
            unc[k] = math.nan
            prob[k] = math.nan
            cls[k] = _UNKNOWN
            closing[k] = math.nan
            ttb[k] = math.nan
            continue
        dx = rj[X] - ri[X]
        dy = rj[Y] - ri[Y]
        dz = rj[Z] - ri[Z]
        c2 = dx * dx + dy * dy + dz * dz
        if c2 <= chord_max2:
            d = chord_arc_m(dx, dy, dz, ri[NX], ri[NY], ri[NZ], rj[NX], rj[NY], rj[NZ])
        else:
            d = geodesic_m(lat[i], lon[i], lat[j], lon[j])

        # 68 % radii widened by age; a fix "from the future" (clock skew) is not younger than 0.
        rad_i = ri[ACC] + max(now - ri[T_FIX], 0.0) * ri[VMAX]
        rad_j = rj[ACC] + max(now - rj[T_FIX], 0.0) * rj[VMAX]
        s = math.sqrt(rad_i * rad_i + rad_j * rad_j) / K68
        u = K99 * s
        order = order_m[p]
        dist[k] = d
        sigma[k] = s
        unc[k] = u
        if d + u <= order:
            cls[k] = _CERTAIN
        elif d - u <= order:
            cls[k] = _POSSIBLE
        elif d - u <= warning_m[p]:
            cls[k] = _WARNING
        else:
            cls[k] = _CLEAR
        prob[k] = rice_cdf(d, s, order, gh_y, gh_w, gl_t, gl_w)

        # A device whose velocity is not known yet (one fix) counts as standing still, as
        # long as the other's is known: "he approaches at 5 m/s" is what the operator needs.
        vi_known = not math.isnan(ri[VX])
        vj_known = not math.isnan(rj[VX])
        wx = (rj[VX] if vj_known else 0.0) - (ri[VX] if vi_known else 0.0)
        wy = (rj[VY] if vj_known else 0.0) - (ri[VY] if vi_known else 0.0)
        wz = (rj[VZ] if vj_known else 0.0) - (ri[VZ] if vi_known else 0.0)
        if c2 > 0.0 and (vi_known or vj_known):
            v = -(dx * wx + dy * wy + dz * wz) / math.sqrt(c2)
            closing[k] = v
            if d <= order:
                ttb[k] = 0.0
            elif v > 0.0:
                ttb[k] = (d - order) / v
            else:
                ttb[k] = math.inf
        else:
            closing[k] = math.nan
            ttb[k] = 0.0 if d <= order else math.nan


@dataclass(frozen=True, slots=True)
class PairEvaluation:
    """The core's verdict on pairs ``idx`` (parallel arrays; see :func:`evaluate_pairs`)."""

    idx: IntArray
    distance_m: FloatArray
    sigma_m: FloatArray
    uncertainty_m: FloatArray
    probability: FloatArray
    classification: Int8Array
    closing_mps: FloatArray
    time_to_breach_s: FloatArray

    def __len__(self) -> int:
        return int(self.idx.size)


class ProximityCore:
    """Device geometry and the pair table, evaluated incrementally.

    Parameters
    ----------
    n_devices : int
        Number of device slots (the pair table's offender/victim values index them).
    pairs : PairTable
        Who must stay away from whom.
    top_speed_mps : array_like, shape (n_devices,)
        Plausible top speed of each device, m/s (see :data:`proximity.uncertainty.MOBILITY_MPS`).
    unknown_accuracy_m : float
        68 % radius assumed for a fix without a usable accuracy.
    """

    def __init__(
        self,
        n_devices: int,
        pairs: PairTable,
        top_speed_mps: Sequence[float] | FloatArray,
        unknown_accuracy_m: float = UNKNOWN_ACCURACY_M,
    ) -> None:
        speeds = np.asarray(top_speed_mps, dtype=np.float64)
        if speeds.shape != (n_devices,) or not np.all(np.isfinite(speeds) & (speeds >= 0)):
            raise ValueError(
                f"top_speed_mps needs one finite speed >= 0 per device ({n_devices});"
                f" got shape {speeds.shape}"
            )
        if not (math.isfinite(unknown_accuracy_m) and unknown_accuracy_m > 0):
            raise ValueError(f"unknown_accuracy_m must be > 0 m, got {unknown_accuracy_m!r}")
        self.pairs = pairs
        self.unknown_accuracy_m = float(unknown_accuracy_m)
        self.rows = np.full((n_devices, ROW), np.nan)
        self.rows[:, VMAX] = speeds
        self.lat = np.full(n_devices, np.nan)
        self.lon = np.full(n_devices, np.nan)
        self.hist = np.full((n_devices, HISTORY, 4), np.nan)
        self.hist_n = np.zeros(n_devices, dtype=np.int64)
        self._nodes = quadrature_nodes()
        self._mark = np.zeros(len(pairs), dtype=np.bool_)
        self._scratch = np.empty(len(pairs), dtype=np.int64)
        self._all = np.arange(len(pairs), dtype=np.int64)

    def apply(
        self,
        slots: IntArray,
        lat: FloatArray,
        lon: FloatArray,
        t_fix: FloatArray,
        acc_m: FloatArray,
    ) -> None:
        """Take one new fix per slot (slots distinct; the caller drops late fixes)."""
        self.lat[slots] = lat
        self.lon[slots] = lon
        apply_fixes(
            slots,
            np.ascontiguousarray(lat, dtype=np.float64),
            np.ascontiguousarray(lon, dtype=np.float64),
            np.ascontiguousarray(t_fix, dtype=np.float64),
            np.ascontiguousarray(acc_m, dtype=np.float64),
            self.unknown_accuracy_m,
            self.rows,
            self.hist,
            self.hist_n,
        )

    def pairs_of(self, slots: IntArray) -> IntArray:
        """The distinct pairs in which any of ``slots`` takes part."""
        p = self.pairs
        n = gather_pairs(slots, p.dev_ptr, p.dev_pairs, self._mark, self._scratch)
        return self._scratch[:n].copy()

    def evaluate(self, idx: IntArray, now: float) -> PairEvaluation:
        """Evaluate pairs ``idx`` at time ``now`` (UTC epoch seconds)."""
        n = idx.size
        out = PairEvaluation(
            idx=idx,
            distance_m=np.empty(n),
            sigma_m=np.empty(n),
            uncertainty_m=np.empty(n),
            probability=np.empty(n),
            classification=np.empty(n, dtype=np.int8),
            closing_mps=np.empty(n),
            time_to_breach_s=np.empty(n),
        )
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
            now,
            *self._nodes,
            out.distance_m,
            out.sigma_m,
            out.uncertainty_m,
            out.probability,
            out.classification,
            out.closing_mps,
            out.time_to_breach_s,
        )
        return out

    def evaluate_all(self, now: float) -> PairEvaluation:
        """The periodic sweep: every pair, for what time alone changes (fix age)."""
        return self.evaluate(self._all, now)

    def radius_m(self, slot: int, now: float) -> float:
        """A device's 68 % radius at ``now``: accuracy widened by age times top speed."""
        r = self.rows[slot]
        return float(r[ACC] + max(now - r[T_FIX], 0.0) * r[VMAX])

    def velocity_mps(self, slot: int) -> tuple[float, float, float]:
        r = self.rows[slot]
        return float(r[VX]), float(r[VY]), float(r[VZ])


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
        )
    core.evaluate(core.pairs_of(slots), 6.0)
    core.evaluate_all(6.0)
    return time.perf_counter() - t0
