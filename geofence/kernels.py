"""numba kernels: containment and signed distance to a zone's boundary, with uncertainty.

Each zone has its own local metric frame: the plane tangent to the WGS84 ellipsoid at the
zone's centre, with east and north axes (PROJ's ``topocentric`` conversion, height dropped;
:mod:`geofence.compiled` explains the error bound). A point enters the frame from its ECEF
position (the proximity core keeps one per device) with five multiplications and adds, so no
trigonometry is spent per point and zone.

Containment is the even-odd crossing rule over every ring of the zone (outer rings and holes
of every polygon alike; valid polygons make that exact), in the same branch-free loop that
finds the squared distance to the nearest edge (Eberly, "Distance Between Point and Line
Segment", Geometric Tools 2020), with each edge's inverse squared length computed once at
compile time. The signed distance is negative inside. A circle zone is its centre
and radius, exactly.

The bounding-box prefilter is conservative: a point farther than ``reach`` outside the box of
an exclusion zone is outside, and its distance to the box (a lower bound of the distance to
the zone) is reported instead of the exact distance.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from numerics.geodesy import surface_xyz
from numerics.jit import inline, kernel

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# Columns of a zone's frame row: ECEF origin, east and north unit vectors (east has no z),
# bounding box in the frame, circle radius (NaN: polygon), warning band, kind.
OX, OY, OZ, EX, EY, NX, NY, NZ, XMIN, YMIN, XMAX, YMAX, RADIUS, WARN, KIND = range(15)
FRAME = 16  # row length (one spare column keeps rows 128 bytes)

EXCLUSION = 1.0
INCLUSION = 2.0

# Classification codes (geofence.uncertainty.ZoneClass); array logic needs them as numbers.
UNKNOWN, OUTSIDE, WARNING, POSSIBLY_INSIDE, CERTAIN_INSIDE = 0, 1, 2, 3, 4

#: 68 % and 99 % radii of a circular 2-D Gaussian, in sigmas (as numerics.uncertainty).
K68 = math.sqrt(2.0 * math.log(1.0 / 0.32))
K99 = math.sqrt(2.0 * math.log(100.0))
_INV_SQRT2 = 1.0 / math.sqrt(2.0)


@kernel
def ecef_rows(lat_deg: FloatArray, lon_deg: FloatArray, out: FloatArray) -> None:
    """ECEF positions (m, height 0) of points given as (lat, lon) degrees into ``out[:, :3]``."""
    for i in range(lat_deg.size):
        x, y, z = surface_xyz(lat_deg[i], lon_deg[i])
        out[i, 0] = x
        out[i, 1] = y
        out[i, 2] = z


@inline
def to_frame(frame: FloatArray, zn: int, x: float, y: float, z: float) -> tuple[float, float]:
    """(east, north) metres of the ECEF point (x, y, z) in the frame of zone ``zn``."""
    dx = x - frame[zn, OX]
    dy = y - frame[zn, OY]
    dz = z - frame[zn, OZ]
    e = frame[zn, EX] * dx + frame[zn, EY] * dy
    n = frame[zn, NX] * dx + frame[zn, NY] * dy + frame[zn, NZ] * dz
    return e, n


@inline
def _edge(
    px: float, py: float, ax: float, ay: float, bx: float, by: float, inv_len2: float
) -> tuple[bool, float]:
    """Edge a -> b seen from p: whether it crosses p's horizontal left of p (PNPOLY's test,
    without a division: the sign of ey flips the inequality), and its squared distance."""
    ex = bx - ax
    ey = by - ay
    wx = px - ax
    wy = py - ay
    crosses = ((ay > py) != (by > py)) & ((wx * ey < ex * wy) == (ey > 0.0))
    t = min(max((wx * ex + wy * ey) * inv_len2, 0.0), 1.0)  # nearest point's parameter
    dx = wx - t * ex
    dy = wy - t * ey
    return crosses, dx * dx + dy * dy


@inline
def polygon_signed_distance(
    px: float,
    py: float,
    r0: int,
    r1: int,
    ring_ptr: IntArray,
    vx: FloatArray,
    vy: FloatArray,
    inv_len2: FloatArray,
) -> float:
    """Signed distance (m, negative inside) from (px, py) to the rings ``r0 .. r1 - 1``.

    Rings are closed (the last vertex repeats the first); ``ring_ptr[r]`` is ring r's first
    vertex and ``inv_len2[j]`` the inverse squared length of edge j -> j + 1. Even-odd
    crossing (W. R. Franklin's PNPOLY) and the nearest edge in one branch-free pass, four
    edges per step so that four running minima do not wait on each other (measured: 1.8x
    faster than one edge per step with branches, 1.1x faster than two).
    """
    odd = False
    b0 = b1 = b2 = b3 = math.inf
    for r in range(r0, r1):
        j = ring_ptr[r]
        last = ring_ptr[r + 1] - 1  # edges j -> j + 1 for j < last
        while j + 3 < last:
            c0, d0 = _edge(px, py, vx[j], vy[j], vx[j + 1], vy[j + 1], inv_len2[j])
            c1, d1 = _edge(px, py, vx[j + 1], vy[j + 1], vx[j + 2], vy[j + 2], inv_len2[j + 1])
            c2, d2 = _edge(px, py, vx[j + 2], vy[j + 2], vx[j + 3], vy[j + 3], inv_len2[j + 2])
            c3, d3 = _edge(px, py, vx[j + 3], vy[j + 3], vx[j + 4], vy[j + 4], inv_len2[j + 3])
            odd ^= (c0 ^ c1) ^ (c2 ^ c3)
            b0 = min(b0, d0)
            b1 = min(b1, d1)
            b2 = min(b2, d2)
            b3 = min(b3, d3)
            j += 4
        while j < last:
            c0, d0 = _edge(px, py, vx[j], vy[j], vx[j + 1], vy[j + 1], inv_len2[j])
            odd ^= c0
            b0 = min(b0, d0)
            j += 1
    d = math.sqrt(min(min(b0, b1), min(b2, b3)))
    return -d if odd else d


@inline
def polygon_contains(
    px: float, py: float, r0: int, r1: int, ring_ptr: IntArray, vx: FloatArray, vy: FloatArray
) -> bool:
    """Whether (px, py) is inside rings ``r0 .. r1 - 1`` (even-odd rule), without distances."""
    inside = False
    for r in range(r0, r1):
        for k in range(ring_ptr[r], ring_ptr[r + 1] - 1):
            ay = vy[k]
            by = vy[k + 1]
            if (ay > py) != (by > py):
                ax = vx[k]
                ey = by - ay
                if ((px - ax) * ey < (vx[k + 1] - ax) * (py - ay)) == (ey > 0.0):
                    inside = not inside
    return inside


@kernel
def evaluate_zones(
    xyz: FloatArray,
    r68_m: FloatArray,
    point_of: IntArray,
    zone_of: IntArray,
    frame: FloatArray,
    zone_rings: IntArray,
    ring_ptr: IntArray,
    vx: FloatArray,
    vy: FloatArray,
    inv_len2: FloatArray,
    signed_m: FloatArray,
    cls: npt.NDArray[np.int8],
    p_inside: FloatArray,
) -> None:
    """Row k: point ``point_of[k]`` (ECEF ``xyz[p, :3]``, 68 % radius ``r68_m[p]``) against
    zone ``zone_of[k]``: signed distance to the boundary (m, negative inside), classification
    and probability that the true position is inside.

    With sigma = r68 / K68 and U = K99 * sigma (the 99 % radius):
    certain inside if s + U <= 0; possibly inside if s - U <= 0; warning if s - U <= the zone's
    warning band; otherwise outside. The probability takes the boundary as locally straight:
    P(inside) = Phi(-s / sigma). A point without a fix (NaN) is unknown.
    """
    for k in range(point_of.size):
        p = point_of[k]
        zn = zone_of[k]
        r68 = r68_m[p]
        x = xyz[p, 0]
        if math.isnan(x) or math.isnan(r68):
            signed_m[k] = math.nan
            cls[k] = UNKNOWN
            p_inside[k] = math.nan
            continue
        sigma = r68 / K68
        u = K99 * sigma
        e, n = to_frame(frame, zn, x, xyz[p, 1], xyz[p, 2])
        radius = frame[zn, RADIUS]
        warn = frame[zn, WARN]
        if not math.isnan(radius):
            s = math.sqrt(e * e + n * n) - radius
        else:
            bx = max(frame[zn, XMIN] - e, 0.0, e - frame[zn, XMAX])
            by = max(frame[zn, YMIN] - n, 0.0, n - frame[zn, YMAX])
            reach = warn + u
            if frame[zn, KIND] == EXCLUSION and (bx > reach or by > reach):
                s = math.sqrt(bx * bx + by * by)  # a lower bound, beyond any classification
            else:
                s = polygon_signed_distance(
                    e, n, zone_rings[zn], zone_rings[zn + 1], ring_ptr, vx, vy, inv_len2
                )
        signed_m[k] = s
        if s + u <= 0.0:
            cls[k] = CERTAIN_INSIDE
        elif s - u <= 0.0:
            cls[k] = POSSIBLY_INSIDE
        elif s - u <= warn:
            cls[k] = WARNING
        else:
            cls[k] = OUTSIDE
        z = s / sigma if sigma > 0.0 else math.copysign(math.inf, s)
        if abs(z) < 8.5:
            p_inside[k] = 0.5 * math.erfc(z * _INV_SQRT2)
        else:  # beyond 8.5 sigma the probability rounds to 0 or 1 (erfc(6) = 2e-17)
            p_inside[k] = 1.0 if z < 0.0 else 0.0
