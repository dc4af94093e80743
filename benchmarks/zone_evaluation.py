"""Benchmark: zone containment and signed distance against shapely, with agreement checks.

Data: N cases spread over Belgium, each with one exclusion polygon of 20-60 vertices and
200 m to 2 km across (a random star shape), and one offender point per case, placed in a
box three times the polygon's size around it (about a quarter of the points inside).

* Per case: every point against its own case's polygon. Ours is
  :meth:`geofence.compiled.ZoneSet.evaluate` from (lat, lon) degrees, including the
  projection into each zone's frame and the uncertainty classification, with the warning
  band's bounding-box prefilter (100 m band) and without it (every distance exact); and
  :meth:`~geofence.compiled.ZoneSet.evaluate_xyz` from ECEF positions, as the engine calls
  it (the proximity core keeps every device's ECEF position). The baseline is
  ``shapely.contains_xy`` plus ``shapely.distance`` to the boundary, on the same polygons
  already projected into the same frames, points projected outside the timing, with and
  without ``shapely.prepare``; the ratio is against the faster of the two.
* All against all: every point against every zone through an index: ours
  (:class:`geofence.index.ZoneIndex`, a grid, exact test in the zone's frame) against
  ``shapely.STRtree.query(points, predicate="within")`` on the (lon, lat) polygons. Index
  builds are timed separately.

Agreement: containment must match shapely for every point farther than 1 mm from a boundary
(a zone's edges are straight in its metric frame and in degrees for the STRtree, which
differ by less than that); exact signed distances within 1 cm of shapely's; prefiltered
ones never above the exact distance.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time
from typing import Any, cast

import numpy as np

from benchmarks.pair_evaluation import machine, timed, timed_rounds

BELGIUM = (49.5, 51.5, 2.55, 6.4)  # lat_min, lat_max, lon_min, lon_max
M_PER_DEG = 111_250.0


def make_polygons(n: int, seed: int) -> tuple[list[Any], np.ndarray, np.ndarray, np.ndarray]:
    """``n`` star polygons in (lon, lat); their centres (lat, lon) and half-sizes (m)."""
    import shapely

    rng = np.random.default_rng(seed)
    lat0 = rng.uniform(BELGIUM[0], BELGIUM[1], n)
    lon0 = rng.uniform(BELGIUM[2], BELGIUM[3], n)
    half = rng.uniform(100.0, 1000.0, n)
    nv = rng.integers(20, 61, n)
    polys = []
    for i in range(n):
        a = np.sort(rng.uniform(0.0, 2.0 * math.pi, nv[i]))
        r = rng.uniform(0.5, 1.0, nv[i]) * half[i]
        lon = lon0[i] + r * np.cos(a) / (M_PER_DEG * math.cos(math.radians(lat0[i])))
        lat = lat0[i] + r * np.sin(a) / M_PER_DEG
        polys.append(shapely.Polygon(np.column_stack([lon, lat])))
    return polys, lat0, lon0, half


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="scripts/bench zones",
        description="Benchmark zone containment and signed distance (geofence kernels) against "
        "shapely.contains_xy, shapely.distance and shapely.STRtree, with agreement checks.",
    )
    ap.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[10_000, 100_000],
        help="numbers of points (and cases) per case (default: 10000 100000)",
    )
    ap.add_argument(
        "--index-size",
        type=int,
        default=10_000,
        help="points and zones for the all-against-all index run (default: 10000)",
    )
    ap.add_argument(
        "--repeat", type=int, default=7, help="timed rounds, median reported (default: 7)"
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--use-cache",
        action="store_true",
        help="load compiled kernels from numba's cache (compile time = load time)",
    )
    args = ap.parse_args(argv)
    if min([*args.sizes, args.index_size]) < 1 or args.repeat < 1:
        ap.error("sizes must be >= 1 and --repeat >= 1")
    if not args.use_cache:
        os.environ["PROXIMITY_NUMBA_CACHE"] = "0"  # before the kernels are imported
    from geofence.compiled import warm_up

    print(f"machine: {machine()}")
    print(f"compile: zone kernels {warm_up():.2f} s (excluded below)\n")
    failures: list[str] = []
    print(f"{'points':>8}  {'implementation':<58} {'ms':>9} {'points/s':>12} {'vs shapely':>11}")
    for n in args.sizes:
        failures += per_case(n, args)
    failures += all_against_all(args.index_size, args)
    if failures:
        print("AGREEMENT CHECKS FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("agreement: containment and distances match shapely (see the module docstring)")
    return 0


def _row(n: int, name: str, seconds: float, base: float) -> None:
    print(
        f"{n:>8}  {name:<58} {seconds * 1e3:>9.2f} {n / seconds:>12,.0f} {base / seconds:>10.1f}x"
    )


def per_case(n: int, args: Any) -> list[str]:
    import shapely

    from geofence import kernels as k
    from geofence.compiled import ZoneEvaluation, ZoneSet, ecef
    from geofence.model import Zone, ZoneKind

    polys, lat0, lon0, half = make_polygons(n, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    lat = lat0 + rng.uniform(-1.5, 1.5, n) * half / M_PER_DEG
    lon = lon0 + rng.uniform(-1.5, 1.5, n) * half / (M_PER_DEG * np.cos(np.radians(lat0)))
    r68 = rng.uniform(3.0, 30.0, n)
    t0 = time.perf_counter()
    zs = ZoneSet.compile([Zone("z", ZoneKind.EXCLUSION, p, warning_m=100.0) for p in polys])
    compile_s = time.perf_counter() - t0
    exact_frame = zs.frame.copy()
    exact_frame[:, k.WARN] = 1e12  # WARN: a band so wide that the prefilter never decides
    zs_exact = dataclasses.replace(zs, frame=exact_frame)
    idx = np.arange(n, dtype=np.int64)

    # shapely's inputs: the same polygons in the same frames, points already projected.
    local = [zs.local_geometry(i) for i in range(n)]
    geoms = np.empty(n, dtype=object)
    geoms[:] = local
    boundaries = shapely.boundary(geoms)
    f = zs.frame
    d = ecef(lon, lat) - f[:, [k.OX, k.OY, k.OZ]]
    x = f[:, k.EX] * d[:, 0] + f[:, k.EY] * d[:, 1]
    y = f[:, k.NX] * d[:, 0] + f[:, k.NY] * d[:, 1] + f[:, k.NZ] * d[:, 2]
    points = shapely.points(x, y)
    xyz = np.empty((n, 3))
    k.ecef_rows(lat, lon, xyz)
    prepared_geoms = np.array([shapely.Polygon(g) for g in local], dtype=object)
    t0 = time.perf_counter()
    shapely.prepare(prepared_geoms)
    prepare_s = time.perf_counter() - t0

    def shapely_plain() -> tuple[Any, Any]:
        return shapely.contains_xy(geoms, x, y), shapely.distance(boundaries, points)

    def shapely_prepared() -> tuple[Any, Any]:
        return shapely.contains_xy(prepared_geoms, x, y), shapely.distance(boundaries, points)

    times, res = timed_rounds(
        {
            "ours": lambda: zs.evaluate(lat, lon, r68, idx, idx),
            "ours_exact": lambda: zs_exact.evaluate(lat, lon, r68, idx, idx),
            "ours_ecef": lambda: zs_exact.evaluate_xyz(xyz, r68, idx, idx),
            "ours_ecef_pre": lambda: zs.evaluate_xyz(xyz, r68, idx, idx),
            "shapely": shapely_plain,
            "shapely_prepared": shapely_prepared,
        },
        args.repeat,
    )
    base = min(times["shapely"], times["shapely_prepared"])
    _row(n, "shapely.contains_xy + shapely.distance", times["shapely"], base)
    _row(n, "  same, polygons prepared (prepare not timed)", times["shapely_prepared"], base)
    _row(n, "geofence, exact distances, from (lat, lon)", times["ours_exact"], base)
    _row(n, "geofence, exact distances, from ECEF (as the engine)", times["ours_ecef"], base)
    _row(n, "geofence, 100 m band prefilter, from (lat, lon)", times["ours"], base)
    _row(
        n, "geofence, 100 m band prefilter, from ECEF (as the engine)", times["ours_ecef_pre"], base
    )
    print(
        f"{'':>8}  (compile {n} zones with pyproj: {compile_s * 1e3:.0f} ms;"
        f" shapely.prepare: {prepare_s * 1e3:.0f} ms)"
    )

    failures = []
    inside, dist = cast(tuple[np.ndarray, np.ndarray], res["shapely"])
    exact = np.where(inside, -dist, dist)
    ours_exact = cast(ZoneEvaluation, res["ours_exact"]).signed_m
    ours = cast(ZoneEvaluation, res["ours"]).signed_m
    clear = dist > 1e-3
    bad = int(np.sum((ours_exact < 0)[clear] != inside[clear]))
    if bad:
        failures.append(f"{n}: containment differs from shapely for {bad} points")
    err = float(np.max(np.abs(ours_exact - exact)))
    if err > 0.01:
        failures.append(f"{n}: exact signed distance differs from shapely by {err:.4f} m")
    if np.any(ours > exact + 1e-6):
        failures.append(f"{n}: a prefiltered distance exceeds the exact one")
    cut = float(np.mean(np.abs(ours - exact) > 1e-6))
    print(
        f"{'':>8}  agreement: containment {n - bad}/{n}, max |signed distance - shapely| "
        f"{err * 1e3:.3f} mm; prefilter skipped {cut:.0%} of the points\n"
    )
    return failures


def all_against_all(n: int, args: Any) -> list[str]:
    import shapely

    from geofence.compiled import ZoneSet
    from geofence.index import ZoneIndex
    from geofence.model import Zone, ZoneKind

    polys, lat0, lon0, half = make_polygons(n, args.seed + 2)
    rng = np.random.default_rng(args.seed + 3)
    lat = lat0 + rng.uniform(-1.5, 1.5, n) * half / M_PER_DEG
    lon = lon0 + rng.uniform(-1.5, 1.5, n) * half / (M_PER_DEG * np.cos(np.radians(lat0)))
    zs = ZoneSet.compile([Zone("z", ZoneKind.EXCLUSION, p) for p in polys])
    build_ours, index = timed(lambda: ZoneIndex(zs, 0.0), 3)
    build_tree, tree = timed(lambda: shapely.STRtree(polys), 3)
    pts = shapely.points(lon, lat)
    times, res = timed_rounds(
        {
            "ours": lambda: index.query(lat, lon),
            "strtree": lambda: tree.query(pts, predicate="within"),
        },
        args.repeat,
    )
    print(
        f"all points against all {n} zones, through an index"
        f" (builds: grid {build_ours * 1e3:.1f} ms, STRtree {build_tree * 1e3:.1f} ms)"
    )
    _row(n, 'shapely.STRtree.query(predicate="within")', times["strtree"], times["strtree"])
    _row(n, "geofence ZoneIndex.query (grid + kernel)", times["ours"], times["strtree"])
    ours_pairs, _ = cast(tuple[np.ndarray, np.ndarray], res["ours"])
    ref = cast(np.ndarray, res["strtree"])
    a = set(zip(ours_pairs[0].tolist(), ours_pairs[1].tolist(), strict=True))
    b = set(zip(ref[0].tolist(), ref[1].tolist(), strict=True))
    differ = a ^ b
    failures = []
    if differ:
        # Allowed only within a millimetre of a boundary (edges straight in different spaces).
        p = np.array([q for q, _ in differ])
        z = np.array([w for _, w in differ])
        s = zs.evaluate(lat, lon, np.full(n, 1.0), p, z).signed_m
        if np.any(np.abs(s) > 1e-3):
            failures.append(f"index: {len(differ)} (point, zone) pairs differ from STRtree")
    print(
        f"{'':>8}  agreement: {len(a)} (point, zone) hits, {len(differ)} differ from STRtree"
        " (all within 1 mm of a boundary)\n"
    )
    return failures


if __name__ == "__main__":
    raise SystemExit(main())
