"""Seeded scenarios: people moving around a city, with the true positions known at all times.

Movement is a piecewise-linear path in local metres (east, north) around an origin, timed in
seconds from the start of the run; positions are converted to WGS84 with the ellipsoid's
radii of curvature at the origin (relative error below 1e-5 over a few kilometres, and the
ground truth is computed from the same converted positions, so it is exact for the scenario).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from numerics.geodesy import WGS84_A, WGS84_F, geodesic_distance_m

#: Brussels (Grand-Place), the default city centre.
BRUSSELS = (50.8467, 4.3525)
#: 68 % radius of a circular 2-D Gaussian is sigma * sqrt(2 ln(1 / 0.32)).
R68_PER_SIGMA = math.sqrt(2.0 * math.log(1.0 / 0.32))

FloatArray = npt.NDArray[np.float64]


def _radii(lat_deg: float) -> tuple[float, float]:
    """Meridional (M) and prime-vertical (N) radii of curvature in metres at a latitude."""
    e2 = WGS84_F * (2.0 - WGS84_F)
    s = math.sin(math.radians(lat_deg))
    w = math.sqrt(1.0 - e2 * s * s)
    return WGS84_A * (1.0 - e2) / w**3, WGS84_A / w


@dataclass(frozen=True)
class Track:
    """A device's true movement: waypoints (metres east/north of ``origin``) at times (s)."""

    device: str
    origin: tuple[float, float]
    t: FloatArray
    east_m: FloatArray
    north_m: FloatArray
    acc_m: float
    mode: str

    def position(self, t: float | FloatArray) -> tuple[FloatArray, FloatArray]:
        """True (lat, lon) in degrees at time(s) ``t``; the path holds still outside its span."""
        tt = np.atleast_1d(np.asarray(t, dtype=np.float64))
        e = np.interp(tt, self.t, self.east_m)
        n = np.interp(tt, self.t, self.north_m)
        return to_latlon(self.origin, e, n)


def to_latlon(
    origin: tuple[float, float], east_m: FloatArray, north_m: FloatArray
) -> tuple[FloatArray, FloatArray]:
    m, n = _radii(origin[0])
    lat = origin[0] + np.degrees(north_m / m)
    lon = origin[1] + np.degrees(east_m / (n * math.cos(math.radians(origin[0]))))
    return lat, lon


@dataclass(frozen=True)
class PairTruth:
    case_id: str
    offender: str
    victim: str
    kind: str
    order_m: float
    min_distance_m: float
    breached: bool


@dataclass
class Scenario:
    """Cases, device tracks and ground truth for one run."""

    duration_s: float
    tracks: dict[str, Track] = field(default_factory=dict)
    cases: list[dict[str, Any]] = field(default_factory=list)
    kinds: dict[str, str] = field(default_factory=dict)

    def case_file(self) -> dict[str, Any]:
        return {"cases": self.cases}

    def truth(self, step_s: float = 0.25) -> list[PairTruth]:
        """For each pair: the smallest true distance over the run, and whether it breached."""
        t = np.arange(0.0, self.duration_s + step_s, step_s)
        out = []
        for case in self.cases:
            for o in case["offenders"]:
                for v in case["protected"]:
                    lat1, lon1 = self.tracks[o].position(t)
                    lat2, lon2 = self.tracks[v].position(t)
                    d = geodesic_distance_m(lat1, lon1, lat2, lon2)
                    order = float(case["order"]["distance_m"])
                    out.append(
                        PairTruth(
                            case["id"],
                            o,
                            v,
                            self.kinds[case["id"]],
                            order,
                            float(d.min()),
                            bool((d <= order).any()),
                        )
                    )
        return out

    def zone_truth(self, step_s: float = 0.25) -> list[ZoneTruth]:
        """For each offender and zone of his case: whether he was ever inside it."""
        from geofence.compiled import ZoneSet
        from geofence.model import parse_zones

        t = np.arange(0.0, self.duration_s + step_s, step_s)
        out = []
        for case in self.cases:
            zones, _ = parse_zones(case.get("zones"))
            if not zones:
                continue
            zs = ZoneSet.compile(zones)
            for o in case["offenders"]:
                lat, lon = self.tracks[o].position(t)
                for z in range(len(zs)):
                    ev = zs.evaluate(
                        lat, lon, np.zeros(t.size), np.arange(t.size), np.full(t.size, z)
                    )
                    out.append(
                        ZoneTruth(case["id"], o, zones[z].label, bool((ev.signed_m <= 0).any()))
                    )
        return out


@dataclass(frozen=True)
class ZoneTruth:
    case_id: str
    offender: str
    label: str
    entered: bool


_NAMES = [
    "A. Peeters",
    "J. Janssens",
    "M. Maes",
    "L. Jacobs",
    "K. Mertens",
    "S. Willems",
    "T. Claes",
    "N. Goossens",
    "E. Wouters",
    "R. De Smet",
    "P. Dubois",
    "F. Lambert",
]

KINDS = ("drive-by", "walk-in", "near-miss", "far", "shared-victim", "zone-entry")
#: The victim's workplace in ``zone-entry`` scenarios: an octagonal block of this radius (m).
WORKPLACE_RADIUS_M = 150.0


def generate(
    pairs: int,
    duration_s: float,
    seed: int = 7,
    centre: tuple[float, float] = BRUSSELS,
    order_m: float = 500.0,
) -> Scenario:
    """A mix of scenario kinds, cycling through :data:`KINDS`:

    - ``drive-by``: the offender drives past the victim's home, closest approach 60-350 m,
      timed to enter and leave the order distance within the run (open, then ended);
    - ``walk-in``: the offender walks towards the victim's home from just outside the order
      distance and stays close (open);
    - ``near-miss``: the offender passes at 650-900 m (no alarm is right);
    - ``far``: the offender walks kilometres away (no alarm);
    - ``shared-victim``: a victim protected from two offenders in two cases, one of whom walks
      in while the other stays far (exactly one alarm, on the right case);
    - ``zone-entry``: the victim is at home; her workplace, 2-4 km away, is an exclusion zone
      of the case, and the offender walks into it (a zone alarm, and no proximity alarm).
    """
    rng = np.random.default_rng(seed)
    sc = Scenario(duration_s=duration_s)
    d = duration_s
    i = 0
    case_no = 0
    while case_no < pairs:
        kind = KINDS[i % len(KINDS)]
        i += 1
        home_e, home_n = rng.uniform(-5000, 5000, 2)
        victim = f"phone-{case_no + 1:03d}"
        # Victims stay at home (indoor-ish accuracy) or stroll slowly nearby.
        if rng.random() < 0.7:
            sc.tracks[victim] = Track(
                victim,
                centre,
                np.array([0.0, d]),
                np.array([home_e, home_e]),
                np.array([home_n, home_n]),
                float(rng.uniform(8, 15)),
                "home",
            )
        else:
            heading = rng.uniform(0, 2 * math.pi)
            walk = 0.8 * d
            sc.tracks[victim] = Track(
                victim,
                centre,
                np.array([0.0, d]),
                np.array([home_e, home_e + walk * math.cos(heading)]),
                np.array([home_n, home_n + walk * math.sin(heading)]),
                float(rng.uniform(5, 10)),
                "walking",
            )
        offenders: list[tuple[str, str]] = []  # (device, kind of its own movement)
        if kind == "shared-victim":
            offenders = [(f"tag-{case_no + 1:03d}", "walk-in"), (f"tag-{case_no + 2:03d}", "far")]
        else:
            offenders = [(f"tag-{case_no + 1:03d}", kind)]
        for off, move in offenders:
            if case_no >= pairs:
                break
            zones: list[dict[str, Any]] = []
            heading = rng.uniform(0, 2 * math.pi)
            ux, uy = math.cos(heading), math.sin(heading)
            vx, vy = -uy, ux  # perpendicular: the road's offset from the home
            if move in ("drive-by", "near-miss"):
                b = rng.uniform(60, 350) if move == "drive-by" else rng.uniform(650, 900)
                r_in = math.sqrt(max(order_m**2 - b**2, 0.0))
                r_out = math.sqrt(max((order_m * 1.1 + 25) ** 2 - b**2, 0.0))
                speed = float(np.clip((r_in + r_out + 150) / (0.8 * d), 10.0, 30.0))
                x0 = -(r_in + speed * rng.uniform(0.05, 0.15) * d)
                t = np.array([0.0, d])
                along = np.array([x0, x0 + speed * d])  # metres along the road
                east = home_e + along * ux + b * vx
                north = home_n + along * uy + b * vy
                sc.tracks[off] = Track(
                    off, centre, t, east, north, float(rng.uniform(4, 10)), "driving"
                )
            elif move == "zone-entry":
                speed = 1.5
                a = rng.uniform(0, 2 * math.pi)
                r_work = rng.uniform(2000, 4000)
                work_e, work_n = home_e + r_work * math.cos(a), home_n + r_work * math.sin(a)
                start = WORKPLACE_RADIUS_M + speed * rng.uniform(0.1, 0.5) * d
                stop = WORKPLACE_RADIUS_M * 0.4
                t_stop = (start - stop) / speed
                sc.tracks[off] = Track(
                    off,
                    centre,
                    np.array([0.0, t_stop, max(d, t_stop + 1)]),
                    work_e + ux * np.array([start, stop, stop]),
                    work_n + uy * np.array([start, stop, stop]),
                    float(rng.uniform(5, 10)),
                    "walking",
                )
                spin = rng.uniform(0, 2 * math.pi)
                ang = spin + np.arange(9) * (2 * math.pi / 8)
                lat, lon = to_latlon(
                    centre,
                    work_e + WORKPLACE_RADIUS_M * np.cos(ang),
                    work_n + WORKPLACE_RADIUS_M * np.sin(ang),
                )
                ring = [[float(x), float(y)] for x, y in zip(lon, lat, strict=True)]
                ring[-1] = ring[0]
                zones.append(
                    {
                        "type": "Feature",
                        "geometry": {"type": "Polygon", "coordinates": [ring]},
                        "properties": {
                            "kind": "exclusion",
                            "label": "victim's workplace",
                            "warning_m": 100,
                        },
                    }
                )
            elif move == "walk-in":
                speed = 1.5
                start = order_m + speed * rng.uniform(0.1, 0.5) * d
                stop = float(rng.uniform(100, 300))
                t_stop = (start - stop) / speed
                sc.tracks[off] = Track(
                    off,
                    centre,
                    np.array([0.0, t_stop, max(d, t_stop + 1)]),
                    home_e + ux * np.array([start, stop, stop]),
                    home_n + uy * np.array([start, stop, stop]),
                    float(rng.uniform(5, 12)),
                    "walking",
                )
            else:  # far
                r = rng.uniform(3000, 8000)
                walk = 1.4 * d
                sc.tracks[off] = Track(
                    off,
                    centre,
                    np.array([0.0, d]),
                    home_e + ux * np.array([r, r + walk]),
                    home_n + uy * np.array([r, r]),
                    float(rng.uniform(5, 12)),
                    "walking",
                )
            case_id = f"BE-DEMO-{case_no + 1:04d}"
            sc.kinds[case_id] = kind if kind != "shared-victim" else f"shared-victim/{move}"
            sc.cases.append(
                {
                    "id": case_id,
                    "offenders": [off],
                    "protected": [victim],
                    "order": {"distance_m": order_m, "warning_distance_m": 2 * order_m},
                    # Top speeds that match how each party moves (an old fix's uncertainty
                    # grows by its age times this speed).
                    "mobility": {
                        "offenders": "driving" if sc.tracks[off].mode == "driving" else "walking",
                        "protected": "walking",
                    },
                    "summary": {
                        "offender_name": _NAMES[int(rng.integers(len(_NAMES)))],
                        "offender_description": "simulated offender, " + sc.tracks[off].mode,
                        "victim_name": _NAMES[int(rng.integers(len(_NAMES)))],
                        "victim_phone": "+32 4"
                        + " ".join(str(int(x)) for x in rng.integers(10, 99, 4)),
                        "risk_notes": f"demo scenario: {sc.kinds[case_id]}",
                    },
                    "zones": {"type": "FeatureCollection", "features": zones},
                }
            )
            case_no += 1
    return sc


def noisy_fix(track: Track, t: float, rng: np.random.Generator) -> tuple[float, float]:
    """A GPS fix of ``track`` at ``t``: the true position plus Gaussian noise whose 68 % radius
    is the track's accuracy."""
    sigma = track.acc_m / R68_PER_SIGMA
    lat, lon = track.position(t)
    de, dn = rng.normal(0.0, sigma, 2)
    nlat, nlon = to_latlon((float(lat[0]), float(lon[0])), np.array([de]), np.array([dn]))
    return float(nlat[0]), float(nlon[0])
