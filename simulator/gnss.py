"""GPS error models: what a phone or tag reports for a true position, sample by sample.

Every model works on whole arrays of samples (one device's report times), seeded, so a
scenario's observations are reproducible and cheap to make for hours of 1 s fixes:

- ``r68_m``: Gaussian noise whose 68 % radius is the stated accuracy; each fix reports that
  accuracy give or take 20 % (phones recompute it every fix);
- ``multipath``: urban multipath bursts, a constant reflection offset of 30-150 m held for
  2-10 fixes, started with probability ``multipath_rate`` per fix; the reported accuracy does
  not show it (this is what makes multipath hard);
- ``indoor``: time windows of indoor degradation, with the accuracy multiplied by 4-8 and the
  noise matching it, plus a slowly wandering bias of about the accuracy (a phone indoors
  reports large accuracy values and drifts);
- ``dropout_rate``: gaps (no report for 5-45 s) started with this probability per fix, and
  ``silent``: windows in which the device sends nothing at all (switched off, shielded).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from simulator.scenario import R68_PER_SIGMA

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: Multipath offsets (m) and burst lengths (fixes).
MULTIPATH_M = (30.0, 150.0)
MULTIPATH_FIXES = (2, 10)
#: Indoor accuracy multiplier range.
INDOOR_FACTOR = (4.0, 8.0)
#: Dropout lengths, seconds: shorter than the engine's default grace (60 s), so gaps it must
#: ride out without a signal-lost alarm; longer silences are the silent-approach family's.
DROPOUT_S = (5.0, 45.0)


@dataclass(frozen=True)
class ErrorModel:
    r68_m: float = 8.0
    multipath_rate: float = 0.0
    dropout_rate: float = 0.0
    #: (start, end) seconds of indoor degradation.
    indoor: tuple[tuple[float, float], ...] = ()
    #: (start, end) seconds in which the device sends nothing.
    silent: tuple[tuple[float, float], ...] = ()
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
    rng: np.random.Generator, n: int, rate: float, lo: int, hi: int
) -> npt.NDArray[np.int64]:
    """Burst labels: 0 outside, k > 0 inside the k-th burst (starts ~ Bernoulli(rate))."""
    label = np.zeros(n, dtype=np.int64)
    if rate <= 0 or n == 0:
        return label
    starts = np.flatnonzero(rng.random(n) < rate)
    lengths = rng.integers(lo, hi + 1, starts.size)
    for k, (s, m) in enumerate(zip(starts.tolist(), lengths.tolist(), strict=True), start=1):
        label[s : s + m] = k
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
    burst = _bursts(rng, n, model.multipath_rate, *MULTIPATH_FIXES)
    if burst.any():
        k = int(burst.max())
        size = rng.uniform(*MULTIPATH_M, k + 1)
        angle = rng.uniform(0.0, 2 * np.pi, k + 1)
        on = burst > 0
        de[on] += (size * np.cos(angle))[burst[on]]
        dn[on] += (size * np.sin(angle))[burst[on]]
    sent = ~_in_windows(t, model.silent)
    if model.dropout_rate > 0 and n > 1:
        step = float(np.median(np.diff(t)))
        gaps = rng.uniform(*DROPOUT_S, n) / max(step, 1e-9)
        free = 0  # dropouts do not overlap: no gap is longer than DROPOUT_S
        for s in np.flatnonzero(rng.random(n) < model.dropout_rate).tolist():
            if s >= free:
                sent[s : s + int(gaps[s])] = False
                free = s + int(gaps[s]) + 1
    return Observed(sent, de, dn, acc)
