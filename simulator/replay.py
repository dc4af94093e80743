"""Recorded tracks (GPX 1.1 / 1.0, or CSV) replayed as an offender's or a victim's device.

A CSV needs a header with a time column (``time``, ``timestamp``, ``tracked_at``, ``ts`` or
``datetime``: ISO 8601, or epoch seconds), ``lat``/``latitude``, ``lon``/``lng``/``longitude``,
and optionally ``acc``/``accuracy`` (metres, the 68 % radius; 0 or empty: unknown); ``,`` or
``;`` separated. A GPX file's track points (``trkpt`` with ``time``) are read in order.

:func:`add_replays` adds one case per :class:`ReplayPair` to a suite. The offender's recording
starts at the run's start; a victim's recording is shifted in time, and moved, so that at the
meeting moment (``meet`` of the way through his recording) she is where he is: a real
encounter by construction. Without a victim recording she stands at home at that point of
his route. The recorded fixes are published as recorded (their own GPS error is the noise),
and the ground truth is taken from the same recorded positions: an approximation, since the
true path of a recording is not known.
"""

from __future__ import annotations

import csv
import io
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from simulator.families import ORDER_M, WARNING_M, SimCase, SimDevice, Suite, pair_truth
from simulator.gnss import ErrorModel
from simulator.scenario import Track, _radii

FloatArray = npt.NDArray[np.float64]
TIME_KEYS = ("time", "timestamp", "tracked_at", "ts", "datetime")
LAT_KEYS = ("lat", "latitude")
LON_KEYS = ("lon", "lng", "longitude")
ACC_KEYS = ("acc", "accuracy", "acc_m", "hacc")


class TrackError(ValueError):
    """A recording that cannot be read (the message says which file and why)."""


@dataclass(frozen=True)
class Recording:
    name: str
    t: FloatArray  # epoch seconds, increasing
    lat: FloatArray
    lon: FloatArray
    acc: FloatArray  # NaN: unknown

    @property
    def duration_s(self) -> float:
        return float(self.t[-1] - self.t[0])


def _when(text: str) -> float:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    s = text.replace("Z", "+00:00").replace(" ", "T", 1)
    if "." in s:  # at most microseconds for fromisoformat
        head, _, frac = s.partition(".")
        digits = "".join(ch for ch in frac if ch.isdigit())
        rest = frac[len(digits) :]
        s = f"{head}.{digits[:6]}{rest}"
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _finish(name: str, rows: list[tuple[float, float, float, float]]) -> Recording:
    if len(rows) < 2:
        raise TrackError(f"{name}: fewer than two timed points")
    a = np.array(sorted(rows), dtype=np.float64)
    keep = np.r_[True, np.diff(a[:, 0]) > 0]  # one fix per time
    a = a[keep]
    bad = ~((np.abs(a[:, 1]) <= 90) & (np.abs(a[:, 2]) <= 180))
    if bad.any():
        raise TrackError(f"{name}: {int(bad.sum())} point(s) with latitude/longitude out of range")
    acc = np.where(a[:, 3] > 0, a[:, 3], np.nan)
    return Recording(name, a[:, 0], a[:, 1], a[:, 2], acc)


def read_track(path: Path) -> Recording:
    """Read a GPX or CSV recording (by its suffix)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise TrackError(f"{path}: {exc.strerror}") from exc
    if path.suffix.lower() == ".gpx":
        return _gpx(path.name, text)
    return _csv(path.name, text)


def _gpx(name: str, text: str) -> Recording:
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise TrackError(f"{name}: not valid XML ({exc})") from exc
    ns = root.tag.partition("}")[0] + "}" if root.tag.startswith("{") else ""
    rows = []
    for pt in root.iter(f"{ns}trkpt"):
        when = pt.find(f"{ns}time")
        if when is None or not (when.text or "").strip():
            continue
        try:
            rows.append(
                (_when(when.text or ""), float(pt.attrib["lat"]), float(pt.attrib["lon"]), 0.0)
            )
        except (KeyError, ValueError) as exc:
            raise TrackError(f"{name}: a track point has a bad lat, lon or time ({exc})") from exc
    if not rows:
        raise TrackError(f"{name}: no track points with a time (trkpt/time)")
    return _finish(name, rows)


def _column(header: list[str], keys: tuple[str, ...], name: str, what: str) -> int:
    low = [h.strip().lower() for h in header]
    for k in keys:
        if k in low:
            return low.index(k)
    if what == "accuracy":
        return -1
    raise TrackError(f"{name}: no {what} column (one of {', '.join(keys)}) in the header {header}")


def _csv(name: str, text: str) -> Recording:
    first = text.splitlines()[0] if text else ""
    delim = ";" if first.count(";") > first.count(",") else ","
    reader = csv.reader(io.StringIO(text), delimiter=delim)
    header = next(reader, None)
    if not header:
        raise TrackError(f"{name}: empty file")
    ti = _column(header, TIME_KEYS, name, "time")
    la = _column(header, LAT_KEYS, name, "latitude")
    lo = _column(header, LON_KEYS, name, "longitude")
    ac = _column(header, ACC_KEYS, name, "accuracy")
    rows = []
    for n, rec in enumerate(reader, start=2):
        if not rec:
            continue
        try:
            acc = float(rec[ac]) if ac >= 0 and rec[ac].strip() else 0.0
            rows.append((_when(rec[ti]), float(rec[la]), float(rec[lo]), acc))
        except (IndexError, ValueError) as exc:
            raise TrackError(f"{name}, line {n}: {exc}") from exc
    return _finish(name, rows)


@dataclass(frozen=True)
class ReplayPair:
    offender: Path
    victim: Path | None = None
    #: Where on his recording they meet, as a fraction of its duration.
    meet: float = 0.5


def _local(
    origin: tuple[float, float], lat: FloatArray, lon: FloatArray
) -> tuple[FloatArray, FloatArray]:
    m, n = _radii(origin[0])
    north = np.radians(lat - origin[0]) * m
    east = np.radians(lon - origin[1]) * n * math.cos(math.radians(origin[0]))
    return east, north


def add_replays(suite: Suite, pairs: list[ReplayPair], lead_s: float = 5.0) -> None:
    """Add a case per pair to ``suite`` (see the module docstring); extends its duration."""
    done = sum(c.family == "replay" for c in suite.cases)
    for k, rp in enumerate(pairs, start=done + 1):
        off = read_track(rp.offender)
        t_meet = off.t[0] + rp.meet * off.duration_s
        mlat = float(np.interp(t_meet, off.t, off.lat))
        mlon = float(np.interp(t_meet, off.t, off.lon))
        if rp.victim is not None:
            vic = read_track(rp.victim)
            v_meet = vic.t[0] + rp.meet * vic.duration_s
            dlat = mlat - float(np.interp(v_meet, vic.t, vic.lat))
            dlon = mlon - float(np.interp(v_meet, vic.t, vic.lon))
            vic = replace(vic, t=vic.t + (t_meet - v_meet), lat=vic.lat + dlat, lon=vic.lon + dlon)
        else:
            vic = Recording(
                "home",
                off.t[[0, -1]],
                np.array([mlat] * 2),
                np.array([mlon] * 2),
                np.full(2, np.nan),
            )
        start = suite.duration_s + lead_s if suite.cases else lead_s
        # The case lasts his recording; hers is cut to it.
        t0 = float(off.t[0])
        end = off.duration_s + start
        inside = (vic.t >= off.t[0]) & (vic.t <= off.t[-1])
        if rp.victim is not None and inside.sum() >= 2:
            vic = replace(
                vic, t=vic.t[inside], lat=vic.lat[inside], lon=vic.lon[inside], acc=vic.acc[inside]
            )
        origin = suite.origin
        ids = []
        for role, rec in (("offender", off), ("victim", vic)):
            dev = f"{'tag' if role == 'offender' else 'phone'}-replay-{k:02d}"
            e, n = _local(origin, rec.lat, rec.lon)
            tt = rec.t - t0 + start
            track = Track(
                dev,
                origin,
                tt,
                e,
                n,
                float(np.nanmedian(rec.acc)) if np.isfinite(rec.acc).any() else 10.0,
                "recorded",
            )
            interval = float(np.median(np.diff(rec.t))) if rec.t.size > 2 else 60.0
            if rec.name == "home":
                interval = 1.0
            home = rec.name == "home"
            suite.devices[dev] = SimDevice(
                dev,
                role,
                track,
                ErrorModel(8.0 if home else 0.0),
                max(interval, 1.0),
                None,
                recorded=None if home else (tt, rec.lat, rec.lon, rec.acc),
            )
            ids.append(dev)
        case_id = f"EVAL-replay-{k:03d}"
        truth, dmin = pair_truth(
            case_id, suite.devices[ids[0]].track, suite.devices[ids[1]].track, start, end
        )
        suite.cases.append(
            SimCase(
                {
                    "id": case_id,
                    "offenders": [ids[0]],
                    "protected": [ids[1]],
                    "order": {"distance_m": ORDER_M, "warning_distance_m": WARNING_M},
                    "mobility": {"offenders": "driving", "protected": "driving"},
                    "summary": {"risk_notes": f"replay of {off.name} and {vic.name}"},
                },
                "replay",
                k - 1,
                ids[0],
                ids[1],
                start,
                end,
                truth,
                False,
                dmin,
            )
        )
        suite.duration_s = max(suite.duration_s, end)
