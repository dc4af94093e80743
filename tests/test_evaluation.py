"""The evaluation suite: the generator's ground truth, the scoring on hand-made cases, the
replay reader, and one small run through Mosquitto and the engine."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from numerics.geodesy import geodesic_distance_m
from simulator.broker import LocalBroker
from simulator.evaluate import EvalOptions, build_schedule, run_evaluation
from simulator.families import (
    FAMILIES,
    ORDER_M,
    WARNING_M,
    SimCase,
    Suite,
    TruthEvent,
    build_suite,
)
from simulator.metrics import (
    AlarmRecord,
    CaseWindow,
    clopper_pearson_lower,
    collect_alarms,
    percentiles_ms,
    poisson_upper,
    score,
)
from simulator.replay import ReplayPair, TrackError, add_replays, read_track
from simulator.runs import RunResult
from tests.conftest import T0

TRACKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "tracks"


def _true_distance(suite: Suite, c: SimCase, step: float = 1.0) -> npt.NDArray[np.float64]:
    t = np.arange(c.start_s, c.end_s, step)
    lat1, lon1 = suite.devices[c.offender].track.position(t)
    lat2, lon2 = suite.devices[c.victim].track.position(t)
    return geodesic_distance_m(lat1, lon1, lat2, lon2)


@pytest.fixture(scope="module")
def suite() -> Suite:
    return build_suite(list(FAMILIES), variants=3, seed=11)


def test_breach_scenarios_really_cross_and_the_stationary_one_never_does(suite: Suite) -> None:
    for c in suite.cases:
        d = _true_distance(suite, c)
        breaches = [e for e in c.truth if e.kind == "breach"]
        if c.family in ("walk-home", "drive-to-walker", "parallel", "silent-approach"):
            # Every variant crosses the order distance, deeply, and the truth says when.
            assert d.min() < ORDER_M - 100, c.id
            [first, *_] = breaches
            assert not first.marginal
            at = np.flatnonzero(d <= ORDER_M)[0] + c.start_s
            assert abs(first.start_s - at) <= 1.0, c.id
        if c.family == "stationary":
            # 20 m outside the whole time: never a breach.
            assert breaches == [] and np.allclose(d, ORDER_M + 20.0, atol=0.5), c.id
        if c.family in ("indoor-pass", "probing"):
            assert breaches == [] and d.min() > ORDER_M + 50, c.id
        if c.family == "probing":
            # In and out of the warning distance, and the third entry is in the truth.
            entries = np.flatnonzero((d[1:] <= WARNING_M) & (d[:-1] > WARNING_M))
            assert entries.size >= 3
            [probe] = [e for e in c.truth if e.kind == "probing"]
            assert abs(probe.start_s - (entries[2] + 1 + c.start_s)) <= 1.0
        if c.family == "silent-approach":
            [silence] = [e for e in c.truth if e.kind == "silence"]
            assert silence.start_s < breaches[0].start_s  # silent before he crosses


def test_cases_of_a_family_are_seeded_variants_and_the_timeline_fits(suite: Suite) -> None:
    again = build_suite(list(FAMILIES), variants=3, seed=11)
    assert [c.truth for c in again.cases] == [c.truth for c in suite.cases]
    other = build_suite(list(FAMILIES), variants=3, seed=12)
    assert [c.truth for c in other.cases] != [c.truth for c in suite.cases]
    for c in suite.cases:
        assert 0 <= c.start_s < c.end_s <= suite.duration_s
    assert sum(c.family == "city" for c in suite.cases) == 18  # 6 x variants


def test_schedule_reports_every_second_with_stated_accuracy_and_silences(suite: Suite) -> None:
    sc = build_schedule(suite, seed=11)
    assert np.all(np.diff(sc.t) >= 0)
    silent = next(c for c in suite.cases if c.family == "silent-approach")
    [gap] = [e for e in silent.truth if e.kind == "silence"]
    off = sc.devices.index(silent.offender)
    t_off = sc.t[sc.dev == off]
    assert not ((t_off > gap.start_s) & (t_off < gap.end_s)).any()
    stat = next(c for c in suite.cases if c.family == "stationary")
    vic = sc.dev == sc.devices.index(stat.victim)
    gaps = np.diff(sc.t[vic])
    assert np.median(gaps) == pytest.approx(1.0) and gaps.max() < 60.0  # dropouts < grace
    # The noise matches the stated accuracy: about 68 % of the errors within it.
    lat, lon = suite.devices[stat.victim].track.position(sc.t[vic])
    err = geodesic_distance_m(lat, lon, sc.lat[vic], sc.lon[vic])
    assert 0.55 < float(np.mean(err <= sc.acc[vic])) < 0.8


def _alarm(aid: str, case: str, type_: str, at: float, parallel: bool = False) -> AlarmRecord:
    return AlarmRecord(aid, case, type_, at, at, 1, parallel)


def test_scoring_on_a_hand_made_case() -> None:
    day = 86_400.0
    cases = [
        # A breach from 1,000 s to 2,000 s, in a case lasting half a day.
        CaseWindow("A", "fam", 0.0, day / 2, (TruthEvent("A", "breach", 1000.0, 2000.0, 300.0),)),
        # Nothing true happens in B (a whole day).
        CaseWindow("B", "fam", 0.0, day, ()),
        # A breach in C that the engine misses; and a marginal one that it may alarm on.
        CaseWindow(
            "C",
            "fam",
            0.0,
            day / 2,
            (
                TruthEvent("C", "breach", 500.0, 900.0, 200.0),
                TruthEvent("C", "breach", 5000.0, 5010.0, 5.0, marginal=True),
            ),
        ),
    ]
    alarms = [
        # An early warning of A's breach: an approach pre-alert (the default level).
        AlarmRecord("a1", "A", "approach", math.nan, 900.0),
        _alarm("a2", "A", "proximity", 1012.0),  # detects it, 12 s after the crossing
        _alarm("b1", "B", "proximity", 3000.0),  # false
        # False: an approach alarm (approach_alarm) that no breach followed.
        _alarm("b2", "B", "approach", 4000.0),
        AlarmRecord("b3", "B", "proximity", math.nan, 100.0),  # a pre-alert only
        _alarm("b4", "B", "proximity", day + 50.0),  # after B's window: not scored
        _alarm("c1", "C", "proximity", 5020.0),  # matches only the marginal breach
    ]
    fams, outcomes = score(cases, alarms)
    f = fams["fam"]
    assert (f.breaches, f.breaches_detected, f.marginal_breaches) == (2, 1, 1)
    assert f.delays_s == [12.0]
    assert (f.alarms, f.false_alarms, f.false_approach, f.pre_alerts) == (4, 2, 1, 2)
    assert f.early_warnings == 1
    row = f.row()
    assert row["pair_days"] == 2.0 and row["detection_rate"] == 0.5
    assert row["false_alarms_per_pair_day"] == 1.0 and row["alarms_per_pair_day"] == 2.0
    # Two false alarms in two pair-days: the rate is below 6.30 / 2 per pair-day at 95 %.
    assert row["false_alarms_per_pair_day_upper95"] == pytest.approx(6.2958 / 2, abs=1e-3)
    missed = [o for o in outcomes if not o.detected]
    assert [(o.case_id, o.start_s) for o in missed] == [("C", 500.0)]


def test_a_silent_offender_is_detected_by_signal_lost_and_probing_by_its_alarm() -> None:
    c = CaseWindow(
        "S",
        "silent",
        0.0,
        3600.0,
        (
            TruthEvent("S", "silence", 100.0, 3600.0),
            TruthEvent("S", "breach", 900.0, 3600.0, 400.0),
            TruthEvent("S", "probing", 2000.0, 2000.0),
        ),
    )
    fams, _ = score(
        [c],
        [
            _alarm("s1", "S", "signal_lost", 161.0),
            _alarm("p1", "S", "probing", 2010.0),
            _alarm("x1", "S", "proximity", 3000.0),  # after he came back: delay apart
        ],
    )
    f = fams["silent"]
    assert (f.breaches_detected, f.silences_detected, f.probes_detected) == (1, 1, 1)
    assert f.delays_s == [] and f.delays_after_silence_s == [2100.0]
    assert f.false_alarms == 0


def _breaches(case_id: str, family: str, *spans: tuple[float, float]) -> CaseWindow:
    """A case of an hour or more whose true breaches (100 m deep) span ``spans``."""
    end = max(3600.0, max(b for _, b in spans) + 2700.0)
    events = tuple(TruthEvent(case_id, "breach", a, b, 100.0) for a, b in spans)
    return CaseWindow(case_id, family, 0.0, end, events)


def _trail(case_id: str, rows: list[tuple[float, str, str]]) -> list[dict[str, Any]]:
    """The CIC messages of one proximity alarm: (seconds, level, state) each."""
    return [
        {"alarm_id": case_id.lower(), "case_id": case_id, "type": "proximity", "level": lvl,
         "state": st, "times": {"decided": datetime.fromtimestamp(T0 + t, UTC).isoformat()}}
        for t, lvl, st in rows
    ]  # fmt: skip


def test_a_breach_that_begins_while_an_alarm_stands_is_detected_by_it() -> None:
    # Two episodes 500 s apart (he stepped out briefly); the engine's alarm stood through the
    # first and the second (its hysteresis joined them), then a third after it ended.
    c = _breaches("R", "replay", (100.0, 400.0), (900.0, 1500.0), (4000.0, 4500.0))
    rows = [(90, "pre_alert", "open"), (110, "alarm", "update"), (2000, "pre_alert", "update")]
    messages = _trail("R", [*rows, (2100, "pre_alert", "ended")])
    [rec] = collect_alarms(messages, T0)
    assert (rec.alarm_s, rec.alarm_until_s) == (110.0, 2000.0)
    assert rec.standing(900.0) and not rec.standing(2500.0) and not rec.standing(100.0)
    fams, outcomes = score([c], [rec])
    f = fams["replay"]
    assert (f.breaches, f.breaches_detected, f.delays_s) == (3, 2, [10.0])
    assert [(o.start_s, o.detected, o.by) for o in outcomes] == [
        (100.0, True, "proximity"),
        (900.0, True, "proximity, standing"),
        (4000.0, False, ""),
    ]
    assert f.false_alarms == 0
    # An alarm that opened early (noise put a fix inside 100 s before the crossing) and
    # stood through it is about the breach: not false; one that ended before it is false.
    early = CaseWindow(
        "E", "replay", 0.0, 7200.0, (TruthEvent("E", "breach", 1000.0, 1500.0, 90.0),)
    )
    stood = AlarmRecord("s", "E", "proximity", 900.0, 890.0, 1, alarm_until_s=2000.0)
    ended = AlarmRecord("x", "E", "proximity", 300.0, 290.0, 1, alarm_until_s=400.0)
    fams, _ = score([early], [stood, ended])
    assert (fams["replay"].breaches_detected, fams["replay"].false_alarms) == (1, 1)


def test_a_dropout_that_took_an_offender_s_last_reports_is_a_marginal_silence() -> None:
    # A device reporting once a minute whose last reports a dropout took: silent for more
    # than its declared interval plus the grace before its case ended, as in the middle.
    suite = build_suite(["every-minute"], variants=1, seed=3)
    sched = build_schedule(suite, 3)
    [case] = suite.cases
    i = sched.devices.index(case.offender)
    sent = sched.index[i][sched.index[i] >= 0]
    assert sched.t[sent[-1]] > case.end_s - 120  # it reported to the end
    run = RunResult({}, suite, sched, [], np.zeros(sched.t.size), 0.0, 1.0, 0.0, 0, {}, 0.0)
    assert [e for e in run.dropouts()[case.id] if e.end_s == case.end_s] == []
    last = float(sched.t[sent[-1]])
    cut = sched.t[sent] > case.end_s - 400  # a dropout of the last 400 s
    sched.index[i][np.isin(sched.index[i], sent[cut])] = -1
    tail = run.dropouts()[case.id][-1]
    assert (tail.kind, tail.marginal, tail.end_s) == ("silence", True, case.end_s)
    assert tail.start_s == float(sched.t[sent[~cut][-1]]) < last - 300


def test_an_alarm_lowered_to_a_pre_alert_that_rises_again_detects_the_next_breach() -> None:
    # He came in, left to the warning band (the alarm fell to a pre-alert, the same id), and
    # came back ten minutes later: the second rise of that id is the second breach's alarm,
    # with its own delay (the city's encounters do this).
    c = _breaches("U", "city", (100.0, 300.0), (1000.0, 1400.0))
    messages = _trail(
        "U",
        [(90, "pre_alert", "open"), (112, "alarm", "update"), (150, "alarm", "acknowledged"),
         (400, "pre_alert", "update"), (1014, "alarm", "update"),
         (1300, "escalation", "update"), (1500, "pre_alert", "update"),
         (1600, "pre_alert", "ended")],
    )  # fmt: skip
    [rec] = collect_alarms(messages, T0)
    assert rec.spells == [[112.0, 400.0], [1014.0, 1500.0]]
    assert rec.standing(1200.0) and not rec.standing(700.0)
    fams, outcomes = score([c], [rec])
    f = fams["city"]
    assert (f.breaches, f.breaches_detected, sorted(f.delays_s)) == (2, 2, [12.0, 14.0])
    assert [o.by for o in outcomes] == ["proximity", "proximity"] and f.false_alarms == 0
    # An alarm the operator closed stands no more (it is silent; a rise is a new alarm id).
    [closed] = collect_alarms(_trail("K", [(112, "alarm", "open"), (200, "alarm", "closed")]), T0)
    assert closed.spells == [[112.0, 200.0]] and not closed.standing(1000.0)


def test_a_zone_passage_is_detected_by_a_zone_alarm_and_a_dropout_justifies_signal_lost() -> None:
    c = CaseWindow(
        "Z",
        "zone",
        0.0,
        3600.0,
        (
            TruthEvent("Z", "zone", 1000.0, 1060.0, 60.0),
            # A report swallowed by a dropout: a gap longer than declared + grace.
            TruthEvent("Z", "silence", 2000.0, 2140.0, marginal=True),
        ),
    )
    fams, outcomes = score(
        [c],
        [
            _alarm("p1", "Z", "proximity", 1020.0),  # not what a zone passage needs: false
            _alarm("z1", "Z", "zone", 1021.5),  # detects the passage, 21.5 s after entry
            _alarm("s1", "Z", "signal_lost", 2131.0),  # the rule saying what it says
            _alarm("z2", "Z", "zone", 3000.0),  # no passage then: false
        ],
    )
    f = fams["zone"]
    assert (f.breaches, f.breaches_detected, f.delays_s) == (1, 1, [21.5])
    assert (f.false_alarms, f.silences, f.silences_detected) == (2, 0, 0)
    assert [(o.kind, o.by) for o in outcomes] == [("zone", "zone")]
    # Without any alarm in it, the marginal silence is no miss; the passage is.
    fams, outcomes = score([c], [])
    assert (fams["zone"].breaches_detected, fams["zone"].silences) == (0, 0)
    assert [(o.kind, o.detected) for o in outcomes] == [("zone", False)]


def test_zone_pass_streets_run_through_or_past_a_120_m_zone_with_a_fix_every_100_m() -> None:
    suite = build_suite(["zone-pass"], variants=24, seed=5)
    schedule = build_schedule(suite, 5)
    through = past = 0
    for c in suite.cases:
        [zone] = c.case["zones"]["features"]
        assert zone["properties"] == {
            "radius_m": 120.0,
            "kind": "exclusion",
            "label": "children's school",
        }
        lon, lat = zone["geometry"]["coordinates"]
        t = np.arange(c.start_s, c.end_s, 0.5)
        olat, olon = suite.devices[c.offender].track.position(t)
        d = geodesic_distance_m(olat, olon, np.full(t.size, lat), np.full(t.size, lon))
        passages = [e for e in c.truth if e.kind == "zone"]
        assert not [e for e in c.truth if e.kind == "breach"]  # far from her home
        if d.min() <= 120.0:
            through += 1
            assert len(passages) == 1 and not passages[0].marginal  # 35 m deep at least
            assert passages[0].depth_m == pytest.approx(120.0 - d.min(), abs=0.5)
        else:
            past += 1
            assert passages == [] and d.min() >= 160.0 - 120.0 - 1.0
        # One report per 100 m travelled while he moves.
        i = schedule.devices.index(c.offender)
        ts = schedule.t[schedule.dev == i]
        lat_s, lon_s = suite.devices[c.offender].track.position(ts)
        step = geodesic_distance_m(lat_s[:-1], lon_s[:-1], lat_s[1:], lon_s[1:])
        moving = step > 50.0
        assert np.median(step[moving]) == pytest.approx(100.0, rel=0.1)
    assert through >= 6 and past >= 6


def test_alarm_messages_group_by_id_and_latency_percentiles() -> None:
    t0 = T0

    def msg(aid: str, level: str, at: float, parallel: bool = False) -> dict[str, Any]:
        from proximity.clock import iso_utc

        return {
            "alarm_id": aid,
            "case_id": "A",
            "type": "proximity",
            "level": level,
            "times": {"decided": iso_utc(t0 + at)},
            "motion": {"parallel": parallel},
        }

    recs = collect_alarms(
        [msg("x", "pre_alert", 10.0), msg("x", "alarm", 25.5, True), msg("y", "pre_alert", 40)],
        t0,
    )
    by = {r.alarm_id: r for r in recs}
    assert by["x"].alarm_s == pytest.approx(25.5) and by["x"].first_s == pytest.approx(10.0)
    assert by["x"].parallel and by["x"].messages == 2
    assert math.isnan(by["y"].alarm_s)
    p = percentiles_ms([0.001 * k for k in range(1, 101)])
    assert (p["count"], p["p50"], p["max"]) == (100, 50.5, 100.0)


def test_csv_and_gpx_recordings_are_read(tmp_path: Path) -> None:
    csv_file = tmp_path / "his.csv"
    start = datetime.fromtimestamp(T0, UTC)  # the recorder's two forms of one time
    later = start + timedelta(seconds=2.5)
    csv_file.write_text(
        "tracked_at;latitude;longitude;accuracy\n"
        f"{later:%Y-%m-%d %H:%M:%S}.500000000;50.85;4.35;12\n"
        f"{start:%Y-%m-%dT%H:%M:%SZ};50.84;4.34;0\n"
    )
    r = read_track(csv_file)
    assert r.t.size == 2 and r.duration_s == pytest.approx(2.5)
    assert r.lat[0] == 50.84 and math.isnan(r.acc[0]) and r.acc[1] == 12.0
    gpx = tmp_path / "her.gpx"
    minute = start + timedelta(minutes=1)
    gpx.write_text(
        '<gpx xmlns="http://www.topografix.com/GPX/1/1" version="1.1"><trk><trkseg>'
        f'<trkpt lat="50.1" lon="4.1"><time>{start:%Y-%m-%dT%H:%M:%SZ}</time></trkpt>'
        f'<trkpt lat="50.2" lon="4.2"><time>{minute:%Y-%m-%dT%H:%M:%SZ}</time></trkpt>'
        "</trkseg></trk></gpx>"
    )
    g = read_track(gpx)
    assert g.duration_s == 60.0 and list(g.lon) == [4.1, 4.2]
    bad = tmp_path / "bad.csv"
    bad.write_text("when,lat,lon\n1,2,3\n")
    with pytest.raises(TrackError, match="no time column"):
        read_track(bad)


@pytest.mark.skipif(not TRACKS.is_dir(), reason="../shared/data/tracks is not present")
def test_recorded_tracks_replayed_so_that_they_meet() -> None:
    suite = build_suite([], 1)
    car = TRACKS / "gpxpy_around-visnjan-with-car.gpx"
    day = TRACKS / "trackintel_google_trajectory_zurich.csv"
    add_replays(suite, [ReplayPair(car, day, meet=0.5), ReplayPair(car)])
    assert [c.id for c in suite.cases] == ["EVAL-replay-001", "EVAL-replay-002"]
    for c in suite.cases:
        assert c.min_distance_m < 1.0  # they meet, by construction
        assert any(e.kind == "breach" for e in c.truth)
    sc = build_schedule(suite, 1)
    rec = read_track(car)
    mine = sc.dev == sc.devices.index(suite.cases[0].offender)
    assert np.array_equal(sc.lat[mine], rec.lat)  # replayed as recorded


@pytest.mark.broker
@pytest.mark.wallclock
def _through_mosquitto(scenarios: list[str], out: Path) -> dict[str, Any]:
    """One variant of each scenario type through a private Mosquitto and the engine, x120."""
    with LocalBroker() as broker:
        return run_evaluation(
            EvalOptions(
                scenarios=scenarios, pairs=1, speed=120.0, out=out, broker=broker.url, quiet=True
            )
        )


def test_a_small_run_through_mosquitto_detects_the_breaches(tmp_path: Path) -> None:
    doc = _through_mosquitto(["walk-home", "stationary"], tmp_path)
    [run] = doc["runs"]
    # Every fix reached the engine: used, or set aside as a jump (none late or duplicate).
    assert run["fixes_published"] > 10_000 and run["fixes_late_or_duplicate"] == 0
    assert run["fixes_processed"] + run["fixes_set_aside"] == run["fixes_published"]
    fams = {f["family"]: f for f in run["families"]}
    assert fams["walk-home"]["breaches"] == fams["walk-home"]["breaches_detected"] == 1
    assert fams["stationary"]["false_alarms"] == 0
    assert run["latency_ms"]["count"] > 0
    assert json.loads((tmp_path / "summary.json").read_text()) == doc
    assert "<img src='data:image/png;base64," in (tmp_path / "report.html").read_text()
    assert (tmp_path / "alarms-run1.jsonl").stat().st_size > 0
    # The same scenarios through an in-process engine (--direct): the same verdicts. (Not
    # the same delay to the second: through the broker at x120, every 100 ms the machine is
    # busy elsewhere is 12 s of scenario time.)
    direct = run_evaluation(
        EvalOptions(
            scenarios=["walk-home", "stationary"],
            pairs=1,
            out=tmp_path / "direct",
            quiet=True,
            direct=True,
        )
    )
    [drun] = direct["runs"]
    assert drun["mode"] == "direct" and drun["latency_ms"]["count"] == 0
    assert drun["fixes_published"] == run["fixes_published"]
    for a, b in zip(run["families"], drun["families"], strict=True):
        for key in ("breaches", "breaches_detected", "false_alarms", "early_warnings"):
            assert a[key] == b[key], (a["family"], key)
    assert math.isfinite(drun["total"]["delay_median_s"])
    assert "direct" in (tmp_path / "direct" / "report.html").read_text()


@pytest.mark.wallclock
def test_a_direct_run_reports_faster_while_pursuit_asks_for_it(tmp_path: Path) -> None:
    def run(alarm_interval_s: float | None) -> dict[str, Any]:
        opts = EvalOptions(
            scenarios=["walk-home"],
            pairs=1,
            out=tmp_path / str(alarm_interval_s),
            quiet=True,
            direct=True,
            alarm_interval_s=alarm_interval_s,
        )
        [result] = run_evaluation(opts)["runs"]
        return result

    slow, fast = run(None), run(0.5)
    assert slow["total"]["breaches_detected"] == fast["total"]["breaches_detected"] == 1
    # Twice as many fixes while his approach and breach alarms were open: minutes of them.
    assert fast["fixes_published"] > slow["fixes_published"] + 120
    assert fast["fixes_processed"] + fast["fixes_set_aside"] == fast["fixes_published"]


@pytest.mark.wallclock
def test_pursuit_makes_the_devices_report_faster_during_the_alarms(tmp_path: Path) -> None:
    # Devices that report every 30 s: with pursuit the engine asks them for a fix every 10 s
    # while his alarm stands, and they obey; without it they keep their own pace.
    def run(pursuit: str) -> dict[str, Any]:
        opts = EvalOptions(
            scenarios=["walk-home"],
            pairs=2,
            interval_s=30.0,
            out=tmp_path / pursuit,
            quiet=True,
            direct=True,
            settings={"pursuit": pursuit},
        )
        [result] = run_evaluation(opts)["runs"]
        return result

    on, off = run("true"), run("false")
    assert off["pursuit"]["commands"] == 0 and on["pursuit"]["commands"] > 0
    assert on["total"]["breaches_detected"] == off["total"]["breaches_detected"] > 0
    track_on, track_off = on["pursuit"]["alarm_track"], off["pursuit"]["alarm_track"]
    assert track_off["interval_median_s"] == pytest.approx(30.0, abs=1.0)
    assert track_on["interval_median_s"] == pytest.approx(10.0, abs=1.0)
    assert track_on["fixes"] > 2 * track_off["fixes"]
    assert on["fixes_published"] > off["fixes_published"]


def test_the_false_alarm_bound_is_the_poisson_upper_limit() -> None:
    # Tabulated one-sided 95 % limits (Garwood): 0 -> 2.996 (the rule of three), 1 -> 4.744,
    # 2 -> 6.296, 10 -> 17.0; and at that mean, k or fewer events have probability 5 %.
    for k, limit in [(0, 2.9957), (1, 4.7439), (2, 6.2958), (10, 16.9622)]:
        lam = poisson_upper(k)
        assert lam == pytest.approx(limit, abs=1e-3)
        p = sum(math.exp(-lam) * lam**i / math.factorial(i) for i in range(k + 1))
        assert p == pytest.approx(0.05, abs=1e-9)
    assert poisson_upper(0, 0.99) == pytest.approx(-math.log(0.01))
    with pytest.raises(ValueError):
        poisson_upper(-1)


def test_the_detection_bound_is_the_clopper_pearson_lower_limit() -> None:
    # All of n detected: (1 - 0.95) ** (1 / n); 3 of 4: the p at which P(X >= 3) is 5 %.
    assert clopper_pearson_lower(4, 4) == pytest.approx(0.05**0.25)
    assert clopper_pearson_lower(60, 60) == pytest.approx(0.05 ** (1 / 60))
    p = clopper_pearson_lower(3, 4)
    assert 4 * p**3 * (1 - p) + p**4 == pytest.approx(0.05, abs=1e-9)
    assert clopper_pearson_lower(0, 5) == 0.0
    with pytest.raises(ValueError):
        clopper_pearson_lower(5, 4)


def test_operator_load_notices_priority_and_the_largest_alarm_level_uncertainty() -> None:
    t0 = T0
    from proximity.clock import iso_utc

    def msg(
        aid: str, type_: str, state: str, level: str, u: float, prev: str | None = None
    ) -> dict[str, Any]:
        return {
            "incident_id": "i-pz" if aid in "pz" else None,  # p and z: one situation
            "alarm_id": aid,
            "case_id": "A",
            "type": type_,
            "state": state,
            "level": level,
            "previous_level": prev,
            "uncertainty_m": u,
            "times": {"decided": iso_utc(t0 + 10.0)},
        }

    recs = collect_alarms(
        [
            msg("p", "proximity", "open", "pre_alert", 1500.0),  # a notice; not alarm level
            msg("p", "proximity", "update", "alarm", 40.0, "pre_alert"),  # a notice
            msg("p", "proximity", "update", "alarm", 30.0),  # a reminder: no notice
            msg("s", "signal_lost", "open", "alarm", math.nan),  # no notice: not his rule
            msg("q", "panic", "open", "escalation", math.nan),
            msg("z", "zone", "open", "pre_alert", 20.0),
        ],
        t0,
    )
    by = {r.alarm_id: r for r in recs}
    assert by["p"].notices == 2 and by["z"].notices == 1 and by["s"].notices == 0
    assert by["p"].max_alarm_uncertainty_m == 40.0 and math.isnan(by["z"].max_alarm_uncertainty_m)
    assert [by[k].priority for k in "psqz"] == ["medium", "medium", "high", "low"]
    window = CaseWindow("A", "f", 0.0, 86_400.0, ())
    fams, _ = score([window], recs)
    row = fams["f"].row()
    assert row["notices_per_pair_day"] == 3.0 and row["alarm_messages_per_pair_day"] == 6.0
    # Three incidents: p and z together (medium, its highest), s (medium), q (high).
    assert row["incidents"] == 3 and row["incidents_per_pair_day"] == 3.0
    assert (row["priority_high"], row["priority_medium"], row["priority_low"]) == (1, 2, 0)
    assert row["priority_split"] == "33%/67%/0%" and row["max_alarm_uncertainty_m"] == 40.0


def test_irregular_reporting_families_report_as_their_devices_do(suite: Suite) -> None:
    schedule = build_schedule(suite, 11)

    def gaps(family: str, role: str) -> npt.NDArray[np.float64]:
        out = []
        for c in suite.cases:
            if c.family == family:
                dev = c.offender if role == "offender" else c.victim
                t = schedule.t[schedule.dev == schedule.devices.index(dev)]
                out.append(np.diff(t))
        return np.concatenate(out)

    burst = gaps("bursty", "offender")
    assert np.median(burst) == pytest.approx(1.0) and 5.0 <= np.percentile(burst, 95) <= 15.0
    saving = gaps("power-saving", "victim")
    assert saving.min() >= 30.0 - 1e-9 and saving.max() <= 120.0 + 45.0  # a dropout at most
    assert np.median(gaps("wrong-interval", "offender")) == pytest.approx(15.0, rel=0.1)
    declared = {d["id"]: d["reporting_interval_s"] for d in suite.case_file()["devices"]}
    wrong = next(c for c in suite.cases if c.family == "wrong-interval")
    assert declared[wrong.offender] == 1.0  # what the case file says, not what it does
    # Network fixes: some of a network-mix phone's fixes state 300-1,000 m.
    net = next(c for c in suite.cases if c.family == "network-mix")
    acc = schedule.acc[schedule.dev == schedule.devices.index(net.victim)]
    share = float(np.mean(acc >= 300.0))
    assert 0.1 < share < 0.3 and acc.max() <= 1000.0


def test_the_irregular_reporting_families_meet_their_targets(tmp_path: Path) -> None:
    # Every breach detected; the median delay within one reporting interval + confirm_s
    # + 5 s (devices at 1-15 s) or 60 s (a fix a minute); no alarm-level message with an
    # uncertainty above 1 km; no alarm-level false alarm where nothing happens.
    fams = ["bursty", "wrong-interval", "network-mix", "every-minute", "network-pass"]
    opts = EvalOptions(scenarios=fams, pairs=10, out=tmp_path, quiet=True, direct=True)
    [run] = run_evaluation(opts)["runs"]
    by = {f["family"]: f for f in run["families"]}
    # Bursts: up to 15 s between them; declared 1 s, reporting every 15 s; 1 s (network mix).
    for name, interval in [("bursty", 15), ("wrong-interval", 15), ("network-mix", 1)]:
        assert by[name]["delay_median_s"] <= interval + 15 + 5, name
    assert by["every-minute"]["delay_median_s"] <= 60.0
    for name in fams[:-1]:
        assert by[name]["breaches"] == by[name]["breaches_detected"] == 10, name
        assert by[name]["false_alarms"] == 0, name
    assert by["network-pass"]["alarms"] == 0
    assert run["total"]["max_alarm_uncertainty_m"] <= 1000.0


def test_bursty_and_minute_reporting_devices_alarm_through_mosquitto(tmp_path: Path) -> None:
    # The timing findings through the real broker and the engine's own clock (x120): a
    # logger that reports in bursts and a phone that reports once a minute each raise their
    # breach's alarm (with bursts, a confirmation used never to complete), no false alarm,
    # and no alarm-level message carries more than 1 km.
    families = ["bursty", "every-minute"]
    doc = _through_mosquitto(families, tmp_path)
    [run] = doc["runs"]
    by = {f["family"]: f for f in run["families"]}
    assert by["bursty"]["breaches"] == by["bursty"]["breaches_detected"] == 1
    assert by["every-minute"]["breaches"] == by["every-minute"]["breaches_detected"] == 1
    assert run["total"]["false_alarms"] == 0
    assert run["total"]["max_alarm_uncertainty_m"] <= 1000.0
    # The delays, on the fixes alone (in process: a busy machine cannot stretch them): within
    # one reporting interval + confirm_s + 5 s (bursts: up to 15 s apart), and within 60 s.
    opts = EvalOptions(scenarios=families, pairs=1, out=tmp_path / "d", quiet=True, direct=True)
    [drun] = run_evaluation(opts)["runs"]
    dby = {f["family"]: f for f in drun["families"]}
    assert dby["bursty"]["breaches_detected"] == dby["every-minute"]["breaches_detected"] == 1
    assert dby["bursty"]["delay_median_s"] <= 15 + 15 + 5
    assert dby["every-minute"]["delay_median_s"] <= 60.0


def test_the_zone_pass_family_detects_every_passage_and_no_near_miss(tmp_path: Path) -> None:
    # A fix every 100 m past a 120 m exclusion zone: every passage through it (one or two
    # fixes inside at most) raises a zone alarm, no street passing 40-140 m outside does.
    opts = EvalOptions(scenarios=["zone-pass"], pairs=24, out=tmp_path, quiet=True, direct=True)
    [run] = run_evaluation(opts)["runs"]
    [fam] = run["families"]
    assert fam["breaches"] >= 6 and fam["breaches_detected"] == fam["breaches"]
    assert fam["false_alarms"] == 0
    assert run["total"]["max_alarm_uncertainty_m"] <= 1000.0
