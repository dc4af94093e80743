"""The evaluation report: one self-contained HTML file (plots embedded as PNG) next to the
JSON summary.

Plots: end-to-end latency distribution; detection delay per scenario type; false alarms (and
detection) against the confirmation setting when a sweep varied it, else false alarms per
scenario type; a map sketch of one example case per scenario type (true paths, the fixes
sent, the order circle, and where alarms were raised).
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from simulator.metrics import ALARM_LEVELS
from simulator.scenario import _radii

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from simulator.runs import RunResult

#: Alarm types drawn on the map sketch (where the offender was).
PAIR_TYPES = frozenset({"proximity", "approach", "probing"})
COLUMNS = (
    ("family", "scenario type"),
    ("cases", "cases"),
    ("pair_days", "pair-days"),
    ("breaches", "real breaches"),
    ("detection_rate", "detected"),
    ("detection_lower95", "... at least (95 %)"),
    ("delay_median_s", "delay median (s)"),
    ("delay_p90_s", "delay p90 (s)"),
    ("delay_p95_s", "delay p95 (s)"),
    ("delay_max_s", "delay max (s)"),
    ("delay_after_silence_median_s", "delay after silence (s)"),
    ("probes_detected", "probing detected"),
    ("silences_detected", "silences detected"),
    ("alarms_per_pair_day", "alarms / pair-day"),
    ("false_alarms", "false alarms"),
    ("false_approach", "of which approach"),
    ("false_alarms_per_pair_day", "false alarms / pair-day"),
    ("false_alarms_per_pair_day_upper95", "... at most (95 %)"),
    ("pre_alerts_per_pair_day", "pre-alerts / pair-day"),
    ("incidents_per_pair_day", "incidents / pair-day"),
    ("alarm_messages_per_pair_day", "alarm messages / pair-day"),
    ("notices_per_pair_day", "offender notices / pair-day"),
    ("priority_split", "incidents high/medium/low"),
    ("max_alarm_uncertainty_m", "largest uncertainty at alarm level (m)"),
    ("parallel_labelled", "labelled parallel"),
)


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _table(rows: list[dict[str, Any]], columns: tuple[tuple[str, str], ...]) -> str:
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in columns)
    body = []
    for r in rows:
        cells = []
        for k, _ in columns:
            v = r.get(k)
            cells.append(f"<td>{'' if v is None else html.escape(str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def latency_plot(runs: list[RunResult]) -> str:
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    for k, r in enumerate(runs, start=1):
        ms = np.array(r.latencies_s()) * 1000.0
        if ms.size:
            ax.hist(ms, bins=40, histtype="step", label=f"run {k} (n={ms.size})")
    ax.set_xlabel("fix published -> alarm received (ms)")
    ax.set_ylabel("alarm messages")
    ax.set_title("End-to-end latency")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "not measured (direct runs)", ha="center", transform=ax.transAxes)
    return _png(fig)


def delay_plot(run: RunResult) -> str:
    from simulator.metrics import CaseWindow, score

    windows = [
        CaseWindow(c.id, c.family, c.start_s, c.end_s, tuple(c.truth), c.parallel)
        for c in run.suite.cases
    ]
    fams, _ = score(windows, run.alarms())
    names = [f for f in fams if fams[f].delays_s or fams[f].delays_after_silence_s]
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    for i, f in enumerate(names):
        d = fams[f].delays_s
        ax.scatter(np.full(len(d), i) + np.linspace(-0.15, 0.15, len(d)), d, s=14)
        if d:
            ax.hlines(np.median(d), i - 0.3, i + 0.3, colors="k")
        ds = fams[f].delays_after_silence_s
        if ds:
            ax.scatter(np.full(len(ds), i), ds, marker="x", c="grey", s=18)
    ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    ax.set_yscale("symlog", linthresh=60.0)  # seconds, and the minutes after a silence
    ax.set_ylabel("seconds after the true crossing")
    ax.set_title("Detection delay per scenario type (line: median; x: after a silence)")
    return _png(fig)


def false_alarm_plot(doc: dict[str, Any]) -> str:
    runs = doc["runs"]
    confirm = [r["settings"].get("confirm_s") for r in runs]
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    if len(runs) > 1 and all(c is not None for c in confirm):
        xs = [float(c) for c in confirm]
        order = np.argsort(xs)
        x = np.array(xs)[order]
        fa = [runs[i]["total"]["false_alarms_per_pair_day"] or 0.0 for i in order]
        det = [runs[i]["total"]["detection_rate"] or 0.0 for i in order]
        ax.plot(x, fa, "o-", label="false alarms / pair-day (all)")
        for fam in ("stationary", "indoor-pass"):
            ys = [_fam(runs[i], fam, "false_alarms_per_pair_day") for i in order]
            if any(y is not None for y in ys):
                ax.plot(x, [y or 0.0 for y in ys], "s--", label=f"{fam}")
        ax.set_xlabel("confirm_s (s)")
        ax.set_ylabel("false alarms per pair-day")
        ax2 = ax.twinx()
        ax2.plot(x, det, "k^:", label="detection rate")
        ax2.set_ylim(0, 1.05)
        ax2.set_ylabel("detection rate")
        ax.legend(fontsize=7, loc="upper center")
        ax.set_title("False alarms against the confirmation setting")
    else:
        fams = runs[0]["families"]
        ax.bar(
            [f["family"] for f in fams],
            [f["false_alarms_per_pair_day"] or 0.0 for f in fams],
        )
        ax.tick_params(axis="x", rotation=20, labelsize=8)
        ax.set_ylabel("false alarms per pair-day")
        ax.set_title("False alarms per scenario type (sweep confirm_s to plot them against it)")
    return _png(fig)


def _fam(run: dict[str, Any], fam: str, key: str) -> Any:
    for f in run["families"]:
        if f["family"] == fam:
            return f[key]
    return None


def map_plot(run: RunResult) -> str:
    """One example case per scenario type: true paths, fixes sent, order circle, alarms."""
    sc = run.schedule
    examples = {}
    for c in run.suite.cases:
        if c.family not in examples:
            examples[c.family] = c
    n = len(examples)
    cols = min(4, max(1, n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    origin = run.suite.origin
    m, nn = _radii(origin[0])
    kx = nn * math.cos(math.radians(origin[0])) * math.pi / 180.0
    ky = m * math.pi / 180.0
    alarms_at: dict[str, list[tuple[float, float]]] = {}
    for _, msg in run.messages:
        off = msg.get("offender") or {}
        if (
            msg.get("level") in ALARM_LEVELS
            and msg.get("type") in PAIR_TYPES
            and off.get("lat") is not None
        ):
            alarms_at.setdefault(msg["case_id"], []).append((off["lat"], off["lon"]))
    for ax, (fam, c) in zip(axes.flat, examples.items(), strict=False):
        vt = run.suite.devices[c.victim].track
        ot = run.suite.devices[c.offender].track
        t = np.linspace(c.start_s, c.end_s, 600)
        ve = np.interp(t, vt.t, vt.east_m)
        vn = np.interp(t, vt.t, vt.north_m)
        oe = np.interp(t, ot.t, ot.east_m)
        on = np.interp(t, ot.t, ot.north_m)
        cx, cy = ve[0], vn[0]
        for dev, color in ((c.offender, "tab:red"), (c.victim, "tab:blue")):
            i = sc.devices.index(dev)
            sel = np.flatnonzero(sc.dev == i)[::5]
            ax.scatter(
                (sc.lon[sel] - origin[1]) * kx - cx,
                (sc.lat[sel] - origin[0]) * ky - cy,
                s=1,
                c=color,
                alpha=0.25,
            )
        ax.plot(oe - cx, on - cy, c="tab:red", lw=1.2, label="offender")
        ax.plot(ve - cx, vn - cy, c="tab:blue", lw=1.2, label="victim")
        d = np.hypot(oe - ve, on - vn)
        k = int(np.argmin(d))
        ax.add_patch(
            plt.Circle((ve[k] - cx, vn[k] - cy), 500.0, fill=False, ls="--", ec="grey", lw=0.8)
        )
        for lat, lon in alarms_at.get(c.id, [])[:50]:
            ax.plot((lon - origin[1]) * kx - cx, (lat - origin[0]) * ky - cy, "k+", ms=6)
        ax.set_title(f"{fam}\n{c.id}", fontsize=8)
        ax.set_aspect("equal", adjustable="datalim")
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, loc="best")
    fig.suptitle("One example per scenario type (metres from the victim's start; + alarm)")
    return _png(fig)


def write_report(out: Path, doc: dict[str, Any], runs: list[RunResult]) -> Path:
    """Write ``out/report.html``; return its path."""
    parts = [
        "<!doctype html><meta charset='utf-8'><title>Proximity engine evaluation</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse;font-size:12px;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
        "th{background:#eee}img{max-width:100%}</style>",
        "<h1>Proximity engine evaluation</h1>",
        f"<p>Command: <code>{html.escape(doc.get('command', ''))}</code><br>"
        f"Scenario types: {html.escape(', '.join(doc['scenarios']) or '(replays only)')};"
        f" {doc['pairs_per_type']} pairs per type;"
        + (" engine in process (--direct);" if doc.get("direct") else f" clock x{doc['speed']:g};")
        + " reporting every"
        f" {doc['interval_s']:g} s; seed {doc['seed']}.</p>",
    ]
    for k, (r, s) in enumerate(zip(runs, doc["runs"], strict=True), start=1):
        settings = ", ".join(f"{a}={b}" for a, b in s["settings"].items()) or "default settings"
        lat = s["latency_ms"]
        parts.append(f"<h2>Run {k}: {html.escape(settings)}</h2>")
        parts.append(
            f"<p>{s['fixes_published']:,} fixes published, {s['fixes_processed']} processed;"
            f" {s['messages']:,} alarm messages; wall {s['wall_s']} s for {s['scenario_s']:.0f} s"
            f" of scenario time. "
            + (
                "Latency not measured: a direct run (the engine in process, no broker).</p>"
                if s.get("mode") == "direct"
                else f"Latency (fix published -> alarm received, {lat['count']}"
                f" messages): p50 {lat['p50']} ms, p95 {lat['p95']} ms, p99 {lat['p99']} ms,"
                f" max {lat['max']} ms.</p>"
            )
        )
        parts.append(_table([*s["families"], s["total"]], COLUMNS))
        track = s["pursuit"]["alarm_track"]
        parts.append(
            f"<p>Pursuit: {s['pursuit']['commands']:,} commands to the devices. The offenders'"
            f" track while an alarm of theirs stood at level alarm or above: {track['fixes']:,}"
            f" fixes, {track['interval_median_s']} s between them (median;"
            f" 90th percentile {track['interval_p90_s']} s).</p>"
        )
        if s["missed"]:
            parts.append(
                "<p>Missed: "
                + ", ".join(
                    f"{html.escape(m['case_id'])} {m['kind']} at {m['start_s']} s"
                    for m in s["missed"]
                )
                + "</p>"
            )
        if k == 1:
            parts.append(f"<img src='{delay_plot(r)}'>")
            parts.append(f"<img src='{map_plot(r)}'>")
    if len(runs) > 1:
        keys = sorted({k for s in doc["runs"] for k in s["settings"]})
        rows = [
            {
                **s["settings"],
                "detection_rate": s["total"]["detection_rate"],
                "delay_median_s": s["total"]["delay_median_s"],
                "false_alarms_per_pair_day": s["total"]["false_alarms_per_pair_day"],
                "alarms_per_pair_day": s["total"]["alarms_per_pair_day"],
                "p95_ms": s["latency_ms"]["p95"],
                "track_s": s["pursuit"]["alarm_track"]["interval_median_s"],
            }
            for s in doc["runs"]
        ]
        cols = (
            *((k, k) for k in keys),
            ("detection_rate", "detected"),
            ("delay_median_s", "delay median (s)"),
            ("false_alarms_per_pair_day", "false alarms / pair-day"),
            ("false_alarms_per_pair_day_upper95", "... at most (95 %)"),
            ("alarms_per_pair_day", "alarms / pair-day"),
            ("p95_ms", "latency p95 (ms)"),
            ("track_s", "track during alarms (s between fixes)"),
        )
        parts.append("<h2>Sweep: detection against false alarms</h2>" + _table(rows, cols))
    parts.append(f"<img src='{latency_plot(runs)}'>")
    parts.append(f"<img src='{false_alarm_plot(doc)}'>")
    path = out / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
