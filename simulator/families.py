"""Evaluation scenarios: seeded families of offender/victim cases with known ground truth.

Each family is a kind of situation a pilot must get right (the offender walks to the
victim's home, drives towards her while she walks, travels the same road by coincidence,
probes the boundary, goes silent and approaches, stays just outside the order distance for
hours, passes while her phone is indoors, many pairs living their day in one city, passes
an exclusion zone with a fix every 100 m). A family
builds ``variants`` cases from one seed; every case has a true path per person (walking,
cycling and driving along a street grid, dwelling at home or work), an error model per
device (:mod:`simulator.gnss`) and a reporting interval.

The suite places the families on one timeline (:func:`build_suite`): each case is active in
its own window, the long families run beside the short ones so that the engine's load stays
even, and every time is in seconds from the start of the run. Ground truth comes from the
true paths: the true distance of each pair on a 0.5 s grid, its breach episodes (crossing
and leaving the order distance), boundary probes (entries into the warning distance), and
the windows in which a device sends nothing, and the offender's passages through a case's
exclusion zones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from geofence.model import circle, feature_collection
from numerics.geodesy import geodesic_distance_m
from simulator.gnss import ErrorModel
from simulator.scenario import BRUSSELS, Track, to_latlon

FloatArray = npt.NDArray[np.float64]

ORDER_M = 500.0
WARNING_M = 1000.0
#: Street grid block size, metres.
BLOCK_M = 110.0
#: Truth grid step, seconds.
TRUTH_STEP_S = 0.5
#: Breach episodes closer than this in time are one episode (the engine's dwell would join
#: them too).
MERGE_GAP_S = 60.0
#: A breach shallower than this or shorter than MARGINAL_S is marginal: an alarm for it is
#: not false, and missing it is not a missed detection (no confirmation rule can, or should,
#: alarm on 10 m for 10 s inside a 500 m circle through 5-15 m GPS noise).
MARGINAL_DEPTH_M = 25.0
MARGINAL_S = 30.0
#: The city the families are placed in, and how far from its centre (m).
CITY_RADIUS_M = 6000.0


#: Bursty reporting: runs of this many fixes a second apart, then this long without one.
BURST_FIXES = (3, 10)
BURST_GAP_S = (5.0, 15.0)
#: Power saving: the gaps between fixes, seconds.
POWER_SAVING_S = (30.0, 120.0)


@dataclass(frozen=True)
class Reporting:
    """When a device really reports, and the interval its case file declares.

    ``kind``: ``regular`` (every ``every_s`` give or take 10 %, or at the suite's interval
    when that is None), ``bursty`` (runs of 3-10 fixes a second apart, then 5-15 s of
    nothing: GNSS loggers, phones that batch) or ``power-saving`` (gaps of 30-120 s).
    ``declared_s``: what the case file says (None: the suite's interval), which a device may
    not keep."""

    kind: str = "regular"
    every_s: float | None = None
    declared_s: float | None = None

    @property
    def own(self) -> bool:
        """Whether the pattern is the device's own rather than the suite's interval."""
        return self.kind != "regular" or self.every_s is not None

    def times(self, start: float, end: float, rng: np.random.Generator) -> FloatArray:
        """The report times in [start, end) of an ``own`` pattern."""
        span = end - start
        if self.kind == "bursty":
            out: list[FloatArray] = []
            t = start + float(rng.uniform(0.0, BURST_GAP_S[1]))
            while t < end:
                k = int(rng.integers(BURST_FIXES[0], BURST_FIXES[1] + 1))
                out.append(t + np.arange(k, dtype=np.float64))
                t += k - 1 + float(rng.uniform(*BURST_GAP_S))
            times = np.concatenate(out) if out else np.empty(0)
        else:
            lo, hi = (
                POWER_SAVING_S
                if self.kind == "power-saving"
                else (0.9 * (self.every_s or 1.0), 1.1 * (self.every_s or 1.0))
            )
            n = int(span / lo) + 2
            steps = rng.uniform(lo, hi, n)
            steps[0] = float(rng.uniform(0.0, hi))  # the first report: any time in a gap
            times = start + np.cumsum(steps)
        return times[(times >= start) & (times < end)]

    def describe(self, interval_s: float) -> str:
        declared = self.declared_s if self.declared_s is not None else interval_s
        if self.kind == "bursty":
            real = "in bursts of 3-10 fixes a second apart, 5-15 s between bursts"
        elif self.kind == "power-saving":
            real = "every 30-120 s (power saving)"
        else:
            real = f"every {self.every_s or interval_s:g} s"
        return f"reports {real}; declared {declared:g} s"


@dataclass(frozen=True)
class SimDevice:
    id: str
    role: str  # "offender" or "victim"
    track: Track
    error: ErrorModel
    interval_s: float
    #: Faster reporting while an alarm of its case is open (None: never).
    alarm_interval_s: float | None = None
    #: A replayed recording: (times in the suite's seconds, lat, lon, accuracy or NaN),
    #: published as recorded instead of sampled from ``track`` with ``error``.
    recorded: tuple[FloatArray, FloatArray, FloatArray, FloatArray] | None = None
    #: Its own reporting pattern and declared interval (default: the suite's interval).
    reporting: Reporting = field(default_factory=Reporting)

    @property
    def declared_s(self) -> float:
        d = self.reporting.declared_s
        return self.interval_s if d is None else d


@dataclass(frozen=True)
class TruthEvent:
    """Something that really happened and that an alarm should report.

    ``kind``: ``breach`` (the true distance is within the order distance from ``start_s`` to
    ``end_s``), ``zone`` (the offender is truly inside an exclusion zone of the case from
    ``start_s`` to ``end_s``), ``probing`` (the third true entry into the warning distance
    within an hour, at ``start_s``) or ``silence`` (the offender's device sends nothing from
    ``start_s``)."""

    case_id: str
    kind: str
    start_s: float
    end_s: float
    depth_m: float = 0.0
    marginal: bool = False


@dataclass
class SimCase:
    case: dict[str, Any]
    family: str
    variant: int
    offender: str
    victim: str
    start_s: float
    end_s: float
    truth: list[TruthEvent] = field(default_factory=list)
    #: Both parties travel the same road in the same direction during the breach.
    parallel: bool = False
    min_distance_m: float = math.inf

    @property
    def id(self) -> str:
        return str(self.case["id"])


@dataclass
class Suite:
    cases: list[SimCase]
    devices: dict[str, SimDevice]
    duration_s: float
    origin: tuple[float, float] = BRUSSELS

    def case_file(self) -> dict[str, Any]:
        """The case file the engine's registry imports (cases and their devices)."""
        devices = []
        for d in self.devices.values():
            entry: dict[str, Any] = {"id": d.id, "reporting_interval_s": d.declared_s}
            if d.alarm_interval_s is not None:
                entry["alarm_reporting_interval_s"] = d.alarm_interval_s
            devices.append(entry)
        return {"cases": [c.case for c in self.cases], "devices": devices}

    def families(self) -> list[str]:
        return list(dict.fromkeys(c.family for c in self.cases))


# --- movement -------------------------------------------------------------------------------


def grid_route(
    rng: np.random.Generator, a: tuple[float, float], b: tuple[float, float]
) -> list[tuple[float, float]]:
    """A plausible street route from ``a`` to ``b``: alternating east-west and north-south
    legs along a grid of ``BLOCK_M`` blocks (2-5 turns), ending exactly at ``b``."""
    legs = int(rng.integers(2, 6))
    fx = np.diff(np.r_[0.0, np.sort(rng.random(legs - 1)), 1.0])
    fy = np.diff(np.r_[0.0, np.sort(rng.random(legs - 1)), 1.0])
    dx, dy = b[0] - a[0], b[1] - a[1]
    pts = [a]
    x, y = a
    for i in range(legs):
        nx = x + dx * fx[i]
        ny = y + dy * fy[i]
        if i < legs - 1:  # turn at a street corner
            nx = round(nx / BLOCK_M) * BLOCK_M
            ny = round(ny / BLOCK_M) * BLOCK_M
        else:
            nx, ny = b
        if (i % 2) == 0:
            pts += [(nx, y), (nx, ny)]
        else:
            pts += [(x, ny), (nx, ny)]
        x, y = nx, ny
    out = [pts[0]]
    for p in pts[1:]:
        if math.hypot(p[0] - out[-1][0], p[1] - out[-1][1]) > 0.5:
            out.append(p)
    return out


@dataclass
class Path:
    """Waypoints in local metres at times (s): appended to in order."""

    t: list[float]
    e: list[float]
    n: list[float]

    @classmethod
    def at(cls, p: tuple[float, float], t: float = 0.0) -> Path:
        return cls([t], [p[0]], [p[1]])

    @property
    def end(self) -> tuple[float, float]:
        return self.e[-1], self.n[-1]

    def wait_until(self, t: float) -> Path:
        if t > self.t[-1]:
            self.t.append(t)
            self.e.append(self.e[-1])
            self.n.append(self.n[-1])
        return self

    def go(
        self,
        rng: np.random.Generator,
        points: Sequence[tuple[float, float]],
        speed: float,
        stop_s: tuple[float, float] = (0.0, 0.0),
    ) -> Path:
        """Travel through ``points`` at ``speed`` (give or take 15 % per leg), stopping
        ``stop_s`` seconds at each corner (traffic lights)."""
        for k, p in enumerate(points):
            d = math.hypot(p[0] - self.e[-1], p[1] - self.n[-1])
            if d < 0.01:
                continue
            v = speed * float(rng.uniform(0.85, 1.15))
            self.t.append(self.t[-1] + d / v)
            self.e.append(p[0])
            self.n.append(p[1])
            if stop_s[1] > 0 and k < len(points) - 1:
                self.wait_until(self.t[-1] + float(rng.uniform(*stop_s)))
        return self

    def track(self, device: str, mode: str, duration_s: float, acc_m: float) -> Track:
        self.wait_until(duration_s)
        return Track(
            device,
            BRUSSELS,
            np.array(self.t),
            np.array(self.e),
            np.array(self.n),
            acc_m,
            mode,
        )


def _polar(r: float, a: float, c: tuple[float, float] = (0.0, 0.0)) -> tuple[float, float]:
    return c[0] + r * math.cos(a), c[1] + r * math.sin(a)


WALK = 1.4
CYCLE = 4.5
DRIVE = 11.0
DRIVE_STOPS = (0.0, 25.0)


def _home_error(rng: np.random.Generator) -> ErrorModel:
    return ErrorModel(float(rng.uniform(8, 15)), multipath_rate=0.002, dropout_rate=0.001)


def _street_error(rng: np.random.Generator) -> ErrorModel:
    return ErrorModel(float(rng.uniform(5, 12)), multipath_rate=0.003, dropout_rate=0.001)


@dataclass
class Draft:
    """One case of a family in its own time (0 .. duration) and place (victim's home at 0,0)."""

    offender: Path
    victim: Path
    offender_mode: str
    victim_mode: str
    offender_error: ErrorModel
    victim_error: ErrorModel
    duration_s: float
    parallel: bool = False
    #: (start, end) of the offender's silence, in the draft's time.
    silent: tuple[tuple[float, float], ...] = ()
    note: str = ""
    offender_reporting: Reporting = field(default_factory=Reporting)
    victim_reporting: Reporting = field(default_factory=Reporting)
    #: Exclusion zones of the case, circles (east, north, radius), metres in the draft's frame.
    zones: tuple[tuple[float, float, float], ...] = ()


def _she_is_home(
    rng: np.random.Generator,
    off: Path,
    mode: str,
    duration_s: float,
    note: str,
    silent: tuple[tuple[float, float], ...] = (),
) -> Draft:
    """A draft in which she stays at home (0, 0) and he moves along ``off`` outdoors."""
    return Draft(
        off,
        Path.at((0.0, 0.0)),
        mode,
        "home",
        _street_error(rng),
        _home_error(rng),
        duration_s,
        silent=silent,
        note=note,
    )


# --- the families ---------------------------------------------------------------------------


def walk_home(rng: np.random.Generator, duration_s: float) -> Draft:
    """The offender walks from 1-1.4 km away through the streets to 60-250 m of the
    victim's home, where she is, and stays (a real breach)."""
    a = float(rng.uniform(0, 2 * math.pi))
    start = _polar(float(rng.uniform(1000, 1400)), a)
    stop = _polar(float(rng.uniform(60, 250)), a + float(rng.uniform(-0.6, 0.6)))
    off = Path.at(start).wait_until(float(rng.uniform(60, 300)))
    off.go(rng, grid_route(rng, start, stop), WALK)
    return _she_is_home(rng, off, "walking", duration_s, "walks to the protected person's home")


def drive_to_walker(rng: np.random.Generator, duration_s: float) -> Draft:
    """The victim walks through the streets; the offender drives from 4-6 km away to where
    she is, parks 50-150 m from her and stays while she walks on (a real breach)."""
    vic = Path.at((0.0, 0.0)).wait_until(float(rng.uniform(30, 120)))
    a = float(rng.uniform(0, 2 * math.pi))
    vic.go(rng, grid_route(rng, (0.0, 0.0), _polar(4000.0, a)), 1.3)
    vtrack = vic.track("v", "walking", duration_s, 8.0)
    b = float(rng.uniform(0, 2 * math.pi))
    start = _polar(float(rng.uniform(4000, 6000)), b)
    t0 = float(rng.uniform(200, 500))
    # Aim at where she will be on arrival (twice refined), and park short of it.
    t_arr = t0 + 600.0
    for _ in range(3):
        e, n = np.interp(t_arr, vtrack.t, vtrack.east_m), np.interp(t_arr, vtrack.t, vtrack.north_m)
        aim = _polar(float(rng.uniform(50, 150)), float(rng.uniform(0, 2 * math.pi)), (e, n))
        probe = Path.at(start, t0)
        probe.go(np.random.default_rng(1), grid_route(np.random.default_rng(2), start, aim), DRIVE)
        t_arr = probe.t[-1]
    off = Path.at(start).wait_until(t0)
    off.go(rng, grid_route(rng, start, aim), DRIVE, DRIVE_STOPS)
    return Draft(
        off,
        vic,
        "driving",
        "walking",
        _street_error(rng),
        _street_error(rng),
        duration_s,
        note="the offender drives to the protected person, who walks",
    )


def parallel_travel(rng: np.random.Generator, duration_s: float) -> Draft:
    """Coincidental encounter: both drive the same road in the same direction, the offender
    15-35 s behind her, for several kilometres, then he turns off (a real breach, which the
    alarm labels as parallel travel)."""
    t0 = float(rng.uniform(120, 300))
    a = float(rng.uniform(0, 2 * math.pi))
    route = grid_route(rng, (0.0, 0.0), _polar(float(rng.uniform(6000, 9000)), a))
    vic = Path.at((0.0, 0.0)).wait_until(t0).go(rng, route, DRIVE, DRIVE_STOPS)
    delay = float(rng.uniform(15, 35))
    # He comes from a side street 1.5 km away and joins her route as she leaves.
    side = _polar(1500.0, a + math.pi / 2)
    join_t = t0 + delay
    off = Path.at(side)
    off.wait_until(join_t - 1500.0 / DRIVE)
    off.go(rng, [(side[0], 0.0), (0.0, 0.0)], DRIVE)
    shift = join_t - off.t[-1]
    off.t = [t + (shift if i == len(off.t) - 1 else 0.0) for i, t in enumerate(off.t)]
    # Her path from the start of her drive, delayed.
    k0 = vic.t.index(t0)
    follow_t = [t + delay for t in vic.t[k0 + 1 :]]
    off.t += follow_t
    off.e += vic.e[k0 + 1 :]
    off.n += vic.n[k0 + 1 :]
    # At her destination he drives on, away from it.
    off.go(rng, [_polar(2000.0, a + math.pi / 2, vic.end)], DRIVE)
    return Draft(
        off,
        vic,
        "driving",
        "driving",
        _street_error(rng),
        _street_error(rng),
        duration_s,
        parallel=True,
        note="same road, same direction",
    )


def indoor_pass(rng: np.random.Generator, duration_s: float) -> Draft:
    """The victim is indoors (accuracy 4-8 times worse, wandering) while the offender walks
    or drives past twice, 700-900 m from her at his closest: no alarm is right."""
    b = float(rng.uniform(700, 900))
    a = float(rng.uniform(0, 2 * math.pi))
    u, v = (math.cos(a), math.sin(a)), (-math.sin(a), math.cos(a))
    far = 2500.0
    p0 = (b * v[0] - far * u[0], b * v[1] - far * u[1])
    p1 = (b * v[0] + far * u[0], b * v[1] + far * u[1])
    driving = bool(rng.random() < 0.5)
    speed = DRIVE if driving else WALK
    off = Path.at(p0).wait_until(float(rng.uniform(60, 300)))
    off.go(rng, [p1], speed)
    off.wait_until(off.t[-1] + float(rng.uniform(60, 300)))
    off.go(rng, [p0], speed)
    home = ErrorModel(
        float(rng.uniform(8, 15)),
        multipath_rate=0.003,
        dropout_rate=0.001,
        indoor=((0.0, duration_s),),
    )
    return Draft(
        off,
        Path.at((0.0, 0.0)),
        "driving" if driving else "walking",
        "home",
        _street_error(rng),
        home,
        duration_s,
        note="the protected person is indoors; the offender passes at a safe distance",
    )


def silent_approach(rng: np.random.Generator, duration_s: float) -> Draft:
    """The offender's device goes silent 0.9-1.3 km away; he walks to 50-200 m of her home;
    in even variants it comes back on there 1-5 min after he arrives, in odd ones never."""
    a = float(rng.uniform(0, 2 * math.pi))
    start = _polar(float(rng.uniform(900, 1300)), a)
    stop = _polar(float(rng.uniform(50, 200)), a)
    t_silent = float(rng.uniform(200, 400))
    off = Path.at(start).wait_until(t_silent + 30.0)
    off.go(rng, grid_route(rng, start, stop), WALK)
    back = off.t[-1] + float(rng.uniform(60, 300))
    comes_back = bool(rng.random() < 0.5)
    end = back if comes_back and back < duration_s - 120 else duration_s
    note = (
        "silent, then back on near the protected person"
        if end < duration_s
        else "silent to the end"
    )
    return _she_is_home(rng, off, "walking", duration_s, note, silent=((t_silent, end),))


def probing(rng: np.random.Generator, duration_s: float) -> Draft:
    """The offender cycles in towards her home to 560-750 m (inside the warning distance,
    outside the order distance), back out to 1.25-1.45 km, again and again: no breach, and a
    probing alarm is right after the third entry."""
    a = float(rng.uniform(0, 2 * math.pi))
    out = _polar(float(rng.uniform(1250, 1450)), a)
    off = Path.at(out).wait_until(float(rng.uniform(30, 200)))
    while off.t[-1] < duration_s:
        near = _polar(float(rng.uniform(560, 750)), a + float(rng.uniform(-0.2, 0.2)))
        off.go(rng, [near], CYCLE)
        off.wait_until(off.t[-1] + float(rng.uniform(30, 90)))
        out = _polar(float(rng.uniform(1250, 1450)), a + float(rng.uniform(-0.2, 0.2)))
        off.go(rng, [out], CYCLE)
        off.wait_until(off.t[-1] + float(rng.uniform(60, 180)))
    return _she_is_home(rng, off, "cycling", duration_s, "probes the boundary")


def stationary(rng: np.random.Generator, duration_s: float) -> Draft:
    """Both stay put, 20 m outside the order distance, for hours: no alarm is right."""
    a = float(rng.uniform(0, 2 * math.pi))
    return Draft(
        Path.at(_polar(ORDER_M + 20.0, a)),
        Path.at((0.0, 0.0)),
        "stationary",
        "home",
        _home_error(rng),
        _home_error(rng),
        duration_s,
        note="both stationary 20 m outside",
    )


def city_day(rng: np.random.Generator, duration_s: float) -> Draft:
    """Many pairs in one city: each person dwells, travels to another place (on foot, by
    bike or by car) and dwells there; homes are anywhere in a 12 km city, so encounters are
    rare and, when they happen, real."""
    ve = ErrorModel(float(rng.uniform(5, 12)), multipath_rate=0.003, dropout_rate=0.001)
    oe = ErrorModel(float(rng.uniform(5, 12)), multipath_rate=0.003, dropout_rate=0.001)
    paths, modes = [], []
    for home in ((0.0, 0.0), _polar(float(rng.uniform(1500, 8000)), rng.uniform(0, 2 * math.pi))):
        mode = str(rng.choice(["walking", "cycling", "driving"]))
        speed = {"walking": WALK, "cycling": CYCLE, "driving": DRIVE}[mode]
        reach = min(duration_s * 0.5 * speed, 6000.0)
        dest = _polar(float(rng.uniform(0.3, 1.0)) * reach, rng.uniform(0, 2 * math.pi), home)
        p = Path.at(home).wait_until(float(rng.uniform(0, duration_s * 0.4)))
        p.go(rng, grid_route(rng, home, dest), speed, DRIVE_STOPS if mode == "driving" else (0, 0))
        paths.append(p)
        modes.append(mode)
    return Draft(paths[1], paths[0], modes[1], modes[0], oe, ve, duration_s, note="a day")


def _reporting(draft: Draft, how: Reporting, note: str) -> Draft:
    return replace(draft, offender_reporting=how, victim_reporting=how, note=note)


def _network(draft: Draft, rate: float, note: str) -> Draft:
    return replace(
        draft,
        offender_error=replace(draft.offender_error, network_rate=rate),
        victim_error=replace(draft.victim_error, network_rate=rate),
        note=note,
    )


def bursty(rng: np.random.Generator, duration_s: float) -> Draft:
    """``walk-home`` with both devices logging in bursts (3-10 fixes a second apart, then
    5-15 s of nothing), declared as reporting every second (a real breach)."""
    how = Reporting("bursty", declared_s=1.0)
    return _reporting(walk_home(rng, duration_s), how, "walks to her home; bursty loggers")


def power_saving(rng: np.random.Generator, duration_s: float) -> Draft:
    """``walk-home`` with both phones in power saving (a fix every 30-120 s), declared at
    120 s, the longest gap they are set to (a real breach)."""
    how = Reporting("power-saving", declared_s=120.0)
    return _reporting(walk_home(rng, duration_s), how, "walks to her home; power saving")


def every_minute(rng: np.random.Generator, duration_s: float) -> Draft:
    """``walk-home`` with both devices reporting once a minute, as declared (a real
    breach)."""
    how = Reporting("regular", every_s=60.0, declared_s=60.0)
    return _reporting(walk_home(rng, duration_s), how, "walks to her home; a fix a minute")


def wrong_interval(rng: np.random.Generator, duration_s: float) -> Draft:
    """``walk-home`` with devices declared at 1 s that report every 15 s (a real breach)."""
    how = Reporting("regular", every_s=15.0, declared_s=1.0)
    return _reporting(walk_home(rng, duration_s), how, "walks to her home; declared 1 s, 15 s")


def network_mix(rng: np.random.Generator, duration_s: float) -> Draft:
    """``walk-home`` with a fifth of both phones' fixes network fixes (cell, Wi-Fi) of
    300-1,000 m (a real breach)."""
    return _network(walk_home(rng, duration_s), 0.2, "walks to her home; network fixes mixed")


def network_pass(rng: np.random.Generator, duration_s: float) -> Draft:
    """``indoor-pass`` with a fifth of both phones' fixes network fixes of 300-1,000 m: he
    passes 700-900 m from her; no alarm is right."""
    return _network(indoor_pass(rng, duration_s), 0.2, "passes at a safe distance; network fixes")


#: The exclusion zone of ``zone-pass``: its radius, and how far it is from her home (beyond
#: the warning distance, so that only the zone rule has anything to say).
ZONE_PASS_RADIUS_M = 120.0
ZONE_PASS_FROM_HOME_M = 1600.0
#: ``zone-pass`` devices report once every this many metres travelled.
ZONE_PASS_EVERY_M = 100.0


def zone_pass(rng: np.random.Generator, duration_s: float) -> Draft:
    """The offender walks or cycles along a straight street past an exclusion zone of
    120 m (her children's school, 1.6 km from her home), his device reporting once every
    100 m travelled (as declared): in half the variants the street runs through the zone,
    0-85 m from its centre (a real zone breach, one or two fixes inside it at most); in the
    others it passes 40-140 m outside (no alarm is right)."""
    a = float(rng.uniform(0, 2 * math.pi))
    centre = _polar(ZONE_PASS_FROM_HOME_M, a)
    # The street runs across the line from her home to the zone, ``b`` from its centre.
    through = bool(rng.integers(0, 2) == 0)
    b = float(rng.uniform(0.0, 85.0) if through else rng.uniform(160.0, 260.0))
    b *= 1.0 if rng.random() < 0.5 else -1.0
    u = (-math.sin(a), math.cos(a))  # along the street
    w = (math.cos(a), math.sin(a))  # across it (away from her home)
    mid = (centre[0] + b * w[0], centre[1] + b * w[1])
    far = 800.0
    p0 = (mid[0] - far * u[0], mid[1] - far * u[1])
    p1 = (mid[0] + far * u[0], mid[1] + far * u[1])
    cycling = bool(rng.random() < 0.5)
    speed = CYCLE if cycling else WALK
    off = Path.at(p0).wait_until(float(rng.uniform(60, 300)))
    off.go(rng, [p1], speed)
    speed = 2.0 * far / (off.t[-1] - off.t[-2])  # as he really went (give or take 15 %)
    every = Reporting(
        "regular", every_s=ZONE_PASS_EVERY_M / speed, declared_s=ZONE_PASS_EVERY_M / speed
    )
    how = "through" if through else "past"
    draft = _she_is_home(
        rng,
        off,
        "cycling" if cycling else "walking",
        duration_s,
        f"{'cycles' if cycling else 'walks'} {how} the school zone; a fix every 100 m",
    )
    return replace(
        draft,
        offender_reporting=every,
        zones=((centre[0], centre[1], ZONE_PASS_RADIUS_M),),
    )


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[[np.random.Generator, float], Draft]
    duration_s: float
    #: Pairs per variant count (the city family has many).
    pairs_factor: int = 1
    #: Alarms this family should raise ("none": any alarm is false).
    expect: str = ""


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("walk-home", walk_home, 1800.0, expect="proximity alarm"),
        Family("drive-to-walker", drive_to_walker, 1800.0, expect="proximity alarm"),
        Family("parallel", parallel_travel, 1800.0, expect="proximity alarm, parallel travel"),
        Family("indoor-pass", indoor_pass, 3600.0, expect="none"),
        Family(
            "silent-approach",
            silent_approach,
            1800.0,
            expect="signal lost, then proximity alarm if the device comes back",
        ),
        Family("probing", probing, 3600.0, expect="probing alarm"),
        Family("stationary", stationary, 7200.0, expect="none"),
        Family("city", city_day, 1800.0, pairs_factor=6, expect="alarms for real encounters"),
        Family("bursty", bursty, 1800.0, expect="proximity alarm"),
        Family("power-saving", power_saving, 3600.0, expect="proximity alarm"),
        Family("every-minute", every_minute, 3600.0, expect="proximity alarm"),
        Family("wrong-interval", wrong_interval, 1800.0, expect="proximity alarm"),
        Family("network-mix", network_mix, 1800.0, expect="proximity alarm"),
        Family("network-pass", network_pass, 3600.0, expect="none"),
        Family(
            "zone-pass",
            zone_pass,
            1800.0,
            expect="zone alarm when the street runs through the zone, else none",
        ),
    )
}


# --- truth ----------------------------------------------------------------------------------


def _episodes(t: FloatArray, inside: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """Index ranges [i, j) of runs of ``inside``, runs closer than MERGE_GAP_S joined."""
    edges = np.flatnonzero(np.diff(np.r_[0, inside.astype(np.int8), 0]))
    runs = list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))
    merged: list[tuple[int, int]] = []
    for i, j in runs:
        if merged and t[i] - t[merged[-1][1] - 1] < MERGE_GAP_S:
            merged[-1] = (merged[-1][0], j)
        else:
            merged.append((i, j))
    return merged


def _within(
    case_id: str, kind: str, t: FloatArray, d: FloatArray, limit_m: float
) -> list[TruthEvent]:
    """Events ``kind`` for the episodes of ``d`` (metres at times ``t``) within ``limit_m``,
    marginal when shallower than MARGINAL_DEPTH_M or shorter than MARGINAL_S."""
    events = []
    for i, j in _episodes(t, d <= limit_m):
        depth = float(limit_m - d[i:j].min())
        dur = float(t[j - 1] - t[i])
        marginal = depth < MARGINAL_DEPTH_M or dur < MARGINAL_S
        events.append(TruthEvent(case_id, kind, float(t[i]), float(t[j - 1]), depth, marginal))
    return events


def pair_truth(
    case_id: str,
    off: Track,
    vic: Track,
    start_s: float,
    end_s: float,
    order_m: float = ORDER_M,
    warning_m: float = WARNING_M,
    margin_m: float = 50.0,
) -> tuple[list[TruthEvent], float]:
    """Breach episodes and the probing event of one pair over [start, end], and the smallest
    true distance. Entries into the warning distance count after having been beyond it plus
    ``margin_m`` (as the engine's hysteresis does)."""
    t = np.arange(start_s, end_s + TRUTH_STEP_S, TRUTH_STEP_S)
    lat1, lon1 = off.position(t)
    lat2, lon2 = vic.position(t)
    d = geodesic_distance_m(lat1, lon1, lat2, lon2)
    events = _within(case_id, "breach", t, d, order_m)
    # Entries into the warning distance (with hysteresis), the third within an hour.
    beyond = np.flatnonzero(d > warning_m + margin_m)
    crossings = np.flatnonzero((d[1:] <= warning_m) & (d[:-1] > warning_m)) + 1
    entries: list[float] = []
    last = -1
    for k in crossings.tolist():
        # An entry counts once the pair has been beyond the band's edge since the last one.
        if last < 0 or np.searchsorted(beyond, last) < np.searchsorted(beyond, k):
            entries.append(float(t[k]))
            last = k
    for k in range(2, len(entries)):
        if entries[k] - entries[k - 2] <= 3600.0 and not any(
            e.kind == "breach" and not e.marginal for e in events
        ):
            events.append(TruthEvent(case_id, "probing", entries[k], entries[k]))
            break
    return events, float(d.min())


def zone_truth(
    case_id: str,
    off: Track,
    centre: tuple[float, float],
    radius_m: float,
    start_s: float,
    end_s: float,
) -> list[TruthEvent]:
    """The episodes of the offender truly inside the circle zone ``centre`` (lat, lon),
    ``radius_m``, over [start, end] (marginal as breaches are: shallower than
    MARGINAL_DEPTH_M or shorter than MARGINAL_S)."""
    t = np.arange(start_s, end_s + TRUTH_STEP_S, TRUTH_STEP_S)
    lat, lon = off.position(t)
    d = geodesic_distance_m(lat, lon, np.full(t.size, centre[0]), np.full(t.size, centre[1]))
    return _within(case_id, "zone", t, d, radius_m)


# --- the suite ------------------------------------------------------------------------------


def _place(families: Sequence[tuple[Family, int]], horizon_s: float) -> list[float]:
    """Start times for the families on one timeline: each where the busiest moment of the
    run (devices reporting at once) stays lowest, within the horizon (longest first)."""
    order = sorted(range(len(families)), key=lambda i: -families[i][0].duration_s)
    placed: list[tuple[float, float, int]] = []  # start, end, devices
    starts = [0.0] * len(families)
    for i in order:
        fam, n = families[i]
        devices = 2 * n
        best, best_peak = 0.0, math.inf
        for s in sorted({0.0, *(e for _, e, _ in placed)}):
            if s + fam.duration_s > horizon_s + 1e-9:
                continue
            cuts = {s, *(a for a, _, _ in placed if s <= a < s + fam.duration_s)}
            peak = max(sum(dv for a, e, dv in placed if a <= c < e) for c in cuts) + devices
            if peak < best_peak:
                best, best_peak = s, peak
        starts[i] = best
        placed.append((best, best + fam.duration_s, devices))
    return starts


def _shift(track: Track, device: str, dt: float, origin_e: float, origin_n: float) -> Track:
    return replace(
        track,
        device=device,
        t=track.t + dt,
        east_m=track.east_m + origin_e,
        north_m=track.north_m + origin_n,
    )


def build_suite(
    names: Sequence[str],
    variants: int = 5,
    seed: int = 7,
    interval_s: float = 1.0,
    alarm_interval_s: float | None = None,
    lead_s: float = 5.0,
) -> Suite:
    """The cases of the named families (``variants`` each; the city ``6 x variants``), placed
    on one timeline that starts ``lead_s`` after the run's start."""
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise ValueError(
            f"unknown scenario type(s) {', '.join(unknown)}; known: {', '.join(FAMILIES)}"
        )
    fams = [(FAMILIES[n], variants * FAMILIES[n].pairs_factor) for n in names]
    horizon = max((f.duration_s for f, _ in fams), default=0.0)
    starts = _place(fams, horizon)
    rng = np.random.default_rng(seed)
    cases: list[SimCase] = []
    devices: dict[str, SimDevice] = {}
    for (fam, n), start in zip(fams, starts, strict=True):
        for k in range(n):
            draft = fam.build(np.random.default_rng([seed, len(cases), k]), fam.duration_s)
            no = len(cases) + 1
            case_id = f"EVAL-{fam.name}-{k + 1:03d}"
            off_id, vic_id = f"tag-{no:04d}", f"phone-{no:04d}"
            oe, on = _polar(float(rng.uniform(0, CITY_RADIUS_M)), float(rng.uniform(0, 6.3)))
            t0 = start + lead_s
            off = _shift(
                draft.offender.track("", draft.offender_mode, fam.duration_s, 0), off_id, t0, oe, on
            )
            vic = _shift(
                draft.victim.track("", draft.victim_mode, fam.duration_s, 0), vic_id, t0, oe, on
            )
            silent = tuple((a + t0, b + t0) for a, b in draft.silent)
            devices[off_id] = SimDevice(
                off_id,
                "offender",
                off,
                replace(draft.offender_error, silent=silent),
                interval_s,
                alarm_interval_s,
                reporting=draft.offender_reporting,
            )
            indoor = tuple((a + t0, b + t0) for a, b in draft.victim_error.indoor)
            devices[vic_id] = SimDevice(
                vic_id,
                "victim",
                vic,
                replace(draft.victim_error, indoor=indoor),
                interval_s,
                alarm_interval_s,
                reporting=draft.victim_reporting,
            )
            truth, dmin = pair_truth(case_id, off, vic, t0, t0 + fam.duration_s)
            truth += [TruthEvent(case_id, "silence", a, b) for a, b in silent]
            features = []
            for ze, zn, zr in draft.zones:
                zlat, zlon = to_latlon(BRUSSELS, np.array([ze + oe]), np.array([zn + on]))
                zc = (float(zlat[0]), float(zlon[0]))
                truth += zone_truth(case_id, off, zc, zr, t0, t0 + fam.duration_s)
                features.append(
                    circle(zc[1], zc[0], zr, kind="exclusion", label="children's school")
                )
            mobility = "driving" if draft.offender_mode == "driving" else "walking"
            if draft.offender_mode == "cycling":
                mobility = "cycling"
            cases.append(
                SimCase(
                    {
                        "id": case_id,
                        "offenders": [off_id],
                        "protected": [vic_id],
                        "order": {"distance_m": ORDER_M, "warning_distance_m": WARNING_M},
                        "mobility": {
                            "offenders": mobility,
                            "protected": "driving" if draft.victim_mode == "driving" else "walking",
                        },
                        "summary": {
                            "offender_name": f"offender {no}",
                            "victim_name": f"victim {no}",
                            "risk_notes": f"evaluation scenario {fam.name} #{k + 1}: {draft.note}",
                        },
                        **({"zones": feature_collection(features)} if features else {}),
                    },
                    fam.name,
                    k,
                    off_id,
                    vic_id,
                    t0,
                    t0 + fam.duration_s,
                    truth,
                    draft.parallel,
                    dmin,
                )
            )
    return Suite(cases, devices, horizon + lead_s if cases else 0.0)
