"""The offender's "move away" notice cannot carry anything about the protected person."""

from __future__ import annotations

import inspect
import re
from dataclasses import replace
from typing import Any

import numpy as np
import orjson

from cic.notice import (
    BANDS,
    TEXT,
    NoticeKind,
    Severity,
    VictimNotices,
    band_of,
    notices_for,
    offender_notice,
)
from ingest.model import Fix
from proximity.events import AlarmLevel
from tests.naive import offset
from tests.test_engine import HOME, T0
from tests.test_rules import QUIET, Run


def test_the_notice_builder_cannot_receive_a_position_distance_or_bearing() -> None:
    params = inspect.signature(offender_notice).parameters
    assert list(params) == ["device", "kind", "severity", "issued"]
    assert [p.annotation for p in params.values()] == ["str", "NoticeKind", "Severity", "float"]


def _notices(victim_bearing: float, victim_shift_m: float) -> list[bytes]:
    """The offender walks the same path each time; the protected person stands elsewhere
    (her home moved by ``victim_shift_m`` along ``victim_bearing``, his path with it, so
    every rule fires at the same moments); return the notices' bytes."""
    home = offset(*HOME, victim_bearing, victim_shift_m)
    run = Run(QUIET)
    payloads = []
    for t in range(0, 900, 5):
        o = offset(*home, 200.0, 1300.0 - 1.5 * t)  # from 1300 m to 80 m
        out = run.second(t, Fix("v", T0 + t, T0 + t, *home, 5.0), Fix("o", T0 + t, T0 + t, *o, 5.0))
        payloads += [n.payload for n in notices_for(out)]
    return payloads


def test_no_victim_coordinate_distance_or_direction_reaches_the_offender() -> None:
    # Her position differs by kilometres and in direction; what he receives does not differ.
    runs = [_notices(b, s) for b, s in ((0.0, 0.0), (90.0, 3000.0), (225.0, 7500.0))]
    assert runs[0] == runs[1] == runs[2]
    notices = [orjson.loads(p) for p in runs[0]]
    # Pre-alert, approach, alarm, escalation: two warnings, then two violations.
    assert [n["severity"] for n in notices] == ["warning", "warning", "violation", "violation"]
    for n in notices:
        assert set(n) == {"notice_id", "kind", "severity", "text", "issued"}
        assert n["text"] in TEXT.values()  # fixed texts only
        assert not re.search(r"\d", n["text"])  # no distance, no coordinate
        assert not re.search(r"\b(north|south|east|west|left|right|bearing)\b", n["text"], re.I)


def test_severity_follows_the_level_and_curfews_have_their_own_text() -> None:
    warn = offender_notice("tag-1", NoticeKind.STAY_AWAY, Severity.WARNING, T0)
    viol = offender_notice("tag-1", NoticeKind.STAY_AWAY, Severity.VIOLATION, T0)
    curfew = offender_notice("tag-1", NoticeKind.CURFEW, Severity.VIOLATION, T0)
    assert len({warn.text, viol.text, curfew.text}) == 3
    assert (
        warn.topic == "devices/tag-1/notice"
        and b'"issued":"2026-11-23T10:00:00.000Z"' in warn.payload  # date-ok: T0, as ISO
    )
    assert AlarmLevel.ALARM > AlarmLevel.PRE_ALERT
    assert np.isfinite(warn.issued)


# --- the protected person's notices -----------------------------------------------------------


def _both(
    victim_bearing: float, victim_shift_m: float, share: bool
) -> tuple[list[bytes], list[dict[str, Any]]]:
    """As :func:`_notices`, in a case that does (or does not) let her see him: his notices'
    bytes and hers."""
    home = offset(*HOME, victim_bearing, victim_shift_m)
    run = Run(QUIET)
    cases = {"C": replace(run.eng.cases["C"], share_offender_position=share)}
    hers = VictimNotices()
    his: list[bytes] = []
    mine: list[dict[str, Any]] = []
    for t in range(0, 900, 5):
        o = offset(*home, 200.0, 1300.0 - 1.5 * t)
        out = run.second(t, Fix("v", T0 + t, T0 + t, *home, 5.0), Fix("o", T0 + t, T0 + t, *o, 5.0))
        his += [n.payload for n in notices_for(out)]
        mine += [n.body for n in hers.take(out, cases)]
    return his, mine


def test_her_notices_never_reach_his_whatever_they_say() -> None:
    # Even where her notices carry his position (the case allows it), his carry nothing of
    # hers: across her positions they are the same bytes as in a case that does not.
    runs = [_both(b, s, share) for b, s in ((0.0, 0.0), (90.0, 3000.0)) for share in (False, True)]
    assert runs[0][0] == runs[1][0] == runs[2][0] == runs[3][0]
    assert runs[0][1] != runs[1][1]  # hers differ: one of them shows him
    shown = runs[1][1]
    assert shown and all("offender" in n and "bearing_deg" in n for n in shown)
    # (He walks at her from bearing 200 degrees: she sees him there.)
    assert all(abs(n["bearing_deg"] - 200.0) < 1.0 for n in shown)
    hidden = runs[0][1]
    for n in hidden:
        assert set(n) == {"notice_id", "kind", "level", "band", "text", "issued"}
        assert not re.search(r"\b(north|south|east|west|bearing)\b", n["text"], re.I)


def band_of_name(name: str) -> str:
    return {b[1]: b[2] for b in BANDS}.get(name, "more than 1 km")


def test_her_notices_are_graded_by_level_and_band() -> None:
    _, mine = _both(0.0, 0.0, False)
    # The pre-alert near 1 km (the warning distance, with the fixes' uncertainty), then
    # closer bands, then the alarm and the escalation: each notice more serious or nearer.
    got = [(n["level"], n["band"]) for n in mine]
    assert got[0][0] == "pre_alert" and got[0][1] in ("over_1km", "under_1km")
    assert ("alarm", "under_500m") in got and got[-1][0] == "escalation"
    assert len(got) == len(set(got))
    for n in mine:
        assert band_of_name(n["band"]) in n["text"]
    assert band_of(199.9) == ("under_200m", "under 200 m")
    assert band_of(200.0) == ("under_500m", "under 500 m")
    assert band_of(5000.0) == ("over_1km", "more than 1 km")
