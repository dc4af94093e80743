"""Slow, obvious references for the kernels: library oracles and plain loops."""

from __future__ import annotations

import numpy as np
from pyproj import Geod

GEOD = Geod(ellps="WGS84")


def geod_distance_m(lat1, lon1, lat2, lon2):  # type: ignore[no-untyped-def]
    """GeographicLib (Karney 2013) through pyproj; note pyproj's (lon, lat) order."""
    _, _, d = GEOD.inv(lon1, lat1, lon2, lat2)
    return np.asarray(d, dtype=np.float64)


def offset(lat: float, lon: float, azimuth_deg: float, distance_m: float) -> tuple[float, float]:
    """The point ``distance_m`` from (lat, lon) along ``azimuth_deg`` (geodesic), as (lat, lon)."""
    lon2, lat2, _ = GEOD.fwd(lon, lat, azimuth_deg, distance_m)
    return float(lat2), float(lon2)


def pairs_of_slots(slots, offender, victim):  # type: ignore[no-untyped-def]
    """Every pair with an end in ``slots``, by a plain loop."""
    wanted = set(int(s) for s in slots)
    return sorted(
        p for p in range(len(offender)) if int(offender[p]) in wanted or int(victim[p]) in wanted
    )
