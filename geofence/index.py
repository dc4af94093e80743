"""A grid index over all zones, for questions that are not per case: which zones is each
point in, or near?

The grid is laid over (lat, lon) degrees. Each zone is registered in every cell its bounding
box touches, after the box is widened by the query's reach and rounded outward, so the grid
may offer too many candidates but never too few (tile38 rounds its index boxes outward for
the same reason); the exact test in the zone's own frame (:mod:`geofence.kernels`) follows.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from geofence import kernels as k
from geofence.compiled import ZoneSet
from numerics.jit import kernel

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Fewest metres per degree of latitude on WGS84 (at the equator), rounded down.
M_PER_DEG_MIN = 110_500.0
#: Most grid cells the index allocates; coarser cells beyond that.
MAX_CELLS = 1 << 22


@kernel
def _query(
    lat_deg: FloatArray,
    lon_deg: FloatArray,
    reach_m: float,
    lat0: float,
    lon0: float,
    cell_deg: float,
    n_rows: int,
    n_cols: int,
    cell_ptr: IntArray,
    cell_zones: IntArray,
    frame: FloatArray,
    zone_rings: IntArray,
    ring_ptr: IntArray,
    vx: FloatArray,
    vy: FloatArray,
    inv_len2: FloatArray,
    out_point: IntArray,
    out_zone: IntArray,
    out_signed: FloatArray,
) -> int:
    """Every (point, zone) with signed distance <= reach_m into the out arrays, which must
    have room; returns how many, or -(needed) when they had too little room."""
    n = 0
    for p in range(lat_deg.size):
        lat = lat_deg[p]
        lon = lon_deg[p]
        if math.isnan(lat) or math.isnan(lon):
            continue
        r = math.floor((lat - lat0) / cell_deg)
        c = math.floor((lon - lon0) / cell_deg)
        if r < 0 or c < 0 or r >= n_rows or c >= n_cols:
            continue
        cell = r * n_cols + c
        x, y, z = k.surface_xyz(lat, lon)
        for j in range(cell_ptr[cell], cell_ptr[cell + 1]):
            zn = cell_zones[j]
            e, nn = k.to_frame(frame, zn, x, y, z)
            if (
                e < frame[zn, k.XMIN] - reach_m
                or e > frame[zn, k.XMAX] + reach_m
                or nn < frame[zn, k.YMIN] - reach_m
                or nn > frame[zn, k.YMAX] + reach_m
            ):
                continue
            radius = frame[zn, k.RADIUS]
            if not math.isnan(radius):
                s = math.sqrt(e * e + nn * nn) - radius
            elif reach_m == 0.0 and not k.polygon_contains(
                e, nn, zone_rings[zn], zone_rings[zn + 1], ring_ptr, vx, vy
            ):
                continue  # containment only: the distance is needed for the hits alone
            else:
                s = k.polygon_signed_distance(
                    e, nn, zone_rings[zn], zone_rings[zn + 1], ring_ptr, vx, vy, inv_len2
                )
            if s <= reach_m:
                if n < out_point.size:
                    out_point[n] = p
                    out_zone[n] = zn
                    out_signed[n] = s
                n += 1
    return n if n <= out_point.size else -n


class ZoneIndex:
    """Grid index of a :class:`ZoneSet` for queries within ``reach_m`` of the zones."""

    def __init__(self, zones: ZoneSet, reach_m: float = 0.0) -> None:
        if not reach_m >= 0.0:
            raise ValueError(f"reach_m must be >= 0 metres, got {reach_m!r}")
        self.zones = zones
        self.reach_m = float(reach_m)
        n = len(zones)
        boxes = np.zeros((n, 4))  # lat_min, lon_min, lat_max, lon_max, widened
        for i, z in enumerate(zones.zones):
            if z.is_circle:
                lon, lat = z.geometry.x, z.geometry.y
                b = (lon, lat, lon, lat)
                grow = z.radius_m
            else:
                b = z.geometry.bounds
                grow = 0.0
            dlat = (grow + reach_m) / M_PER_DEG_MIN + 1e-9
            lat_hi = min(89.0, max(abs(b[1]), abs(b[3])) + dlat)
            dlon = (grow + reach_m) / (M_PER_DEG_MIN * math.cos(math.radians(lat_hi))) + 1e-9
            boxes[i] = (b[1] - dlat, b[0] - dlon, b[3] + dlat, b[2] + dlon)
        if n:
            lat0, lon0 = boxes[:, 0].min(), boxes[:, 1].min()
            span = max(boxes[:, 2].max() - lat0, boxes[:, 3].max() - lon0, 1e-6)
            size = float(
                np.median(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]))
            )
            cell = max(size, span / math.sqrt(MAX_CELLS))
        else:
            lat0 = lon0 = 0.0
            cell = 1.0
        self.lat0, self.lon0, self.cell_deg = float(lat0), float(lon0), float(cell)
        self.n_rows = math.floor((boxes[:, 2].max() - lat0) / cell) + 1 if n else 1
        self.n_cols = math.floor((boxes[:, 3].max() - lon0) / cell) + 1 if n else 1
        r0 = np.floor((boxes[:, 0] - lat0) / cell).astype(np.int64)
        r1 = np.floor((boxes[:, 2] - lat0) / cell).astype(np.int64)
        c0 = np.floor((boxes[:, 1] - lon0) / cell).astype(np.int64)
        c1 = np.floor((boxes[:, 3] - lon0) / cell).astype(np.int64)
        cells: list[IntArray] = []
        owners: list[IntArray] = []
        for i in range(n):
            rr, cc = np.meshgrid(np.arange(r0[i], r1[i] + 1), np.arange(c0[i], c1[i] + 1))
            ids = (rr * self.n_cols + cc).ravel()
            cells.append(ids)
            owners.append(np.full(ids.size, i, dtype=np.int64))
        all_cells = np.concatenate(cells) if cells else np.zeros(0, np.int64)
        all_zones = np.concatenate(owners) if owners else np.zeros(0, np.int64)
        order = np.argsort(all_cells, kind="stable")
        self.cell_zones = all_zones[order]
        self.cell_ptr = np.zeros(self.n_rows * self.n_cols + 1, dtype=np.int64)
        np.cumsum(
            np.bincount(all_cells, minlength=self.n_rows * self.n_cols), out=self.cell_ptr[1:]
        )
        self._room = 1024

    def query(self, lat_deg: FloatArray, lon_deg: FloatArray) -> tuple[IntArray, FloatArray]:
        """Every (point, zone) whose signed distance is at most the index's reach: an index
        array (2, k) of point and zone numbers, like ``shapely.STRtree.query``, and the signed
        distances (m, negative inside)."""
        lat = np.ascontiguousarray(lat_deg, dtype=np.float64)
        lon = np.ascontiguousarray(lon_deg, dtype=np.float64)
        if lat.shape != lon.shape or lat.ndim != 1:
            raise ValueError(f"lat_deg {lat.shape} and lon_deg {lon.shape} must be 1-D, alike")
        zs = self.zones
        while True:
            pts = np.empty(self._room, np.int64)
            zn = np.empty(self._room, np.int64)
            sd = np.empty(self._room)
            n = _query(
                lat,
                lon,
                self.reach_m,
                self.lat0,
                self.lon0,
                self.cell_deg,
                self.n_rows,
                self.n_cols,
                self.cell_ptr,
                self.cell_zones,
                zs.frame,
                zs.zone_rings,
                zs.ring_ptr,
                zs.vx,
                zs.vy,
                zs.inv_len2,
                pts,
                zn,
                sd,
            )
            if n >= 0:
                return np.stack([pts[:n], zn[:n]]), sd[:n]
            self._room = 2 * -n
