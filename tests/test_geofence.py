"""Zones: validation, the local frame against PROJ and pyproj.Geod, and the kernels against
shapely as the oracle."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import Geod, Transformer

from geofence import kernels as k
from geofence.compiled import ZoneSet, frame_error_bound
from geofence.index import ZoneIndex
from geofence.model import Zone, ZoneKind, circle, feature_collection, parse_zones
from proximity.cases import parse_case_file
from proximity.errors import CaseFileError

GEOD = Geod(ellps="WGS84")
LAT0, LON0 = 50.8466, 4.3528  # Brussels
M_PER_DEG_LAT = 111_250.0


def star(lat0: float, lon0: float, radii_m: list[float], phase: float = 0.0) -> list[list[float]]:
    """A closed star-shaped ring around (lat0, lon0): one vertex per radius, evenly spread."""
    n = len(radii_m)
    ring = []
    for i, r in enumerate(radii_m):
        a = phase + 2.0 * math.pi * i / n
        lat = lat0 + r * math.sin(a) / M_PER_DEG_LAT
        lon = lon0 + r * math.cos(a) / (M_PER_DEG_LAT * math.cos(math.radians(lat0)))
        ring.append([lon, lat])
    ring.append(ring[0])
    return ring


def polygon_feature(rings: list[list[list[float]]], **props: Any) -> dict[str, Any]:
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": rings},
        "properties": {"kind": "exclusion", "label": "zone", **props},
    }


def compile_one(feature: dict[str, Any]) -> ZoneSet:
    zones, problems = parse_zones(feature_collection([feature]))
    assert not problems, problems
    return ZoneSet.compile(zones)


def random_points(
    rng: np.random.Generator, n: int, lat0: float, lon0: float, half_m: float
) -> tuple[np.ndarray, np.ndarray]:
    lat = lat0 + rng.uniform(-half_m, half_m, n) / M_PER_DEG_LAT
    lon = lon0 + rng.uniform(-half_m, half_m, n) / (M_PER_DEG_LAT * math.cos(math.radians(lat0)))
    return lat, lon


def oracle(zs: ZoneSet, z: int, lat: np.ndarray, lon: np.ndarray) -> tuple[Any, Any]:
    """shapely on the same projection (done by pyproj, not by the kernel)."""
    geom = zs.local_geometry(z)
    xy = zs.to_frame(z, lat, lon)
    inside = shapely.contains_xy(geom, xy[:, 0], xy[:, 1])
    dist = shapely.distance(geom.boundary, shapely.points(xy))
    return inside, dist


# -- the kernels against shapely ---------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    lat0=st.floats(-70.0, 70.0),
    lon0=st.floats(-179.0, 179.0),
    n_vertices=st.integers(6, 60),
    size_m=st.floats(100.0, 2000.0),
    multi=st.booleans(),
)
def test_containment_and_signed_distance_agree_with_shapely(
    seed: int, lat0: float, lon0: float, n_vertices: int, size_m: float, multi: bool
) -> None:
    rng = np.random.default_rng(seed)
    radii = list(rng.uniform(0.5, 1.0, n_vertices) * size_m)
    shell = star(lat0, lon0, radii, phase=float(rng.uniform(0, 1)))
    # A hole well inside the shell: star-shaped with radii below the shell's smallest.
    hole = star(lat0, lon0, list(rng.uniform(0.15, 0.35, 7) * size_m))
    polygons = [[shell, hole]]
    if multi:
        far = size_m * 3.0 / M_PER_DEG_LAT
        polygons.append([star(lat0 + far, lon0, list(rng.uniform(0.3, 0.6, 9) * size_m))])
    feature = {
        "type": "Feature",
        "geometry": {"type": "MultiPolygon", "coordinates": polygons},
        "properties": {"kind": "exclusion", "label": "zone", "warning_m": 1e4},
    }
    zs = compile_one(feature)
    n = 400
    lat, lon = random_points(rng, n, lat0, lon0, 2.5 * size_m)
    # With a 10 km warning band the prefilter never cuts a point short: exact everywhere.
    ev = zs.evaluate(lat, lon, np.full(n, 3.0), np.arange(n), np.zeros(n, np.int64))
    inside, dist = oracle(zs, 0, lat, lon)
    far_from_edge = dist > 1e-6
    assert np.array_equal((ev.signed_m < 0)[far_from_edge], inside[far_from_edge])
    assert np.max(np.abs(np.abs(ev.signed_m) - dist)) < 0.01


def test_prefilter_is_conservative() -> None:
    rng = np.random.default_rng(7)
    zs = compile_one(
        polygon_feature([star(LAT0, LON0, list(rng.uniform(300, 900, 40)))], warning_m=100)
    )
    n = 5000
    lat, lon = random_points(rng, n, LAT0, LON0, 5000)
    r68 = rng.uniform(2, 60, n)
    ev = zs.evaluate(lat, lon, r68, np.arange(n), np.zeros(n, np.int64))
    inside, dist = oracle(zs, 0, lat, lon)
    exact = np.where(inside, -dist, dist)
    cut = np.abs(ev.signed_m - exact) > 1e-6
    assert cut.any(), "the sample should reach beyond the prefilter"
    # Where the box decided, the figure is a lower bound and the verdict is still right.
    assert np.all(ev.signed_m[cut] <= exact[cut] + 1e-9)
    assert np.all(ev.classification[cut] == k.OUTSIDE)
    u = k.K99 / k.K68 * r68
    assert np.all(exact[cut] - u[cut] > 100.0)


def test_circle_distance_is_geodesic_distance_minus_radius() -> None:
    zs = compile_one(circle(LON0, LAT0, 250.0, kind="exclusion", label="school"))
    rng = np.random.default_rng(3)
    n = 2000
    lat, lon = random_points(rng, n, LAT0, LON0, 3000)
    ev = zs.evaluate(lat, lon, np.full(n, 5.0), np.arange(n), np.zeros(n, np.int64))
    _, _, d = GEOD.inv(np.full(n, LON0), np.full(n, LAT0), lon, lat)
    bound = frame_error_bound(d, d) + 1e-6
    assert np.all(np.abs(ev.signed_m - (d - 250.0)) <= bound)


def test_classification_thresholds_and_probability() -> None:
    zs = compile_one(circle(LON0, LAT0, 500.0, kind="exclusion", label="home", warning_m=300))
    # Points due north at chosen signed distances; r68 = K68 so sigma = 1 m and U = K99 m.
    signed = np.array([-10.0, -2.0, 2.0, 10.0, 300.0 + k.K99 - 0.5, 300.0 + k.K99 + 0.5, 5.0])
    lon_p, lat_p, _ = GEOD.fwd(
        np.full(signed.size, LON0),
        np.full(signed.size, LAT0),
        np.zeros(signed.size),
        500.0 + signed,
    )
    r68 = np.full(signed.size, k.K68)
    r68[-1] = np.nan  # no fix
    n = signed.size
    ev = zs.evaluate(lat_p, lon_p, r68, np.arange(n), np.zeros(n, np.int64))
    assert ev.classification.tolist() == [
        k.CERTAIN_INSIDE,
        k.POSSIBLY_INSIDE,
        k.POSSIBLY_INSIDE,
        k.WARNING,
        k.WARNING,
        k.OUTSIDE,
        k.UNKNOWN,
    ]
    assert ev.p_inside[0] == pytest.approx(1.0) and ev.p_inside[3] == pytest.approx(0.0)
    assert ev.p_inside[1] == pytest.approx(0.5 * math.erfc(-2.0 / math.sqrt(2)), abs=1e-6)
    assert math.isnan(ev.signed_m[-1])


# -- the local frame ----------------------------------------------------------------------------


@pytest.mark.parametrize(("lat0", "lon0"), [(LAT0, LON0), (-33.9, 18.4), (64.1, -21.9), (0, 179.9)])
def test_frame_is_projs_topocentric_conversion(lat0: float, lon0: float) -> None:
    zs = compile_one(polygon_feature([star(lat0, lon0, [900, 400, 700, 1200, 600])]))
    xmin, ymin, xmax, ymax = zs.zones[0].geometry.bounds
    proj = Transformer.from_pipeline(
        "+proj=pipeline +step +proj=cart +ellps=WGS84 +step +proj=topocentric +ellps=WGS84"
        f" +lat_0={0.5 * (ymin + ymax)!r} +lon_0={0.5 * (xmin + xmax)!r}"
    )
    coords = shapely.get_coordinates(zs.zones[0].geometry)
    e, n, _ = proj.transform(coords[:, 0], coords[:, 1], np.zeros(len(coords)))
    assert np.allclose(zs.vx, e, rtol=0, atol=1e-6)
    assert np.allclose(zs.vy, n, rtol=0, atol=1e-6)


def test_frame_error_bound_holds_against_geod() -> None:
    zs = compile_one(polygon_feature([star(LAT0, LON0, [1000, 800, 1200, 900])]))
    rng = np.random.default_rng(11)
    n = 20000
    # Pairs of points within 25 km of the zone's centre (the largest zone extent).
    lat1, lon1 = random_points(rng, n, LAT0, LON0, 17_000)
    lat2, lon2 = random_points(rng, n, LAT0, LON0, 17_000)
    a = zs.to_frame(0, lat1, lon1)
    b = zs.to_frame(0, lat2, lon2)
    plane = np.hypot(*(a - b).T)
    _, _, geod = GEOD.inv(lon1, lat1, lon2, lat2)
    c = zs.to_frame(0, np.array([LAT0]), np.array([LON0]))  # near the frame's origin
    s = np.maximum(np.hypot(*(a - c).T), np.hypot(*(b - c).T)) + 50.0
    err = np.abs(plane - geod)
    assert np.all(err <= frame_error_bound(geod, s) + 1e-6)
    assert err.max() > 0.1 * np.max(frame_error_bound(geod, s)), "the bound should be tight"


# -- validation ---------------------------------------------------------------------------------


def case_with(feature: dict[str, Any]) -> dict[str, Any]:
    return {
        "cases": [
            {
                "id": "BE-2026-0042",
                "offenders": ["tag-1"],
                "protected": ["phone-1"],
                "order": {"distance_m": 500},
                "zones": feature_collection([feature]),
            }
        ]
    }


SQUARE = [[4.35, 50.84], [4.36, 50.84], [4.36, 50.85], [4.35, 50.85], [4.35, 50.84]]


@pytest.mark.parametrize(
    ("coords", "message"),
    [
        (
            [[[4.35, 50.84], [4.36, 50.85], [4.36, 50.84], [4.35, 50.85], [4.35, 50.84]]],
            "invalid: Self-intersection",
        ),
        ([SQUARE[:-1]], "is not closed"),
        (
            [[[50.84, 4.35]] + [[p[1], 200.0] for p in SQUARE[1:-1]] + [[50.84, 4.35]]],
            "out of range",
        ),
        ([], "is empty"),
        ([[[4.35, 50.84], [4.36, 50.84], [4.35, 50.84]]], "at least 4"),
        ([[[4.35, 50.84], [4.36, "x"], [4.36, 50.85], [4.35, 50.84]]], "must hold numbers"),
        ([[[4.0, 50.0], [4.6, 50.0], [4.6, 50.5], [4.0, 50.0]]], "split it into smaller"),
        (
            [[[179.99, 0.0], [-179.99, 0.0], [-179.99, 0.01], [179.99, 0.0]]],
            "crosses the antimeridian",
        ),
    ],
)
def test_invalid_geometry_is_rejected_naming_the_zone(coords: Any, message: str) -> None:
    doc = case_with(polygon_feature(coords, label="victim's workplace"))
    with pytest.raises(CaseFileError) as info:
        parse_case_file(doc, "cases.json")
    (problem,) = info.value.problems
    assert problem.startswith(
        'cases[0] (BE-2026-0042): zone "victim\'s workplace" (zones.features[0]):'
    )
    assert message in problem


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"radius_m": None}, "needs 'properties.radius_m'"),
        ({"radius_m": -5}, "needs 'properties.radius_m'"),
        ({"kind": "inclusion", "warning_m": 100}, "applies to exclusion zones only"),
        ({"warning_m": "wide"}, "'properties.warning_m' must be metres"),
        ({"label": " "}, "'properties.label' must be a non-empty string"),
        ({"schedule": {"weekly": [{"start": "22:00", "end": "7"}]}}, "weekly[0].end"),
    ],
)
def test_bad_zone_properties_are_rejected(change: dict[str, Any], message: str) -> None:
    feature = circle(LON0, LAT0, 100, kind="exclusion", label="school")
    feature["properties"].update(change)
    with pytest.raises(CaseFileError) as info:
        parse_case_file(case_with(feature), "cases.json")
    assert any(message in p for p in info.value.problems), info.value.problems


def test_valid_zones_parse_with_their_properties() -> None:
    hole = star(LAT0, LON0, [100, 120, 90, 110])
    shell = star(LAT0, LON0, [400, 500, 450, 420, 480])
    feats = [
        polygon_feature([shell, hole], label="workplace", warning_m=250),
        circle(
            LON0,
            LAT0 + 0.05,
            60,
            kind="inclusion",
            label="offender's home",
            schedule={"weekly": [{"start": "22:00", "end": "06:00"}]},
        ),
    ]
    doc = case_with(feats[0])
    doc["cases"][0]["zones"]["features"].append(copy.deepcopy(feats[1]))
    doc["cases"][0]["zones"]["features"][1]["properties"]["colour"] = "red"
    parsed = parse_case_file(doc)
    assert any("ignored properties colour" in w for w in parsed.warnings)
    zones, problems = parse_zones(parsed.cases[0].zones)
    assert not problems
    work, home = zones
    assert isinstance(work, Zone) and work.kind == ZoneKind.EXCLUSION
    assert work.warning_m == 250 and len(work.geometry.interiors) == 1
    assert home.kind == ZoneKind.INCLUSION and home.is_circle and home.radius_m == 60
    assert home.schedule is not None and home.schedule.timezone == "Europe/Brussels"


def test_index_finds_every_zone_containing_a_point_like_strtree() -> None:
    rng = np.random.default_rng(5)
    features = []
    for i in range(300):
        lat0 = LAT0 + rng.uniform(-0.05, 0.05)
        lon0 = LON0 + rng.uniform(-0.08, 0.08)
        radii = list(rng.uniform(200, 900, int(rng.integers(6, 30))))
        if i % 5 == 0:
            features.append(
                circle(lon0, lat0, float(radii[0]), kind="exclusion", label=f"c{i}", warning_m=1e4)
            )
        else:
            # A 10 km warning band: the brute-force evaluation below is exact everywhere.
            features.append(
                polygon_feature([star(lat0, lon0, radii)], label=f"p{i}", warning_m=1e4)
            )
    zones, problems = parse_zones(feature_collection(features))
    assert not problems
    zs = ZoneSet.compile(zones)
    lat, lon = random_points(rng, 3000, LAT0, LON0, 7000)
    pairs, signed = ZoneIndex(zs).query(lat, lon)
    ev = zs.evaluate(
        lat,
        lon,
        np.ones(lat.size),
        np.repeat(np.arange(lat.size), len(zs)),
        np.tile(np.arange(len(zs)), lat.size),
    )
    inside = ev.signed_m.reshape(lat.size, len(zs)) <= 0  # brute force, every pair exact
    assert {(int(p), int(z)) for p, z in pairs.T} == set(zip(*np.nonzero(inside), strict=True))
    assert np.all(signed <= 0)
    assert len(pairs[0]) > 100, "the sample should hit many zones"
    # With a reach, points near (not only in) a zone are found, with their distances.
    near, d = ZoneIndex(zs, reach_m=150.0).query(lat, lon)
    brute = ev.signed_m.reshape(lat.size, len(zs))
    assert {(int(p), int(z)) for p, z in near.T} == set(
        zip(*np.nonzero(brute <= 150.0), strict=True)
    )
    assert np.allclose(d, brute[near[0], near[1]])
