from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from numerics.uncertainty import K68, K99, probability_within


def scipy_rice_cdf(nu: np.ndarray, sigma: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """The reference: scipy's Rice distribution (shape nu / sigma, scale sigma)."""
    return np.asarray(stats.rice.cdf(radius / sigma, nu / sigma), dtype=np.float64)


def test_radii_of_the_circular_gaussian() -> None:
    # P(r <= k sigma) = 1 - exp(-k^2 / 2) for a circular 2-D Gaussian.
    assert 1 - math.exp(-(K68**2) / 2) == pytest.approx(0.68)
    assert 1 - math.exp(-(K99**2) / 2) == pytest.approx(0.99)


def test_matches_scipy_rice_on_a_dense_grid() -> None:
    a = np.concatenate([np.linspace(0.0, 30.0, 61), [50.0, 100.0, 1000.0, 1e4]])
    b = np.linspace(0.05, 40.0, 200)
    aa, bb = (x.ravel() for x in np.meshgrid(a, b))
    # plus the boundary region of the large ratios, where the distribution is narrow
    near = np.repeat(a, 9), np.repeat(a, 9) + np.tile(np.linspace(-4, 4, 9), a.size)
    aa = np.concatenate([aa, near[0]])
    bb = np.concatenate([bb, np.maximum(near[1], 0.05)])
    for sigma in (1.0, 7.3, 250.0):
        got = probability_within(aa * sigma, sigma, bb * sigma)
        ref = scipy_rice_cdf(aa * sigma, np.full(aa.size, sigma), bb * sigma)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-9)


def test_edge_cases() -> None:
    assert probability_within(0.0, 0.0, 10.0)[0] == 1.0  # exact positions inside
    assert probability_within(11.0, 0.0, 10.0)[0] == 0.0  # exact positions outside
    assert np.isnan(probability_within(np.nan, 5.0, 10.0)[0])
    assert probability_within([], [], []).shape == (0,)
    with pytest.raises(ValueError, match="sigma_m must be >= 0"):
        probability_within(1.0, -1.0, 10.0)


distances = st.floats(0.0, 5000.0, allow_nan=False)
sigmas = st.floats(0.5, 500.0, allow_nan=False)
orders = st.floats(10.0, 2000.0, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(distances, distances, sigmas, orders)
def test_probability_is_monotone_in_distance(d1: float, d2: float, sigma: float, r: float) -> None:
    near, far = sorted((d1, d2))
    p_near, p_far = probability_within([near, far], sigma, r)
    assert 0.0 <= p_far <= p_near + 1e-12 <= 1.0 + 1e-12


@settings(max_examples=200, deadline=None)
@given(distances, sigmas, orders, orders)
def test_probability_is_monotone_in_the_order_distance(
    d: float, sigma: float, r1: float, r2: float
) -> None:
    small, large = sorted((r1, r2))
    p_small, p_large = probability_within(d, sigma, [small, large])
    assert p_small <= p_large + 1e-12
