"""Pair evaluation: the proximity core against the usual ways of measuring many distances.

Run from the repository root::

    scripts/bench pairs                      # 1k, 10k, 100k and 1M pairs
    scripts/bench pairs --sizes 1000 100000 --repeat 9

For each size, offender/victim pairs shared as in a registry (``--layout cases``: 10 % of
cases reuse a victim, 10 % an offender) or at random (``--layout random``, the worst case for
memory access), placed across Belgium (``--area belgium``) or one city (``--area city``, more
pairs near their order distance), with accuracies of 3-50 m or unknown, fix ages of 0-30 s
(``--max-age``) plus 2 % of devices silent for up to 10 minutes, and walking/driving top
speeds. Every implementation measures the same
pairs; one batch = all pairs once. Printed: median milliseconds per batch, pairs per second,
and the ratio against ``pyproj.Geod.inv`` and the numpy haversine measured in the same run.

- ``core: distance, uncertainty, verdict``: :mod:`proximity.core` as the periodic sweep runs
  it: distance, combined uncertainty, classification and probability, reading device rows.
- ``core: ... + approach``: the same plus closing speed and time to breach, as run for the
  pairs of the devices a batch of fixes touched (every device here has a velocity).
- ``core apply``: filtering N fixes into device rows (ECEF, Kalman step), once per fix.
- ``numba geodesic on lat/lon``: :func:`numerics.geodesy.geodesic_distance_m` on gathered
  arrays (trigonometry per pair; what the core avoids with per-device rows).
- ``numpy haversine``, ``pyproj Geod.inv``, ``shapely distance (EPSG:31370)``: vectorised, on
  pre-gathered arrays (their gathers are not timed, which favours them); shapely gets points
  projected to Belgian Lambert 72 beforehand (projection time printed separately).
- ``python loop``: haversine with ``math``, one pair at a time (small sizes only).

Compile time of the core's kernels is measured first, on its own, with the on-disk cache off
(unless ``--use-cache``). Agreement with GeographicLib is checked for every implementation
against its stated accuracy; the exit code is 1 if any check fails.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

T = TypeVar("T")
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Mean Earth radius (IUGG) for the spherical baselines.
R_MEAN_M = 6_371_008.8
BELGIUM = (49.55, 51.45, 2.6, 6.3)  # lat min, lat max, lon min, lon max
BRUSSELS = (50.78, 50.92, 4.25, 4.48)
INCREMENTAL_FIXES = 1000


@dataclass
class Data:
    n_dev: int
    offender: IntArray
    victim: IntArray
    order_m: FloatArray
    warning_m: FloatArray
    lat: FloatArray
    lon: FloatArray
    acc: FloatArray
    t_fix: FloatArray
    speed: FloatArray
    now: float


def make_data(n_pairs: int, area: str, layout: str, max_age_s: float, seed: int) -> Data:
    """``n_pairs`` pairs with many-to-many sharing, devices numbered as the engine numbers them.

    ``layout="cases"``: like a real registry, most cases pair a new offender with a new
    victim; 10 % reuse a victim of an earlier case (one victim, several offenders) and 10 % an
    earlier offender (one offender, several victims). Devices are numbered in order of first
    appearance, so most pairs read neighbouring rows. ``layout="random"``: both ends of every
    pair drawn at random among 1.2 n devices, the worst case for memory access.
    """
    rng = np.random.default_rng(seed)
    if layout == "random":
        n_dev = max(2, int(1.2 * n_pairs))
        offender = rng.integers(0, n_dev, n_pairs)
        victim = (offender + rng.integers(1, n_dev, n_pairs)) % n_dev  # never the same device
    else:
        offender = np.empty(n_pairs, dtype=np.int64)
        victim = np.empty(n_pairs, dtype=np.int64)
        kind = rng.random(n_pairs)
        n_dev = 0
        for k in range(n_pairs):  # data preparation only, not timed
            reuse_victim = kind[k] < 0.1 and k > 0
            reuse_offender = 0.1 <= kind[k] < 0.2 and k > 0
            if reuse_offender:
                offender[k] = offender[rng.integers(0, k)]
            else:
                offender[k] = n_dev
                n_dev += 1
            if reuse_victim:
                victim[k] = victim[rng.integers(0, k)]
            else:
                victim[k] = n_dev
                n_dev += 1
    lat0, lat1, lon0, lon1 = BELGIUM if area == "belgium" else BRUSSELS
    order = rng.uniform(100.0, 2000.0, n_pairs)
    now = 1_795_428_000.0
    acc = rng.uniform(3.0, 50.0, n_dev)
    acc[rng.random(n_dev) < 0.05] = np.nan  # unknown accuracy
    # Fix ages as a sweep sees them: up to one reporting interval, and 2 % of devices silent
    # for up to 10 minutes (their uncertainty then spans kilometres).
    age = rng.uniform(0.0, max_age_s, n_dev)
    silent = rng.random(n_dev) < 0.02
    age[silent] = rng.uniform(0.0, 600.0, int(silent.sum()))
    return Data(
        n_dev=n_dev,
        offender=offender.astype(np.int64),
        victim=victim.astype(np.int64),
        order_m=order,
        warning_m=2.0 * order,
        lat=rng.uniform(lat0, lat1, n_dev),
        lon=rng.uniform(lon0, lon1, n_dev),
        acc=acc,
        t_fix=now - age,
        speed=np.where(rng.random(n_dev) < 0.5, 3.0, 40.0),
        now=now,
    )


def haversine_numpy(
    lat1: FloatArray, lon1: FloatArray, lat2: FloatArray, lon2: FloatArray
) -> FloatArray:
    p1 = np.radians(lat1)
    p2 = np.radians(lat2)
    dp = p2 - p1
    dl = np.radians(lon2 - lon1)
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2.0 * R_MEAN_M * np.arcsin(np.sqrt(a))


def haversine_loop(
    lat1: list[float], lon1: list[float], lat2: list[float], lon2: list[float]
) -> list[float]:
    out = []
    for a1, b1, a2, b2 in zip(lat1, lon1, lat2, lon2, strict=True):
        p1 = math.radians(a1)
        p2 = math.radians(a2)
        a = (
            math.sin((p2 - p1) / 2) ** 2
            + math.cos(p1) * math.cos(p2) * math.sin(math.radians(b2 - b1) / 2) ** 2
        )
        out.append(2.0 * R_MEAN_M * math.asin(math.sqrt(a)))
    return out


def timed(fn: Callable[[], T], repeat: int) -> tuple[float, T]:
    """Median seconds of ``repeat`` calls (after one untimed warm call) and the last result.

    The median, not the best: on a shared machine the best run flatters whichever
    implementation happened to run in a quiet moment."""
    result = fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def timed_rounds(
    fns: dict[str, Callable[[], object]], repeat: int
) -> tuple[dict[str, float], dict[str, object]]:
    """Median seconds of each function over ``repeat`` rounds, and each function's last result.

    Every round runs each function twice and times the second call: the rounds interleave
    the implementations, so a burst of load from elsewhere on a shared machine hits all of
    them alike instead of skewing one ratio, and the untimed call before each timed one
    leaves that implementation's data as warm in the caches as a back-to-back loop would."""
    results: dict[str, object] = {}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            fn()
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}, results


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import numba
    import pyproj
    import shapely

    return (
        f"{cpu}; {os.cpu_count()} logical CPUs; Python {platform.python_version()},"
        f" numpy {np.__version__}, numba {numba.__version__}, pyproj {pyproj.__version__},"
        f" shapely {shapely.__version__}; single-threaded"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="scripts/bench pairs",
        description="Benchmark the proximity core's pair evaluation against numpy haversine, "
        "pyproj Geod.inv, shapely and a Python loop, with agreement checks.",
    )
    ap.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[1_000, 10_000, 100_000, 1_000_000],
        help="numbers of pairs (default: 1000 10000 100000 1000000)",
    )
    ap.add_argument(
        "--repeat", type=int, default=11, help="timed repetitions per case (median; default 11)"
    )
    ap.add_argument(
        "--area",
        choices=["belgium", "city"],
        default="belgium",
        help="where devices are placed (default: belgium)",
    )
    ap.add_argument(
        "--python-max",
        type=int,
        default=10_000,
        help="largest size for the plain Python loop (default: 10000)",
    )
    ap.add_argument(
        "--layout",
        choices=["cases", "random"],
        default="cases",
        help="how pairs share devices: as cases do (default) or at random (worst case)",
    )
    ap.add_argument(
        "--max-age",
        type=float,
        default=30.0,
        help="fix ages are uniform in [0, MAX_AGE] s (one reporting interval), plus 2 %% of"
        " devices silent for up to 600 s (default: 30)",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--use-cache",
        action="store_true",
        help="load compiled kernels from numba's cache (compile time then = load time)",
    )
    args = ap.parse_args(argv)
    if any(n < 2 for n in args.sizes) or args.repeat < 1:
        ap.error("sizes must be >= 2 and --repeat >= 1")
    if not args.use_cache:
        os.environ["PROXIMITY_NUMBA_CACHE"] = "0"  # before the kernels are imported

    from numerics.geodesy import geodesic_distance_m
    from proximity.core import warm_up

    print(f"machine: {machine()}")
    t0 = time.perf_counter()
    compile_s = warm_up()
    t_geo = time.perf_counter()
    geodesic_distance_m([50.0], [4.0], [50.1], [4.1])
    compile_geo_s = time.perf_counter() - t_geo
    cache = "cache on" if args.use_cache else "cache off"
    print(
        f"compile ({cache}): core kernels {compile_s:.2f} s, geodesic_distance_m kernel"
        f" {compile_geo_s:.2f} s (total {time.perf_counter() - t0:.2f} s); excluded below\n"
    )

    failures: list[str] = []
    for n in args.sizes:
        failures += run_size(n, args)
    if failures:
        print("AGREEMENT CHECKS FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("agreement: every implementation within its stated accuracy of GeographicLib")
    return 0


HEADER = (
    f"{'pairs':>9}  {'implementation':<38} {'ms/batch':>10} {'pairs/s':>12}"
    f" {'vs Geod':>9} {'vs haversine':>13}"
)


def run_size(n: int, args: Any) -> list[str]:
    """Benchmark one size; print its table; return the failed agreement checks."""
    import shapely
    from pyproj import Geod, Transformer

    from numerics.geodesy import geodesic_distance_m
    from proximity.core import PairEvaluation, ProximityCore
    from proximity.pairs import PairTable

    geod = Geod(ellps="WGS84")
    to_lambert = Transformer.from_crs("EPSG:4326", "EPSG:31370", always_xy=True)
    failures: list[str] = []

    data = make_data(n, args.area, args.layout, args.max_age, args.seed + n)
    repeat = args.repeat if n < 1_000_000 else max(3, args.repeat // 2)
    table = PairTable.from_arrays(
        offender=data.offender,
        victim=data.victim,
        case=np.zeros(n, dtype=np.int64),
        order_m=data.order_m,
        warning_m=data.warning_m,
        margin_m=np.maximum(0.1 * data.order_m, 25.0),
        n_slots=data.n_dev,
        case_ids=("bench",),
    )
    core = ProximityCore(data.n_dev, table, data.speed)
    slots = np.arange(data.n_dev, dtype=np.int64)
    # A previous fix 5 s earlier, about 10 m away, so that every device has a velocity and the
    # closing-speed path is measured too.
    rng = np.random.default_rng(n + 1)
    core.apply(
        slots,
        data.lat + rng.normal(0.0, 1e-4, data.n_dev),
        data.lon + rng.normal(0.0, 1e-4, data.n_dev),
        data.t_fix - 5.0,
        data.acc,
        data.now - 5.0,
    )
    t_apply, _ = timed(
        lambda: core.apply(slots, data.lat, data.lon, data.t_fix, data.acc, data.now), 1
    )
    idx = np.arange(n, dtype=np.int64)
    out_sweep = PairEvaluation.allocate(n)  # the engine keeps one such buffer
    out_full = PairEvaluation.allocate(n)
    lat1 = data.lat[data.offender]
    lon1 = data.lon[data.offender]
    lat2 = data.lat[data.victim]
    lon2 = data.lon[data.victim]
    t_proj0 = time.perf_counter()
    x1, y1 = to_lambert.transform(lon1, lat1)
    x2, y2 = to_lambert.transform(lon2, lat2)
    pa = shapely.points(x1, y1)
    pb = shapely.points(x2, y2)
    t_proj = time.perf_counter() - t_proj0
    times, results = timed_rounds(
        {
            "sweep": lambda: core.evaluate(idx, data.now, out_sweep, approach=False),
            "core": lambda: core.evaluate(idx, data.now, out_full),
            "geod": lambda: geod.inv(lon1, lat1, lon2, lat2)[2],
            "hav": lambda: haversine_numpy(lat1, lon1, lat2, lon2),
            "nb": lambda: geodesic_distance_m(lat1, lon1, lat2, lon2),
            "shp": lambda: shapely.distance(pa, pb),
        },
        repeat,
    )
    t_sweep, t_core, t_geo, t_hav, t_nb, t_shp = (
        times[k] for k in ("sweep", "core", "geod", "hav", "nb", "shp")
    )
    ev = results["core"]
    assert isinstance(ev, PairEvaluation)
    ref = np.asarray(results["geod"])
    d_hav, d_nb, d_shp = results["hav"], results["nb"], results["shp"]

    rows: list[tuple[str, float, str]] = [
        ("core: distance, uncertainty, verdict", t_sweep, "+ probability (a sweep)"),
        ("core: ... + approach", t_core, "+ closing speed, time to breach"),
        ("numba geodesic on lat/lon", t_nb, ""),
        ("numpy haversine", t_hav, ""),
        ("pyproj Geod.inv", t_geo, ""),
        ("shapely distance (EPSG:31370)", t_shp, f"+ {t_proj * 1e3:.1f} ms projection"),
    ]
    if n <= args.python_max:
        l1, o1, l2, o2 = (a.tolist() for a in (lat1, lon1, lat2, lon2))
        t_py, d_py = timed(lambda: haversine_loop(l1, o1, l2, o2), max(1, repeat // 3))
        rows.append(("python loop (haversine)", t_py, ""))
        _check(
            failures,
            n,
            "python loop vs numpy haversine",
            np.abs(np.asarray(d_py) - np.asarray(d_hav)).max(),
            1e-6,
            "m",
        )
    rows.append(("core apply (per fix, not per pair)", t_apply, f"{data.n_dev} fixes"))

    print(HEADER)
    for name, t, note in rows:
        rate = n / t if "apply" not in name else data.n_dev / t
        print(
            f"{n:>9}  {name:<38} {t * 1e3:>10.3f} {rate:>12.3g} {t_geo / t:>8.1f}x"
            f" {t_hav / t:>12.2f}x  {note}"
        )

    # Agreement with GeographicLib, each against its own stated accuracy. The core measures
    # between its filtered positions (each device's Kalman estimate), not the raw fixes: its
    # reference is GeographicLib between those positions, brought back to latitude/longitude.
    ecef_to_geo = Transformer.from_crs("EPSG:4978", "EPSG:4979", always_xy=True)
    f_lon, f_lat, _ = ecef_to_geo.transform(core.rows[:, 0], core.rows[:, 1], core.rows[:, 2])
    p_ = core.pairs
    _, _, core_ref = geod.inv(
        f_lon[p_.offender], f_lat[p_.offender], f_lon[p_.victim], f_lat[p_.victim]
    )
    short = core_ref <= 20_000
    d_core = ev.distance_m
    _check(
        failures,
        n,
        "core, <= 20 km (1 cm)",
        np.abs(d_core - core_ref)[short].max(initial=0.0),
        0.01,
        "m",
    )
    _check(
        failures,
        n,
        "core, beyond (0.01 %)",
        (np.abs(d_core - core_ref) / core_ref)[~short].max(initial=0.0),
        1e-4,
        "",
    )
    _check(
        failures,
        n,
        "numba geodesic on lat/lon (1 mm)",
        np.abs(np.asarray(d_nb) - ref).max(),
        1e-3,
        "m",
    )
    _check(
        failures,
        n,
        "numpy haversine (sphere: 0.6 %)",
        (np.abs(np.asarray(d_hav) - ref) / ref).max(),
        6e-3,
        "",
    )
    _check(
        failures,
        n,
        "shapely on Lambert 72 (0.1 %)",
        (np.abs(np.asarray(d_shp) - ref) / ref).max(),
        1e-3,
        "",
    )
    under = (ref - np.asarray(d_hav)) / ref
    inside = (ev.classification >= 3).sum()
    print(
        f"           haversine bias: up to {under.max() * 100:.3f} % short of the geodesic;"
        f" core verdicts: {inside} possible/certain breach(es),"
        f" {np.isfinite(ev.time_to_breach_s).sum()} with a predicted time to breach"
    )

    if n >= 10_000:
        rng = np.random.default_rng(n)
        moved = rng.choice(data.n_dev, INCREMENTAL_FIXES, replace=False).astype(np.int64)
        mlat = data.lat[moved] + rng.normal(0, 1e-4, moved.size)
        mlon = data.lon[moved] + rng.normal(0, 1e-4, moved.size)
        step = [0.0]

        macc = data.acc[moved]

        def incremental() -> int:
            step[0] += 1.0
            t = data.now + step[0]
            core.apply(moved, mlat, mlon, np.full(moved.size, t), macc, t)
            touched = core.pairs_of(moved)
            core.evaluate(touched, t, out_full)
            return int(touched.size)

        t_inc, touched = timed(incremental, repeat)
        print(
            f"           incremental: a batch of {INCREMENTAL_FIXES} fixes touches"
            f" {touched} of {n} pairs; apply + gather + evaluate {t_inc * 1e3:.3f} ms"
        )
    print()

    return failures


def _check(failures: list[str], n: int, what: str, value: float, limit: float, unit: str) -> None:
    ok = value <= limit
    shown = f"{value:.3g} {unit}".strip() if unit else f"{value:.3g}"
    print(f"           check {what}: max error {shown} {'ok' if ok else 'FAIL'}")
    if not ok:
        failures.append(f"{n} pairs: {what}: {shown} > {limit:g}")


if __name__ == "__main__":
    sys.exit(main())
