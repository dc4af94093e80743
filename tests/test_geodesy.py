from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numerics.geodesy import geodesic_distance_m
from tests.naive import GEOD, geod_distance_m

lats = st.floats(-90.0, 90.0, allow_nan=False)
lons = st.floats(-180.0, 180.0, allow_nan=False)


@pytest.mark.parametrize("lat_band", [(-90, -60), (-60, -20), (-20, 20), (20, 60), (60, 90)])
def test_short_diagonal_offsets_match_geographiclib_within_a_millimetre(
    lat_band: tuple[int, int],
) -> None:
    rng = np.random.default_rng(abs(lat_band[0]))
    n = 20_000
    lat1 = rng.uniform(*lat_band, n)
    lon1 = rng.uniform(-180, 180, n)
    dist = 10 ** rng.uniform(-1, np.log10(20_000), n)  # 10 cm to 20 km
    az = rng.uniform(0, 360, n)  # every direction, diagonals included
    lon2, lat2, _ = GEOD.fwd(lon1, lat1, az, dist)
    got = geodesic_distance_m(lat1, lon1, lat2, lon2)
    np.testing.assert_allclose(got, geod_distance_m(lat1, lon1, lat2, lon2), rtol=0, atol=1e-3)


def test_long_and_near_antipodal_distances_within_0_01_percent() -> None:
    rng = np.random.default_rng(3)
    n = 20_000
    lat1 = rng.uniform(-90, 90, n)
    lon1 = rng.uniform(-180, 180, n)
    far_lat = rng.uniform(-90, 90, n)
    far_lon = rng.uniform(-180, 180, n)
    anti_lat = np.clip(-lat1 + rng.uniform(-1, 1, n), -90, 90)
    anti_lon = lon1 + 180 + rng.uniform(-1, 1, n)
    for lat2, lon2 in ((far_lat, far_lon), (anti_lat, anti_lon)):
        ref = geod_distance_m(lat1, lon1, lat2, lon2)
        got = geodesic_distance_m(lat1, lon1, lat2, lon2)
        assert np.all(np.abs(got - ref) <= 1e-4 * ref + 1e-3)


def test_edge_cases() -> None:
    # Antimeridian, poles, coincident points, exactly antipodal, NaN.
    cases = [
        (0.0, 179.9, 0.0, -179.9),
        (89.999, 0.0, 89.999, 180.0),
        (-90.0, 0.0, -89.99, 77.0),
        (50.0, 4.0, 50.0, 4.0),
        (0.0, 0.0, 0.0, 180.0),
        (30.0, 10.0, -30.0, -170.0),
    ]
    lat1, lon1, lat2, lon2 = (np.array(c) for c in zip(*cases, strict=True))
    np.testing.assert_allclose(
        geodesic_distance_m(lat1, lon1, lat2, lon2),
        geod_distance_m(lat1, lon1, lat2, lon2),
        rtol=1e-9,
        atol=1e-3,
    )
    assert np.isnan(geodesic_distance_m([np.nan], [4.0], [50.0], [4.0])[0])
    assert geodesic_distance_m([], [], [], []).shape == (0,)


def test_rejects_two_dimensional_input_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="1-D"):
        geodesic_distance_m(np.zeros((2, 2)), 0.0, 0.0, 0.0)


@settings(max_examples=300, deadline=None)
@given(lats, lons, lats, lons)
def test_symmetric_and_zero_on_itself(lat1: float, lon1: float, lat2: float, lon2: float) -> None:
    ab = geodesic_distance_m(lat1, lon1, lat2, lon2)[0]
    ba = geodesic_distance_m(lat2, lon2, lat1, lon1)[0]
    assert ab == pytest.approx(ba, rel=1e-9, abs=1e-6)
    assert ab >= 0.0
    assert geodesic_distance_m(lat1, lon1, lat1, lon1)[0] == 0.0


@settings(max_examples=200, deadline=None)
@given(lats, lons, lats, lons, lats, lons)
def test_triangle_inequality(a: float, b: float, c: float, d: float, e: float, f: float) -> None:
    ab = geodesic_distance_m(a, b, c, d)[0]
    bc = geodesic_distance_m(c, d, e, f)[0]
    ac = geodesic_distance_m(a, b, e, f)[0]
    assert ac <= ab + bc + 1e-3


@settings(max_examples=400, deadline=None)
@given(
    st.floats(49.4, 51.6),
    st.floats(2.5, 6.5),
    st.floats(0.0, 360.0),
    st.floats(0.0, 20_000.0),
)
def test_dense_around_belgium_within_a_centimetre(
    lat: float, lon: float, azimuth: float, dist: float
) -> None:
    lon2, lat2, _ = GEOD.fwd(lon, lat, azimuth, dist)
    got = geodesic_distance_m(lat, lon, lat2, lon2)[0]
    assert abs(got - geod_distance_m(lat, lon, lat2, lon2)) <= 0.01


@settings(max_examples=400, deadline=None)
@given(lats, lons, lats, lons)
def test_anywhere_within_0_01_percent(lat1: float, lon1: float, lat2: float, lon2: float) -> None:
    ref = float(geod_distance_m(lat1, lon1, lat2, lon2))
    got = float(geodesic_distance_m(lat1, lon1, lat2, lon2)[0])
    assert abs(got - ref) <= 1e-4 * ref + 0.01
