"""GPS error models: what a phone or tag reports for a true position, sample by sample.

Every model works on whole arrays of samples (one device's report times), seeded, so a
scenario's observations are reproducible and cheap to make for hours of 1 s fixes:

- ``r68_m``: Gaussian noise whose 68 % radius is the stated accuracy; each fix reports that
  accuracy give or take 20 % (phones recompute it every fix);
- ``multipath``: urban multipath bursts, a constant reflection offset of 30-150 m held for
  2-10 s, started with probability ``multipath_rate`` per fix; the reported accuracy does
  not show it (this is what makes multipath hard);
- ``indoor``: time windows of indoor degradation, with the accuracy multiplied by 4-8 and the
  noise matching it, plus a slowly wandering bias of about the accuracy (a phone indoors
  reports large accuracy values and drifts);
- ``dropout_rate``: gaps (no report for 5-45 s) started with this probability per fix, and
  ``silent``: windows in which the device sends nothing at all (switched off, shielded);
- ``network_rate``: the share of fixes that are a phone's network fixes (cell or Wi-Fi), of
  300-1,000 m stated accuracy with an error to match, mixed with the GNSS ones as real
  phone histories are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from simulator.scenario import R68_PER_SIGMA

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: Multipath offsets (m) and burst lengths (s).
MULTIPATH_M = (30.0, 150.0)
MULTIPATH_S = (2, 10)
#: Indoor accuracy multiplier range.
INDOOR_FACTOR = (4.0, 8.0)
#: Dropout lengths, seconds: shorter than the engine's default grace (60 s), so gaps it must
#: ride out without a signal-lost alarm; longer silences are the silent-approach family's.
DROPOUT_S = (5.0, 45.0)
#: Stated accuracy of network (cell, Wi-Fi) fixes, metres (68 %).
NETWORK_M = (300.0, 1000.0)


@dataclass(frozen=True)
class ErrorModel:
    r68_m: float = 8.0
    multipath_rate: float = 0.0
    dropout_rate: float = 0.0
    #: (start, end) seconds of indoor degradation.
    indoor: tuple[tuple[float, float], ...] = ()
    #: (start, end) seconds in which the device sends nothing.
    silent: tuple[tuple[float, float], ...] = ()
    network_rate: float = 0.0
    notes: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        parts = [f"Gaussian, 68 % radius {self.r68_m:.0f} m"]
        if self.multipath_rate:
            parts.append(f"multipath bursts {self.multipath_rate:.3f}/fix")
        if self.indoor:
            parts.append("indoors " + ", ".join(f"{a:.0f}-{b:.0f} s" for a, b in self.indoor))
        if self.dropout_rate:
            parts.append(f"dropouts {self.dropout_rate:.3f}/fix")
        if self.silent:
            parts.append("silent " + ", ".join(f"{a:.0f}-{b:.0f} s" for a, b in self.silent))
        if self.network_rate:
            parts.append(f"network fixes {self.network_rate:.0%} of all")
        return "; ".join(parts)


@dataclass(frozen=True)
class Observed:
    """A device's reports: which samples are sent, their error (m east/north) and the
    accuracy they state."""

    sent: BoolArray
    de_m: FloatArray
    dn_m: FloatArray
    acc_m: FloatArray


def _in_windows(t: FloatArray, windows: tuple[tuple[float, float], ...]) -> BoolArray:
    inside = np.zeros(t.size, dtype=bool)
    for a, b in windows:
        inside |= (t >= a) & (t < b)
    return inside


def _bursts(
    rng: np.random.Generator, t: FloatArray, rate: float, lo: int, hi: int
) -> npt.NDArray[np.int64]:
    """Burst labels of the samples at times ``t``: 0 outside, k > 0 inside the k-th burst
    (starts ~ Bernoulli(rate) per sample; each lasts lo-hi seconds, so that a device that
    reports every 15 s sees a reflection in one fix, not for minutes)."""
    n = t.size
    label = np.zeros(n, dtype=np.int64)
    if rate <= 0 or n == 0:
        return label
    starts = np.flatnonzero(rng.random(n) < rate)
    lengths = rng.integers(lo, hi + 1, starts.size)
    for k, (s, m) in enumerate(zip(starts.tolist(), lengths.tolist(), strict=True), start=1):
        end = int(np.searchsorted(t, t[s] + m - 0.5))  # m seconds: m fixes at 1 s
        label[s : max(end, s + 1)] = k
    return label


def observe(model: ErrorModel, t: FloatArray, rng: np.random.Generator) -> Observed:
    """The reports of a device sampled at times ``t`` (seconds, increasing)."""
    n = t.size
    indoor = _in_windows(t, model.indoor)
    factor = np.where(indoor, rng.uniform(*INDOOR_FACTOR), 1.0)
    r68 = model.r68_m * factor
    acc = r68 * rng.uniform(0.8, 1.25, n)
    sigma = r68 / R68_PER_SIGMA
    de = rng.normal(0.0, 1.0, n) * sigma
    dn = rng.normal(0.0, 1.0, n) * sigma
    if indoor.any():
        # A wandering bias of about one accuracy radius (a random walk, reset outdoors).
        steps = rng.normal(0.0, 1.0, (2, n)) * sigma * 0.05
        de += np.where(indoor, np.clip(np.cumsum(steps[0]), -2 * sigma, 2 * sigma), 0.0)
        dn += np.where(indoor, np.clip(np.cumsum(steps[1]), -2 * sigma, 2 * sigma), 0.0)
    burst = _bursts(rng, t, model.multipath_rate, *MULTIPATH_S)
    if burst.any():
        k = int(burst.max())
        size = rng.uniform(*MULTIPATH_M, k + 1)
        angle = rng.uniform(0.0, 2 * np.pi, k + 1)
        on = burst > 0
        de[on] += (size * np.cos(angle))[burst[on]]
        dn[on] += (size * np.sin(angle))[burst[on]]
    if model.network_rate > 0:
        # A network fix replaces the GNSS one: its own accuracy, an error to match.
        net = rng.random(n) < model.network_rate
        r_net = rng.uniform(*NETWORK_M, n)
        acc = np.where(net, r_net, acc)
        z = rng.normal(0.0, 1.0, (2, n)) * (r_net / R68_PER_SIGMA)
        de = np.where(net, z[0], de)
        dn = np.where(net, z[1], dn)
    sent = ~_in_windows(t, model.silent)
    if model.dropout_rate > 0 and n > 1:
        # Dropouts are spans of time (a device that reports in bursts loses what falls in
        # the span, not a number of reports).
        spans = rng.uniform(*DROPOUT_S, n)
        # Dropouts neither overlap nor touch (a report is sent between two): no gap is
        # longer than DROPOUT_S.
        free = 0
        for s in np.flatnonzero(rng.random(n) < model.dropout_rate).tolist():
            if s > free:
                end = int(np.searchsorted(t, t[s] + spans[s]))
                sent[s:end] = False
                free = end
    return Observed(sent, de, dn, acc)
