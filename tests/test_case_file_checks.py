"""Case files that catch mistakes: unknown fields at any depth (with the nearest known name),
and zones whose coordinates were written as [lat, lon]."""

from __future__ import annotations

import copy
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cli.main import main
from geofence.model import circle, feature_collection
from proximity.cases import parse_case_file
from proximity.errors import CaseFileError

SCHOOL_HOURS = {"weekly": [{"days": ["mon", "fri"], "start": "07:30", "end": "17:00"}]}
GOOD: dict[str, Any] = {
    "cases": [
        {
            "id": "BE-2026-0001",
            "offenders": ["tag-17"],
            "protected": ["phone-42"],
            "order": {"distance_m": 500, "warning_distance_m": 1000, "escalation_distance_m": 200},
            "mobility": {"offenders": "driving", "protected": "walking"},
            "summary": {"offender_name": "J. Peeters", "any key the team wants": "free text"},
            "zones": {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "id": "home",
                        "properties": {
                            "kind": "exclusion",
                            "label": "victim's home",
                            "radius_m": 200,
                            "warning_m": 100,
                        },
                        "geometry": {"type": "Point", "coordinates": [4.3517, 50.8503]},
                    },
                    {
                        "type": "Feature",
                        "properties": {
                            "kind": "exclusion",
                            "label": "children's school",
                            "radius_m": 150,
                            "schedule": {
                                "timezone": "Europe/Brussels",
                                **SCHOOL_HOURS,
                                "dates": [{"from": "2026-09-01", "until": "2027-06-30"}],
                            },
                        },
                        "geometry": {"type": "Point", "coordinates": [4.3605, 50.8391]},
                    },
                ],
            },
        },
        {
            "id": "BE-2026-0002",
            "offenders": ["tag-18"],
            "protected": ["phone-42"],
            "order": {"distance_m": 300},
        },
    ],
    "devices": [
        {
            "id": "phone-42",
            "owntracks": {"user": "jane", "device": "nokia", "key": "0wnTr4cks"},
            "reporting_interval_s": 30,
            "signal_grace_s": 30,
            "mobility": "walking",
        },
        {
            "id": "tag-18",
            "osmand": {"secret": "k7Qx-2vLm-long", "id": "48241179"},
            "reporting_interval_s": 10,
            "alarm_reporting_interval_s": 1,
        },
    ],
}


def _problems(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(CaseFileError) as info:
        parse_case_file(doc, "cases.json")
    return info.value.problems


def _set(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    target = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return out


def test_the_complete_file_is_valid_with_every_field_the_engine_reads() -> None:
    parsed = parse_case_file(GOOD)
    assert parsed.warnings == ()
    assert parsed.devices[1].info["alarm_reporting_interval_s"] == 1
    assert parsed.cases[0].summary["any key the team wants"] == "free text"


# --- unknown fields at any depth ------------------------------------------------------------

FEATURE_0 = ("cases", 0, "zones", "features", 0)
FEATURE_1 = ("cases", 0, "zones", "features", 1)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (("case",), "case: unknown field; did you mean cases?"),
        (("cases", 0, "mobilty"), "cases[0].mobilty: unknown field; did you mean mobility?"),
        (
            ("cases", 0, "order", "warning_distance"),
            "cases[0].order.warning_distance: unknown field; did you mean warning_distance_m?",
        ),
        (
            ("cases", 0, "order", "escalation"),
            "cases[0].order.escalation: unknown field; did you mean escalation_distance_m?",
        ),
        (
            ("cases", 0, "mobility", "offender"),
            "cases[0].mobility.offender: unknown field; did you mean offenders?",
        ),
        (
            ("cases", 0, "zones", "feature"),
            "cases[0].zones.feature: unknown field; did you mean features?",
        ),
        (
            (*FEATURE_0, "propertie"),
            "cases[0].zones.features[0].propertie: unknown field; did you mean properties?",
        ),
        (
            (*FEATURE_0, "geometry", "coordinate"),
            "cases[0].zones.features[0].geometry.coordinate: unknown field;"
            " did you mean coordinates?",
        ),
        (
            (*FEATURE_0, "properties", "warning"),
            "cases[0].zones.features[0].properties.warning: unknown field; did you mean warning_m?",
        ),
        (
            (*FEATURE_0, "properties", "Label"),
            "cases[0].zones.features[0].properties.Label: unknown field; did you mean label?",
        ),
        (
            (*FEATURE_1, "properties", "schedule", "timezon"),
            "cases[0].zones.features[1].properties.schedule.timezon: unknown field;"
            " did you mean timezone?",
        ),
        (
            (*FEATURE_1, "properties", "schedule", "weekly", 0, "day"),
            "cases[0].zones.features[1].properties.schedule.weekly[0].day: unknown field;"
            " did you mean days?",
        ),
        (
            (*FEATURE_1, "properties", "schedule", "dates", 0, "to"),
            "cases[0].zones.features[1].properties.schedule.dates[0].to: unknown field"
            " (known here: from, until)",
        ),
        (
            ("devices", 0, "reporting_interval"),
            "devices[0].reporting_interval: unknown field; did you mean reporting_interval_s?",
        ),
        (
            ("devices", 0, "grace_s"),
            "devices[0].grace_s: unknown field; did you mean signal_grace_s?",
        ),
        (
            ("devices", 0, "owntrack"),
            "devices[0].owntrack: unknown field; did you mean owntracks?",
        ),
        (
            ("devices", 0, "owntracks", "usr"),
            "devices[0].owntracks.usr: unknown field; did you mean user?",
        ),
        (("devices", 1, "osmand", "ID"), "devices[1].osmand.ID: unknown field; did you mean id?"),
        (
            ("cases", 1, "notes"),
            "cases[1].notes: unknown field (known here: id, mobility, offenders, order,"
            " protected, share_offender_position, summary, zones)",
        ),
    ],
)
def test_an_unknown_field_at_any_depth_names_its_path_and_the_nearest_name(
    path: tuple[Any, ...], message: str
) -> None:
    assert message in _problems(_set(GOOD, path, "x")), message


def test_a_misspelt_field_is_not_dropped_into_its_default() -> None:
    """The warning distance became the default, an OwnTracks mapping vanished: no longer."""
    doc = copy.deepcopy(GOOD)
    order = doc["cases"][0]["order"]
    order["warning_distance"] = order.pop("warning_distance_m")
    ot = doc["devices"][0]["owntracks"]
    ot["usr"] = ot.pop("user")
    problems = _problems(doc)
    assert problems[:2] == [
        "cases[0].order.warning_distance: unknown field; did you mean warning_distance_m?",
        "devices[0].owntracks.usr: unknown field; did you mean user?",
    ]
    # The rest of the file is still checked without the misspelt field: what it leaves
    # missing is reported too.
    assert any("devices[0] (phone-42): 'owntracks' must be" in p for p in problems), problems


def test_geojson_members_of_other_tools_are_ignored_with_a_warning() -> None:
    doc = copy.deepcopy(GOOD)
    zones = doc["cases"][0]["zones"]
    zones["name"] = "exported from QGIS"
    zones["features"][0]["properties"]["stroke"] = "#ff0000"
    zones["features"][0]["geometry"]["bbox"] = [4.35, 50.85, 4.36, 50.86]
    parsed = parse_case_file(doc)
    assert parsed.warnings == (
        "cases[0].zones.name: ignored (a GeoJSON member the engine does not read)",
        'cases[0] (BE-2026-0001): zone "victim\'s home" (zones.features[0]):'
        " ignored properties stroke",
    )


def test_summary_keys_are_free_but_values_must_be_text() -> None:
    doc = _set(GOOD, ("cases", 0, "summary", "victim_phon"), 32470)
    assert _problems(doc) == [
        "cases[0] (BE-2026-0001): 'summary.victim_phon' must be text (quote numbers such as"
        " phone numbers), got int"
    ]


def test_the_alarm_reporting_interval_is_checked_like_the_reporting_interval() -> None:
    assert _problems(_set(GOOD, ("devices", 1, "alarm_reporting_interval_s"), 0)) == [
        "devices[1] (tag-18): 'alarm_reporting_interval_s' must be a number of seconds > 0, got 0"
    ]


def test_the_import_lists_every_problem_and_imports_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = _set(GOOD, ("cases", 0, "order", "warning_distance"), 800)
    doc = _set(doc, ("devices", 0, "owntracks", "usr"), "jane")
    doc = _set(doc, ("cases", 1, "order", "distance_m"), 0)
    f = tmp_path / "cases.json"
    f.write_text(json.dumps(doc))
    db = tmp_path / "r.sqlite"
    assert main(["cases", "import", str(f), "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert f"error: {f}: 3 problem(s), nothing was imported:" in err
    assert (
        "  - cases[0].order.warning_distance: unknown field; did you mean warning_distance_m?"
        in err
    )
    assert "  - devices[0].owntracks.usr: unknown field; did you mean user?" in err
    assert "  - cases[1] (BE-2026-0002): 'order.distance_m' must be" in err
    if db.exists():
        assert sqlite3.connect(db).execute("SELECT count(*) FROM cases").fetchone() == (0,)


# --- coordinates written as [lat, lon] ------------------------------------------------------

BRUSSELS = (4.3517, 50.8503)  # (lon, lat)
ANTWERP = (4.4025, 51.2194)
GHENT = (3.7174, 51.0543)
LIEGE = (5.5797, 50.6326)
ARLON = (5.8167, 49.6833)
OSTEND = (2.9120, 51.2300)
SEVILLE = (-5.9845, 37.3891)


def zone(lon: float, lat: float, label: str, radius_m: float = 150) -> dict[str, Any]:
    return circle(lon, lat, radius_m, kind="exclusion", label=label)


def case(case_id: str, *features: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": case_id,
        "offenders": [f"tag-{case_id}"],
        "protected": [f"phone-{case_id}"],
        "order": {"distance_m": 500},
        "zones": feature_collection(list(features)),
    }


def test_a_position_valid_only_swapped_says_so() -> None:
    # Tokyo as [lat, lon]: 139.69 is no latitude, but swapped it is a valid position.
    problems = _problems({"cases": [case("JP", zone(35.6895, 139.6917, "home"))]})
    assert problems == [
        "cases[0] (JP): zone 'home' (zones.features[0]): the circle's centre"
        " [35.6895, 139.6917] is out of range (lon in [-180, 180], lat in [-90, 90];"
        " GeoJSON positions are [lon, lat]); swapped, [139.692, 35.6895] would be a valid"
        " [lon, lat] (lat 35.6895, lon 139.692): were the coordinates written as [lat, lon]?"
    ]


def test_a_polygon_vertex_valid_only_swapped_says_so() -> None:
    ring = [[35.68, 139.69], [35.69, 139.69], [35.69, 139.70], [35.68, 139.69]]
    feature = {
        "type": "Feature",
        "properties": {"kind": "exclusion", "label": "work"},
        "geometry": {"type": "Polygon", "coordinates": [ring]},
    }
    (problem,) = _problems({"cases": [case("JP", feature)]})
    assert "the polygon ring 0 position 0 [35.68, 139.69] is out of range" in problem
    assert "swapped, [139.69, 35.68] would be a valid [lon, lat]" in problem


def test_a_zone_far_from_its_case_but_near_it_swapped_is_an_error() -> None:
    doc = {
        "cases": [
            case(
                "BE-1",
                zone(*BRUSSELS, "victim's home"),
                zone(BRUSSELS[1] - 0.01, BRUSSELS[0] + 0.02, "victim's workplace"),  # [lat, lon]
                zone(4.40, 50.80, "children's school"),
            )
        ]
    }
    assert _problems(doc) == [
        'cases[0] (BE-1): zone "victim\'s workplace" (zones.features[1]): lies at'
        " lat 4.3717, lon 50.8403 (its coordinates read as GeoJSON [lon, lat]), 6,721 km from"
        " the case's other zones; read as [lat, lon] it would lie at lat 50.8403, lon 4.3717,"
        ' 1.8 km from zone "victim\'s home" (zones.features[0]): its coordinates look written'
        " as [lat, lon] (or the other zones' are); GeoJSON positions are [lon, lat]"
    ]


def test_two_zones_each_the_others_mirror_image_are_one_problem_naming_both() -> None:
    doc = {
        "cases": [
            case("BE-1", zone(*BRUSSELS, "home"), zone(ANTWERP[1], ANTWERP[0], "work")),
        ]
    }
    (problem,) = _problems(doc)
    assert problem.startswith(
        "cases[0] (BE-1): zone 'home' (zones.features[0]) and zone 'work' (zones.features[1])"
        " lie 6,7"
    )
    assert "zone 'home' (zones.features[0]) at lat 50.8503, lon 4.3517" in problem
    assert "zone 'work' (zones.features[1]) at lat 4.4025, lon 51.2194" in problem
    assert (
        "with the coordinates of either one read as [lat, lon] they would lie 41 km apart:"
        " one of them looks written as [lat, lon]; GeoJSON positions are [lon, lat]"
    ) in problem


def test_a_lone_zone_is_judged_against_the_files_other_cases() -> None:
    doc = {
        "cases": [
            case("BE-1", zone(*BRUSSELS, "home")),
            case("BE-2", zone(ANTWERP[1], ANTWERP[0], "home")),  # [lat, lon]
            case("BE-3", zone(*GHENT, "home")),
        ]
    }
    assert _problems(doc) == [
        "cases[1] (BE-2): zone 'home' (zones.features[0]): lies at lat 4.4025, lon 51.2194"
        " (its coordinates read as GeoJSON [lon, lat]), 6,746 km from the zones of every"
        " other case in the file; read as [lat, lon] it would lie at lat 51.2194,"
        " lon 4.4025, 41 km from zone 'home' (zones.features[0]) of case BE-1: its"
        " coordinates look written as [lat, lon] (or the other cases' are); GeoJSON"
        " positions are [lon, lat]"
    ]
    # A case whose zones were all swapped alike is judged the same way.
    doc["cases"][1] = case(
        "BE-2", zone(ANTWERP[1], ANTWERP[0], "home"), zone(GHENT[1], GHENT[0], "work")
    )
    problems = _problems(doc)
    assert [p.split(":")[0] for p in problems] == ["cases[1] (BE-2)", "cases[1] (BE-2)"]
    assert "zone 'work' (zones.features[1]): lies at lat 3.7174, lon 51.0543" in problems[1]


def test_two_cases_each_the_others_mirror_image_are_one_problem() -> None:
    doc = {"cases": [case("BE-1", zone(*BRUSSELS, "home")), case("BE-2", zone(51.2, 4.40, "h"))]}
    (problem,) = _problems(doc)
    assert problem.startswith("cases[1] (BE-2): the zones of this case and of case BE-1 lie 6,7")
    assert "one of the two looks written as [lat, lon]; GeoJSON positions are [lon, lat]" in (
        problem
    )


def test_legitimate_zones_across_belgium_and_beyond_raise_nothing() -> None:
    doc = {
        "cases": [
            # zones 150-250 km apart in one case, and one 1,600 km away (family in Seville)
            case("BE-1", zone(*OSTEND, "home"), zone(*ARLON, "work"), zone(*SEVILLE, "family")),
            case("BE-2", zone(*LIEGE, "home")),
            case("BE-3", zone(*ANTWERP, "home"), zone(*GHENT, "work")),
        ]
    }
    assert parse_case_file(doc).warnings == ()
    # A lone zone in a file of one case cannot be judged: nothing is said.
    assert parse_case_file({"cases": [case("X", zone(ANTWERP[1], ANTWERP[0], "h"))]}).cases


BELGIUM = st.tuples(st.floats(2.55, 6.35), st.floats(49.55, 51.45))  # (lon, lat)


@settings(max_examples=60, deadline=None)
@given(
    cases=st.lists(st.lists(BELGIUM, min_size=1, max_size=4), min_size=1, max_size=5),
    pick=st.integers(0, 10_000),
)
def test_belgian_zones_are_never_flagged_and_one_swapped_zone_always_is(
    cases: list[list[tuple[float, float]]], pick: int
) -> None:
    def doc(swap: tuple[int, int] | None) -> dict[str, Any]:
        out = []
        for c, zones in enumerate(cases):
            feats = []
            for z, (lon, lat) in enumerate(zones):
                lon, lat = (lat, lon) if swap == (c, z) else (lon, lat)
                feats.append(zone(lon, lat, f"zone {z}"))
            out.append(case(f"C{c}", *feats))
        return {"cases": out}

    assert parse_case_file(doc(None)).cases  # no false alarm
    positions = [(c, z) for c, zones in enumerate(cases) for z in range(len(zones))]
    if len(positions) < 2:
        return  # a lone zone in the file cannot be judged
    c, z = positions[pick % len(positions)]
    problems = _problems(doc((c, z)))
    assert problems and all("written as [lat, lon]" in p for p in problems)
    # The swapped zone's case is named: its own problem, or one naming both of two cases.
    assert any(p.startswith(f"cases[{c}] (C{c}):") or f"case C{c} " in p for p in problems)


def test_a_device_id_no_broker_account_can_have_is_warned_about_at_import() -> None:
    doc = {
        "cases": [
            {"id": "A", "offenders": ["tag 1"], "protected": ["p:1"], "order": {"distance_m": 1}}
        ]
    }
    warned = parse_case_file(doc).warnings
    assert len(warned) == 2 and all("'proximity broker config' will refuse it" in w for w in warned)
    assert warned[0].startswith("device 'p:1'") and warned[1].startswith("device 'tag 1'")


def test_an_integer_beyond_any_float_is_a_problem_not_a_crash() -> None:
    huge = 10**400
    doc = {
        "cases": [
            {
                "id": "B",
                "offenders": ["t"],
                "protected": ["p"],
                "order": {"distance_m": huge},
                "mobility": {"offenders": huge},
                "zones": {
                    "type": "FeatureCollection",
                    "features": [
                        {
                            "type": "Feature",
                            "geometry": {"type": "Point", "coordinates": [4.35, huge]},
                            "properties": {"kind": "exclusion", "label": "x", "radius_m": huge},
                        }
                    ],
                },
            }
        ],
        "devices": [{"id": "t", "reporting_interval_s": huge, "signal_grace_s": -huge}],
    }
    with pytest.raises(CaseFileError) as err:
        parse_case_file(doc)
    text = "\n".join(err.value.problems)
    for field in ("order.distance_m", "mobility.offenders", "centre", "reporting_interval_s"):
        assert field in text, text
    assert "signal_grace_s" in text
