"""How uncertain a separation is, and how likely it is to be below the order distance.

The model, stated once:

- A fix's accuracy ``acc`` is the radius of 68 % confidence of a circular 2-D Gaussian (the
  convention of Android's ``Location.getAccuracy`` and of OwnTracks' ``acc``), so its per-axis
  standard deviation is ``acc / K68`` with ``K68 = sqrt(2 ln(1 / 0.32)) = 1.5096``. An
  accuracy of 0 or a missing one means *unknown*, never *perfect*: it is replaced by a
  configurable default (:data:`UNKNOWN_ACCURACY_M`).
- A fix ``t`` seconds old has moved at most ``t * top_speed`` since: its 68 % radius becomes
  ``acc + t * top_speed`` (the top speed is per device: :data:`MOBILITY_MPS`).
- The true separation vector of a pair is the observed one plus Gaussian noise with the two
  devices' variances added: ``sigma^2 = sigma_o^2 + sigma_v^2``. Its length then follows a
  Rice distribution with ``nu`` = the observed distance and that ``sigma``.
- The combined *uncertainty radius* shown to operators and used to classify is the 99 % radius
  of that noise, ``U = K99 * sigma`` with ``K99 = sqrt(2 ln 100) = 3.0349``.

Classification of a pair with distance ``d``: certain breach if ``d + U <= order``; possible
breach if ``d - U <= order``; warning band if ``d - U <= warning``; clear otherwise.
"""

from __future__ import annotations

import math
from enum import IntEnum
from typing import Final

import numpy as np
import numpy.typing as npt

from numerics.jit import inline, kernel, scalar

FloatArray = npt.NDArray[np.float64]

#: 68 % and 99 % radii of a circular 2-D Gaussian, in units of its per-axis sigma.
K68 = math.sqrt(2.0 * math.log(1.0 / 0.32))
K99 = math.sqrt(2.0 * math.log(100.0))

#: Accuracy assumed for a fix that does not state one (or states 0), in metres (68 %). A
#: phone outdoors reports 3-15 m; 50 m is what a degraded indoor fix often claims.
UNKNOWN_ACCURACY_M = 50.0

#: Plausible top speeds in m/s, per mobility profile. Driving: 144 km/h, above the Belgian
#: motorway limit of 120 km/h. Cycling: 43 km/h (e-bikes, downhill). Walking: 10.8 km/h, a run.
MOBILITY_MPS: dict[str, float] = {"walking": 3.0, "cycling": 12.0, "driving": 40.0}
DEFAULT_MOBILITY: Final = "driving"

#: Beyond this many sigmas from the boundary the probability is returned as 0 or 1; the error
#: is then at most P(outside) <= exp(-7^2 / 2) = 2.3e-11 (and P(inside) <= Phi(-7) = 1.3e-12).
_TAIL_SIGMAS = 7.0
#: Phi(-x) < 1e-19 beyond this: such terms are left out of the sums.
_NEGLIGIBLE_SIGMAS = 9.0
#: From this ratio order / sigma up, the circle is wide enough for 12-point Gauss-Hermite in y
#: (its outermost node is 5.5 sigma; maximum error 1e-10 against scipy over the grid of the
#: tests); below it, the Poisson-mixture series (exact to 2e-15, at most 214 terms there).
_WIDE_CIRCLE = 8.0
_GH_NODES = 12
_SERIES_TERMS = 512


class Classification(IntEnum):
    """The core's verdict on a pair, from worst to best is CERTAIN_BREACH ... CLEAR."""

    UNKNOWN = 0  # a device has no fix yet
    CLEAR = 1
    WARNING = 2
    POSSIBLE_BREACH = 3
    CERTAIN_BREACH = 4


def quadrature_nodes() -> tuple[FloatArray, FloatArray, FloatArray]:
    """Constants for :func:`rice_cdf`, computed once and passed to kernels: 12-point
    Gauss-Hermite nodes and weights for the standard normal density, and ``1 / j`` for the
    series (so that its terms need no division)."""
    xh, wh = np.polynomial.hermite.hermgauss(_GH_NODES)
    inv = np.zeros(_SERIES_TERMS)
    inv[1:] = 1.0 / np.arange(1, _SERIES_TERMS)
    return (
        np.ascontiguousarray(math.sqrt(2.0) * xh),
        np.ascontiguousarray(wh / math.sqrt(math.pi)),
        inv,
    )


@inline
def _phi_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x * 0.7071067811865476)


@inline
def rice_tail(nu: float, sigma: float, radius: float) -> float:
    """0 or 1 when the boundary is more than 7 sigma away (error below 2.3e-11), else -1:
    call :func:`rice_cdf`. Split off so that kernels decide most pairs without a call; it takes
    scalars only, because an inlined helper taking arrays costs reference counting per call."""
    if nu - radius > _TAIL_SIGMAS * sigma:
        return 0.0
    if radius - nu > _TAIL_SIGMAS * sigma:
        return 1.0
    return -1.0


@scalar
def rice_cdf(
    nu: float,
    sigma: float,
    radius: float,
    gh_y: FloatArray,
    gh_w: FloatArray,
    inv_int: FloatArray,
) -> float:
    """P(|v + n| <= radius) for |v| = ``nu`` and n ~ N(0, sigma^2 I) in 2-D: the CDF of the Rice
    distribution, i.e. ``1 - Q1(nu / sigma, radius / sigma)`` (Marcum Q).

    Two methods, by the ratio ``b = radius / sigma`` (``a = nu / sigma``):

    - ``b >= 8``, a circle wide against the noise: condition on the noise across the
      separation (y, in sigmas); the point is inside iff the noise along it lies within
      ``+-s(y) - a`` with ``s(y) = sqrt(b^2 - y^2)``, so ``P = E[Phi(s(Y) - a) - Phi(-s(Y) - a)]``,
      smooth over the normal's support: 12-point Gauss-Hermite, within 1e-10.
    - ``b < 8``: the squared separation is a non-central chi-square with 2 degrees of freedom,
      a Poisson(a^2 / 2) mixture of central ones, so ``P = sum_j Pois(j; a^2/2) P(Pois(b^2/2) >
      j)``; both Poisson sequences come by recurrence, without division. Within 2e-15; at most
      214 terms where it is used (a < b + 7 < 15), usually a few dozen.

    Beyond 7 sigmas from the boundary the result is 0 or 1 (error below 2.3e-11).
    Tested against ``scipy.stats.rice`` (``tests/test_uncertainty.py``).
    """
    if math.isnan(nu) or math.isnan(sigma):
        return math.nan
    if sigma <= 0.0:
        return 1.0 if nu <= radius else 0.0
    a = nu / sigma
    b = radius / sigma
    if a - b > _TAIL_SIGMAS:
        return 0.0
    if b - a > _TAIL_SIGMAS:
        return 1.0
    total = 0.0
    if b >= _WIDE_CIRCLE:
        for k in range(gh_y.size):
            y = gh_y[k]
            s = math.sqrt(b * b - y * y)  # >= 5.8 here: the far side rarely counts
            inside = _phi_cdf(s - a)
            if s + a < _NEGLIGIBLE_SIGMAS:
                inside -= _phi_cdf(-s - a)
            total += gh_w[k] * inside
    else:
        u = 0.5 * a * a
        v = 0.5 * b * b
        w = math.exp(-u)  # Pois(j; u), from j = 0
        pv = math.exp(-v)  # Pois(j; v)
        cdf_v = pv  # P(Pois(v) <= j)
        total = w * (1.0 - cdf_v)
        for j in range(1, inv_int.size):
            w *= u * inv_int[j]
            pv *= v * inv_int[j]
            cdf_v += pv
            tail = 1.0 - cdf_v
            total += w * tail
            if tail < 1e-17 or (j > u and w < 1e-17):
                break
    return min(max(total, 0.0), 1.0)


@kernel
def _rice_kernel(
    nu: FloatArray,
    sigma: FloatArray,
    radius: FloatArray,
    gh_y: FloatArray,
    gh_w: FloatArray,
    inv_int: FloatArray,
    out: FloatArray,
) -> None:
    for k in range(nu.size):
        p = rice_tail(nu[k], sigma[k], radius[k])
        if p < 0.0:
            p = rice_cdf(nu[k], sigma[k], radius[k], gh_y, gh_w, inv_int)
        out[k] = p


_NODES = quadrature_nodes()


def probability_within(
    distance_m: npt.ArrayLike, sigma_m: npt.ArrayLike, radius_m: npt.ArrayLike
) -> FloatArray:
    """Probability that the true separation is at most ``radius_m``, element-wise.

    Parameters
    ----------
    distance_m : array_like, shape (n,)
        Observed separations (the Rice distribution's ``nu``), metres.
    sigma_m : array_like, shape (n,)
        Per-axis standard deviation of the separation's noise, metres (0: exact).
    radius_m : array_like, shape (n,)
        The order distance, metres. Scalars broadcast.

    Examples
    --------
    >>> round(float(probability_within(0.0, 1.0, 1.0)[0]), 12)  # Rayleigh: 1 - exp(-1/2)
    0.393469340287
    >>> probability_within([10_000.0, 0.0], 5.0, 500.0)
    array([0., 1.])
    """
    arrays = np.broadcast_arrays(
        *(np.asarray(a, dtype=np.float64) for a in (distance_m, sigma_m, radius_m))
    )
    if arrays[0].ndim > 1:
        raise ValueError(f"probability_within takes 1-D arrays; got shape {arrays[0].shape}")
    nu, sigma, radius = (np.ascontiguousarray(np.atleast_1d(a)) for a in arrays)
    if np.any(sigma < 0):
        raise ValueError("sigma_m must be >= 0 (a standard deviation in metres)")
    out = np.empty(nu.shape, dtype=np.float64)
    _rice_kernel(nu, sigma, radius, *_NODES, out)
    return out
