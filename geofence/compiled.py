"""Zones compiled once into flat arrays in local metric frames, for the kernels.

Frame
-----
Each zone is projected once, at compile time, into the plane tangent to the WGS84 ellipsoid
at its centre (the centre of its (lon, lat) bounding box, or a circle's centre), east and
north in metres: pyproj converts the vertices to ECEF (one Transformer for the process), and
the rotation into east/north is PROJ's ``topocentric`` conversion without the height. Points
enter the same frame from their ECEF position with one small rotation, so a zone test costs
no trigonometry.

Error bound
-----------
The tangent plane shortens distances: a geodesic of length L whose points lie within S of
the zone's centre is measured with a relative error of at most S**2 / (2 * R**2), with R the
smallest radius of curvature of the ellipsoid (6,335 km at the equator). That is 1.2e-7 at
3 km from the centre (0.1 mm per km measured), 3.1e-6 at 15 km and 7.8e-6 at the largest
zone extent accepted (25 km, :data:`geofence.model.MAX_ZONE_EXTENT_M`). A zone's edges are
straight lines in its frame; between vertices a few hundred metres apart they depart from
the geodesic by micrometres. ``tests/test_geofence.py`` checks the bound against
``pyproj.Geod`` and the frame against PROJ's own ``topocentric`` pipeline.

Arrays
------
``frame`` (n_zones, 16): per zone the ECEF origin, east and north unit vectors, bounding box
in the frame, circle radius (NaN for polygons), warning band and kind (columns in
:mod:`geofence.kernels`). ``zone_rings`` (n_zones + 1): zone z owns rings
``zone_rings[z] .. zone_rings[z + 1] - 1``; ``ring_ptr`` (n_rings + 1): ring r's vertices
are ``vx[ring_ptr[r] : ring_ptr[r + 1]]`` (closed: the last repeats the first); ``inv_len2``
holds each edge's inverse squared length.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import numpy.typing as npt
import shapely
from pyproj import Transformer

from geofence import kernels as k
from geofence.model import Zone, ZoneKind

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Smallest radius of curvature of WGS84 (meridional, at the equator): a(1 - e2), metres.
R_MIN_M = 6_335_439.0


def frame_error_bound(distance_m: float, from_centre_m: float) -> float:
    """Upper bound (m) of the frame's error on a distance of ``distance_m`` measured between
    points at most ``from_centre_m`` from the zone's centre (module docstring)."""
    return distance_m * from_centre_m**2 / (2.0 * R_MIN_M**2)


@cache
def _to_ecef() -> Transformer:
    """Geodetic WGS84 (lon, lat, h) to ECEF, built once per process."""
    return Transformer.from_crs("EPSG:4979", "EPSG:4978", always_xy=True)


def ecef(lon_deg: FloatArray, lat_deg: FloatArray) -> FloatArray:
    """ECEF positions (n, 3) of (lon, lat) degrees at height 0, by pyproj."""
    x, y, z = _to_ecef().transform(lon_deg, lat_deg, np.zeros_like(lon_deg))
    return np.column_stack([x, y, z])


def frame_axes(lat0_deg: float, lon0_deg: float) -> tuple[float, float, float, float, float]:
    """East (ex, ey, 0) and north (nx, ny, nz) unit vectors at (lat0, lon0), in ECEF."""
    p = math.radians(lat0_deg)
    lam = math.radians(lon0_deg)
    sp, cp, sl, cl = math.sin(p), math.cos(p), math.sin(lam), math.cos(lam)
    return -sl, cl, -sp * cl, -sp * sl, cp


def _rings(shape: shapely.Geometry) -> list[npt.NDArray[np.float64]]:
    polys = shape.geoms if isinstance(shape, shapely.MultiPolygon) else [shape]
    out = []
    for poly in polys:
        out.append(np.asarray(poly.exterior.coords)[:, :2])
        out.extend(np.asarray(r.coords)[:, :2] for r in poly.interiors)
    return out


@dataclass(frozen=True)
class ZoneSet:
    """Compiled zones; ``owner[z]`` is the index of zone z's case in the caller's list."""

    zones: tuple[Zone, ...]
    owner: IntArray
    frame: FloatArray
    zone_rings: IntArray
    ring_ptr: IntArray
    vx: FloatArray
    vy: FloatArray
    #: Inverse squared length (1/m^2) of edge j -> j + 1 (0 after a ring's last vertex).
    inv_len2: FloatArray
    #: A length scale of each zone: sqrt(area / pi) (a circle's radius), metres.
    size_m: FloatArray

    def __len__(self) -> int:
        return len(self.zones)

    @classmethod
    def compile(cls, zones: Sequence[Zone], owner: Sequence[int] | None = None) -> ZoneSet:
        """Project and flatten ``zones`` (all vertices of all zones in one pyproj call)."""
        n = len(zones)
        frame = np.full((n, k.FRAME), np.nan)
        size = np.zeros(n)
        rings_of: list[list[FloatArray]] = []
        centres = np.zeros((n, 2))
        for i, z in enumerate(zones):
            if z.is_circle:
                pt = z.geometry
                centres[i] = (pt.x, pt.y)
                rings_of.append([])
            else:
                xmin, ymin, xmax, ymax = z.geometry.bounds
                centres[i] = (0.5 * (xmin + xmax), 0.5 * (ymin + ymax))
                rings_of.append(_rings(z.geometry))
        ring_list = [r for rs in rings_of for r in rs]
        lengths = np.array([len(r) for r in ring_list], dtype=np.int64)
        ring_ptr = np.zeros(len(ring_list) + 1, dtype=np.int64)
        np.cumsum(lengths, out=ring_ptr[1:])
        zone_rings = np.zeros(n + 1, dtype=np.int64)
        np.cumsum([len(rs) for rs in rings_of], out=zone_rings[1:])
        verts = np.concatenate(ring_list) if ring_list else np.zeros((0, 2))
        origin = ecef(centres[:, 0], centres[:, 1]) if n else np.zeros((0, 3))
        vert_xyz = ecef(verts[:, 0], verts[:, 1]) if len(verts) else np.zeros((0, 3))
        vx = np.zeros(len(verts))
        vy = np.zeros(len(verts))
        for i, z in enumerate(zones):
            ex, ey, nx, ny, nz = frame_axes(centres[i, 1], centres[i, 0])
            f = frame[i]
            f[k.OX], f[k.OY], f[k.OZ] = origin[i]
            f[k.EX], f[k.EY], f[k.NX], f[k.NY], f[k.NZ] = ex, ey, nx, ny, nz
            f[k.WARN] = z.warning_m
            f[k.KIND] = k.EXCLUSION if z.kind == ZoneKind.EXCLUSION else k.INCLUSION
            if z.is_circle:
                r = z.radius_m
                f[k.RADIUS] = r
                f[k.XMIN], f[k.YMIN], f[k.XMAX], f[k.YMAX] = -r, -r, r, r
                size[i] = r
                continue
            a, b = ring_ptr[zone_rings[i]], ring_ptr[zone_rings[i + 1]]
            d = vert_xyz[a:b] - origin[i]
            vx[a:b] = ex * d[:, 0] + ey * d[:, 1]
            vy[a:b] = nx * d[:, 0] + ny * d[:, 1] + nz * d[:, 2]
            f[k.XMIN], f[k.XMAX] = vx[a:b].min(), vx[a:b].max()
            f[k.YMIN], f[k.YMAX] = vy[a:b].min(), vy[a:b].max()
            size[i] = math.sqrt(
                shapely.area(local_geometry_of(z, vx, vy, ring_ptr, zone_rings, i)) / math.pi
            )
        own = np.zeros(n, dtype=np.int64) if owner is None else np.asarray(owner, np.int64)
        edge_x = np.diff(vx, append=0.0)
        edge_y = np.diff(vy, append=0.0)
        len2 = edge_x * edge_x + edge_y * edge_y
        inv_len2 = np.divide(1.0, len2, out=np.zeros_like(len2), where=len2 > 0.0)
        inv_len2[ring_ptr[1:] - 1] = 0.0  # no edge from a ring's last vertex
        return cls(tuple(zones), own, frame, zone_rings, ring_ptr, vx, vy, inv_len2, size)

    def to_frame(self, zone: int, lat_deg: FloatArray, lon_deg: FloatArray) -> FloatArray:
        """(east, north) metres (n, 2) of points in zone ``zone``'s frame."""
        xyz = ecef(np.asarray(lon_deg, np.float64), np.asarray(lat_deg, np.float64))
        f = self.frame[zone]
        d = xyz - f[[k.OX, k.OY, k.OZ]]
        return np.column_stack(
            [
                f[k.EX] * d[:, 0] + f[k.EY] * d[:, 1],
                f[k.NX] * d[:, 0] + f[k.NY] * d[:, 1] + f[k.NZ] * d[:, 2],
            ]
        )

    def local_geometry(self, zone: int) -> shapely.Geometry:
        """Zone ``zone`` as a shapely geometry in its own frame (metres), for tests and
        benchmarks; a circle is its centre point (distance minus radius)."""
        return local_geometry_of(
            self.zones[zone], self.vx, self.vy, self.ring_ptr, self.zone_rings, zone
        )

    def evaluate(
        self,
        lat_deg: FloatArray,
        lon_deg: FloatArray,
        r68_m: FloatArray,
        point_of: IntArray,
        zone_of: IntArray,
    ) -> ZoneEvaluation:
        """Points against zones: row k is point ``point_of[k]`` against zone ``zone_of[k]``.

        ``lat_deg``, ``lon_deg`` and ``r68_m`` (the fix's 68 % radius, metres: its accuracy
        widened by its age) are per point; NaN means no fix.
        """
        lat = np.ascontiguousarray(lat_deg, dtype=np.float64)
        lon = np.ascontiguousarray(lon_deg, dtype=np.float64)
        r68 = np.ascontiguousarray(r68_m, dtype=np.float64)
        if not (lat.shape == lon.shape == r68.shape) or lat.ndim != 1:
            raise ValueError(
                f"lat_deg, lon_deg and r68_m must be 1-D arrays of one length, got shapes"
                f" {lat.shape}, {lon.shape}, {r68.shape}"
            )
        pts = np.asarray(point_of, dtype=np.int64)
        zs = np.asarray(zone_of, dtype=np.int64)
        if pts.shape != zs.shape:
            raise ValueError(f"point_of {pts.shape} and zone_of {zs.shape} differ in shape")
        if pts.size and (pts.min() < 0 or pts.max() >= lat.size):
            raise ValueError(f"point_of holds indices outside [0, {lat.size})")
        if zs.size and (zs.min() < 0 or zs.max() >= len(self)):
            raise ValueError(f"zone_of holds indices outside [0, {len(self)})")
        xyz = np.empty((lat.size, 3))
        k.ecef_rows(lat, lon, xyz)
        return self.evaluate_xyz(xyz, r68, pts, zs)

    def evaluate_xyz(
        self, xyz: FloatArray, r68_m: FloatArray, point_of: IntArray, zone_of: IntArray
    ) -> ZoneEvaluation:
        """As :meth:`evaluate`, with points as ECEF rows ``xyz[p, :3]`` (the kernel trusts
        its input: indices in range)."""
        out = ZoneEvaluation.allocate(point_of.size)
        k.evaluate_zones(
            xyz,
            r68_m,
            point_of,
            zone_of,
            self.frame,
            self.zone_rings,
            self.ring_ptr,
            self.vx,
            self.vy,
            self.inv_len2,
            out.signed_m,
            out.classification,
            out.p_inside,
        )
        return out


def local_geometry_of(
    zone: Zone, vx: FloatArray, vy: FloatArray, ring_ptr: IntArray, zone_rings: IntArray, i: int
) -> shapely.Geometry:
    if zone.is_circle:
        return shapely.Point(0.0, 0.0)
    polys = []
    r = int(zone_rings[i])
    shapes = (
        zone.geometry.geoms if isinstance(zone.geometry, shapely.MultiPolygon) else [zone.geometry]
    )
    for poly in shapes:
        rings = []
        for _ in range(1 + len(poly.interiors)):
            a, b = ring_ptr[r], ring_ptr[r + 1]
            rings.append(np.column_stack([vx[a:b], vy[a:b]]))
            r += 1
        polys.append(shapely.Polygon(rings[0], rings[1:]))
    return polys[0] if len(polys) == 1 else shapely.MultiPolygon(polys)


@dataclass
class ZoneEvaluation:
    """Per row: signed distance to the boundary (m, negative inside; beyond an exclusion
    zone's reach a lower bound), classification code, probability of being inside."""

    signed_m: FloatArray
    classification: npt.NDArray[np.int8]
    p_inside: FloatArray

    @classmethod
    def allocate(cls, n: int) -> ZoneEvaluation:
        return cls(np.empty(n), np.empty(n, dtype=np.int8), np.empty(n))

    def __len__(self) -> int:
        return int(self.signed_m.size)


def warm_up() -> float:
    """Compile (or load from the cache) the zone kernels; return the seconds it took."""
    from geofence.model import Zone

    t0 = time.perf_counter()
    square = shapely.Polygon([(4.35, 50.84), (4.36, 50.84), (4.36, 50.85), (4.35, 50.84)])
    zs = ZoneSet.compile(
        [
            Zone("warm-up", ZoneKind.EXCLUSION, square),
            Zone("warm-up", ZoneKind.INCLUSION, shapely.Point(4.35, 50.84), 100.0),
        ]
    )
    zs.evaluate(
        np.array([50.845, np.nan]),
        np.array([4.355, 4.35]),
        np.array([5.0, 5.0]),
        np.array([0, 1, 0]),
        np.array([0, 1, 1]),
    )
    return time.perf_counter() - t0
