from __future__ import annotations

import copy
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from cli.main import main
from proximity.cases import parse_case_file, top_speeds
from proximity.errors import CaseFileError
from service.settings import load_settings
from storage.registry import SCHEMA_VERSION, Registry
from tests.conftest import import_cases, run_cli, write_cases

GOOD: dict[str, Any] = {
    "cases": [
        {
            "id": "BE-2026-0001",
            "offenders": ["tag-17"],
            "protected": ["phone-42"],
            "order": {"distance_m": 500, "warning_distance_m": 1000, "escalation_distance_m": 200},
            "summary": {"offender_name": "Jan", "victim_phone": "+32 470 00 00 00"},
            "zones": {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {
                            "kind": "exclusion",
                            "label": "victim's home",
                            "radius_m": 200,
                        },
                        "geometry": {"type": "Point", "coordinates": [4.35, 50.85]},
                    }
                ],
            },
        },
        # the same offender in a second case, and a second offender for the same victim
        {
            "id": "BE-2026-0002",
            "offenders": ["tag-17", "tag-18"],
            "protected": ["phone-43"],
            "order": {"distance_m": 200},
        },
        {
            "id": "BE-2026-0003",
            "offenders": ["tag-19"],
            "protected": ["phone-42"],
            "order": {"distance_m": 300},
        },
    ],
    "devices": [
        {
            "id": "phone-42",
            "owntracks": {"user": "jane", "device": "nokia"},
            "reporting_interval_s": 30,
        }
    ],
}


def test_parse_valid_file_with_defaults() -> None:
    cf = parse_case_file(GOOD)
    assert [c.id for c in cf.cases] == ["BE-2026-0001", "BE-2026-0002", "BE-2026-0003"]
    assert cf.cases[1].warning_distance_m == 400.0  # default: twice the order distance
    assert cf.devices[0].info["owntracks"] == {"user": "jane", "device": "nokia"}


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("cases", 0, "order", "distance_m"), -5, "cases[0] (BE-2026-0001): 'order.distance_m'"),
        (("cases", 0, "order", "warning_distance_m"), 100, "'order.warning_distance_m' must be"),
        (("cases", 0, "order", "escalation_distance_m"), 600, "'order.escalation_distance_m'"),
        (("cases", 1, "offenders"), [], "cases[1] (BE-2026-0002): 'offenders' must be a non-empty"),
        (("cases", 1, "protected"), ["phone-43", "tag-18"], "'tag-18' is both an offender and"),
        (("cases", 0, "protected"), ["devices/x"], "'protected[0]'"),
        (
            ("cases", 0, "summary"),
            {"victim_phone": 32470000000},
            "'summary.victim_phone' must be text",
        ),
        (
            ("cases", 2, "id"),
            "BE-2026-0001",
            "cases[2] (BE-2026-0001): the id appears more than once",
        ),
        (
            ("cases", 0, "zones", "features", 0, "properties", "kind"),
            "forbidden",
            "'properties.kind' must be 'exclusion' or 'inclusion'",
        ),
    ],
)
def test_errors_name_the_case_and_the_field(
    path: tuple[Any, ...], value: Any, message: str
) -> None:
    doc = copy.deepcopy(GOOD)
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(CaseFileError) as info:
        parse_case_file(doc, "cases.json")
    assert any(message in p for p in info.value.problems), info.value.problems
    assert "nothing was imported" in str(info.value)


def test_every_problem_is_listed_at_once() -> None:
    doc = copy.deepcopy(GOOD)
    doc["cases"][0]["order"]["distance_m"] = "far"
    doc["cases"][2]["offenders"] = "tag-19"
    with pytest.raises(CaseFileError) as info:
        parse_case_file(doc)
    assert len(info.value.problems) == 2


def test_registry_round_trip_and_replace(tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    with Registry(db) as reg:
        report = reg.import_file(parse_case_file(GOOD))
        assert report.created == ("BE-2026-0001", "BE-2026-0002", "BE-2026-0003")
        changed = copy.deepcopy(GOOD)
        changed["cases"] = [dict(changed["cases"][1], offenders=["tag-20"])]
        report = reg.import_file(parse_case_file(changed))
        assert report.updated == ("BE-2026-0002",)
    with Registry(db) as reg:  # reopened from the file
        cases = {c.id: c for c in reg.cases()}
    assert cases["BE-2026-0002"].offenders == ("tag-20",)
    assert cases["BE-2026-0001"].summary["offender_name"] == "Jan"
    assert cases["BE-2026-0001"].zones["features"][0]["properties"]["label"] == "victim's home"
    assert cases["BE-2026-0003"].protected == ("phone-42",)


def test_mobility_is_parsed_validated_and_kept_by_the_registry(tmp_path: Path) -> None:
    doc = copy.deepcopy(GOOD)
    doc["cases"][0]["mobility"] = {"offenders": "driving", "protected": 2.0}
    doc["cases"][1]["mobility"] = "walking"
    doc["devices"] = [{"id": "tag-18", "mobility": "cycling"}]
    parsed = parse_case_file(doc)
    first, second = parsed.cases[0], parsed.cases[1]
    assert (first.offender_top_speed_mps, first.protected_top_speed_mps) == (40.0, 2.0)
    assert (second.offender_top_speed_mps, second.protected_top_speed_mps) == (3.0, 3.0)
    assert top_speeds(parsed.cases, parsed.devices, 40.0) == {
        "tag-17": 40.0,  # driving in case 1 wins over walking in case 2: the higher counts
        "tag-18": 12.0,  # its own entry
        "phone-42": 2.0,  # case 1 says 2 m/s; case 3 says nothing, which does not override
        "phone-43": 3.0,
        "tag-19": 40.0,  # no case says anything: the default
    }
    db = tmp_path / "r.sqlite"
    with Registry(db) as reg:
        reg.import_file(parsed)
    with Registry(db) as reg:
        cases = {c.id: c for c in reg.cases()}
        devices = reg.devices()
    assert cases["BE-2026-0001"].offender_top_speed_mps == 40.0
    assert cases["BE-2026-0001"].protected_top_speed_mps == 2.0
    assert cases["BE-2026-0003"].offender_top_speed_mps is None
    assert devices[0].info["mobility"] == "cycling"

    bad = copy.deepcopy(GOOD)
    bad["cases"][0]["mobility"] = "teleport"
    bad["cases"][1]["mobility"] = {"offenders": -3}
    bad["devices"] = [{"id": "tag-18", "mobility": True}]
    with pytest.raises(CaseFileError) as info:
        parse_case_file(bad)
    problems = "\n".join(info.value.problems)
    assert "cases[0] (BE-2026-0001): 'mobility' must be one of 'walking'" in problems
    assert "cases[1] (BE-2026-0002): 'mobility.offenders' must be a speed" in problems
    assert "devices[0] (tag-18): 'mobility'" in problems


def test_registry_of_schema_1_is_migrated(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)
    con.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
        CREATE TABLE cases (id TEXT PRIMARY KEY, order_distance_m REAL NOT NULL,
            warning_distance_m REAL NOT NULL, summary TEXT NOT NULL, zones TEXT NOT NULL,
            updated_at TEXT NOT NULL);
        INSERT INTO cases VALUES ('OLD-1', 500, 1000, '{}',
            '{"type": "FeatureCollection", "features": []}', '2026-11-01');
        CREATE TABLE case_devices (case_id TEXT NOT NULL, device_id TEXT NOT NULL,
            role TEXT NOT NULL, position INTEGER NOT NULL, PRIMARY KEY (case_id, device_id));
        INSERT INTO case_devices VALUES ('OLD-1', 'tag-1', 'offender', 0);
        INSERT INTO case_devices VALUES ('OLD-1', 'phone-1', 'protected', 0);
        CREATE TABLE devices (id TEXT PRIMARY KEY, info TEXT NOT NULL);
        """
    )
    con.commit()
    con.close()
    with Registry(db) as reg:
        [old] = reg.cases()
        assert (old.id, old.offender_top_speed_mps, old.escalation_distance_m) == (
            "OLD-1",
            None,
            None,
        )
        reg.import_file(parse_case_file(GOOD))
        by_id = {c.id: c for c in reg.cases()}
        assert len(by_id) == 4 and by_id["BE-2026-0001"].escalation_distance_m == 200.0
    version = sqlite3.connect(db).execute("SELECT value FROM meta").fetchone()[0]
    assert int(version) == SCHEMA_VERSION == 5


def test_registry_in_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    from proximity.errors import RegistryError

    with pytest.raises(RegistryError, match="does not exist"):
        Registry(tmp_path / "nope" / "r.sqlite")


def test_cli_import_and_list(tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    f = tmp_path / "cases.json"
    f.write_text(json.dumps(GOOD))
    result = run_cli("cases", "import", str(f), "--db", str(db))
    assert result.returncode == 0, result.stderr
    assert "3 new" in result.stdout
    listed = run_cli("cases", "list", "--db", str(db))
    assert listed.returncode == 0
    assert "BE-2026-0002  tag-17,tag-18" in listed.stdout
    assert "3 case(s)" in listed.stdout
    as_json = json.loads(run_cli("cases", "list", "--db", str(db), "--json").stdout)
    assert as_json[0]["order"] == {
        "distance_m": 500.0,
        "warning_distance_m": 1000.0,
        "escalation_distance_m": 200.0,
    }
    assert as_json[1]["order"] == {"distance_m": 200.0, "warning_distance_m": 400.0}


def test_cli_bad_file_imports_nothing(tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    doc = copy.deepcopy(GOOD)
    doc["cases"][2]["order"] = {
        "distance_m": 0
    }  # the last case is bad: the first two must not land
    f = tmp_path / "cases.json"
    f.write_text(json.dumps(doc))
    result = run_cli("cases", "import", str(f), "--db", str(db))
    assert result.returncode == 2
    assert "cases[2] (BE-2026-0003): 'order.distance_m'" in result.stderr
    if db.exists():
        assert sqlite3.connect(db).execute("SELECT count(*) FROM cases").fetchone()[0] == 0

    f.write_text("{not json")
    result = run_cli("cases", "import", str(f), "--db", str(db))
    assert result.returncode == 2 and "not valid JSON" in result.stderr


def test_settings_precedence_flag_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "p.toml"
    conf.write_text('broker = "mqtt://file:1"\ndb = "file.sqlite"\nmargin_min_m = 30\n')
    monkeypatch.setenv("PROXIMITY_DB", "env.sqlite")
    s = load_settings(conf)
    assert (s.broker, str(s.db), s.margin_min_m) == ("mqtt://file:1", "env.sqlite", 30.0)
    s = load_settings(conf, db=Path("flag.sqlite"), broker=None)
    assert (s.broker, str(s.db)) == ("mqtt://file:1", "flag.sqlite")
    conf.write_text("margin_fraction = 7\n")
    from proximity.errors import ConfigError

    with pytest.raises(ConfigError, match="margin_fraction"):
        load_settings(conf)


def test_help_explains_every_command() -> None:
    for args in (
        ["--help"],
        ["run", "--help"],
        ["config", "show", "--help"],
        ["cases", "import", "--help"],
        ["cases", "remove", "--help"],
        ["demo", "--help"],
    ):
        result = run_cli(*args)
        assert result.returncode == 0
    assert "PROXIMITY_BROKER" in run_cli("run", "--help").stdout


def _with_devices() -> dict[str, Any]:
    doc = copy.deepcopy(GOOD)
    doc["cases"][0]["mobility"] = {"offenders": "driving", "protected": 2.0}
    doc["devices"] = [
        {
            "id": "phone-42",
            "owntracks": {"user": "jane", "device": "nokia", "key": "0wnTr4cks-key"},
            "reporting_interval_s": 30,
        },
        {
            "id": "tag-18",
            "osmand": {"secret": "Zq81-tag-secret", "id": "48241179"},
            "mobility": "cycling",
            "signal_grace_s": 10,
        },
    ]
    return doc


def _import(tmp_path: Path, doc: dict[str, Any]) -> Path:
    db = tmp_path / "r.sqlite"
    with Registry(db) as reg:
        reg.import_file(parse_case_file(doc))
    return db


def test_cli_list_shows_devices_mappings_intervals_and_mobility_with_secrets_redacted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _import(tmp_path, _with_devices())
    assert main(["cases", "list", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "0wnTr4cks-key" not in out and "Zq81-tag-secret" not in out
    lines = [" ".join(line.split()) for line in out.splitlines()]
    assert "BE-2026-0001 tag-17 phone-42 500 1000 off 40 m/s, prot 2 m/s 1" in lines
    assert "BE-2026-0002 tag-17,tag-18 phone-43 200 400 - 0" in lines
    assert (
        "BE-2026-0001 phone-42 protected owntracks jane/nokia key: *** 30 60 (default)"
        " 2 m/s (case)" in lines
    )
    assert (
        "BE-2026-0002 tag-18 offender osmand id 48241179 secret: *** 60 (default) 10"
        " 12 m/s (device)" in lines
    )
    assert "BE-2026-0002 tag-17 offender - 60 (default) 60 (default) 40 m/s (another case)" in (
        lines
    )
    assert "BE-2026-0003 tag-19 offender - 60 (default) 60 (default) 40 m/s (default)" in lines

    assert main(["cases", "list", "--db", str(db), "--json"]) == 0
    raw = capsys.readouterr().out
    assert "0wnTr4cks-key" not in raw and "Zq81-tag-secret" not in raw
    cases = {c["id"]: c for c in json.loads(raw)}
    first = cases["BE-2026-0001"]
    assert first["mobility"] == {"offenders_mps": 40.0, "protected_mps": 2.0}
    tag17, phone42 = first["devices"]
    assert tag17["id"] == "tag-17" and tag17["role"] == "offender"
    assert phone42["owntracks"] == {"user": "jane", "device": "nokia", "key": "***"}
    assert phone42["reporting_interval_s"] == 30
    assert phone42["effective"] == {
        "reporting_interval_s": 30,
        "signal_grace_s": 60.0,
        "top_speed_mps": 2.0,
        "top_speed_from": "case",
    }
    tag18 = cases["BE-2026-0002"]["devices"][1]
    assert tag18["osmand"] == {"secret": "***", "id": "48241179"}
    assert tag18["mobility"] == "cycling" and tag18["effective"]["top_speed_mps"] == 12.0
    assert cases["BE-2026-0002"]["mobility"] == {"offenders_mps": None, "protected_mps": None}


def test_cli_remove_ends_a_case_and_keeps_its_evidence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from storage.evidence import EvidenceLog

    db = _import(tmp_path, _with_devices())
    evidence = db.with_suffix(".evidence.sqlite")
    log = EvidenceLog(evidence)
    log.append([("BE-2026-0002", 1.0, "alarm", {"state": "opened"})])
    log.close()
    before = evidence.read_bytes()

    assert main(["cases", "remove", "BE-2026-0002", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        f"removed case BE-2026-0002 (offenders tag-17, tag-18; protected phone-43) from {db};"
        " an engine running on this registry stops watching it at once",
        "removed the description(s) of tag-18 (in no other case)",
        f"evidence record {evidence}: kept untouched",
    ]
    with Registry(db) as reg:
        assert [c.id for c in reg.cases()] == ["BE-2026-0001", "BE-2026-0003"]
        assert [d.id for d in reg.devices()] == ["phone-42"]
        member = reg._db.execute(
            "SELECT count(*) FROM case_devices WHERE case_id='BE-2026-0002'"
        ).fetchone()
    assert member == (0,)
    assert evidence.read_bytes() == before
    log = EvidenceLog(evidence)
    assert log.cases() == ["BE-2026-0002"]  # still exportable
    log.close()

    # A device another case uses keeps its description; --keep-devices keeps the others.
    assert main(["cases", "remove", "BE-2026-0003", "--db", str(db)]) == 0
    assert "kept the description(s) of phone-42 (in another case)" in capsys.readouterr().out
    assert main(["cases", "remove", "BE-2026-0001", "--db", str(db), "--keep-devices"]) == 0
    assert "kept the description(s) of phone-42 (--keep-devices)" in capsys.readouterr().out
    with Registry(db) as reg:
        assert reg.cases() == [] and [d.id for d in reg.devices()] == ["phone-42"]


def test_cli_remove_of_an_unknown_case_says_how_to_see_the_ids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _import(tmp_path, GOOD)
    assert main(["cases", "remove", "BE-2026-9999", "--db", str(db)]) == 2
    assert capsys.readouterr().err == (
        f"error: no case 'BE-2026-9999' in {db};"
        f" 'proximity cases list --db {db}' shows the registered ids\n"
    )
    with Registry(db) as reg:
        assert len(reg.cases()) == 3
    missing = tmp_path / "none.sqlite"
    assert main(["cases", "remove", "X", "--db", str(missing)]) == 2
    assert f"registry {missing} does not exist" in capsys.readouterr().err
    assert not missing.exists()


def test_an_owntracks_app_another_registered_device_names_is_refused(tmp_path: Path) -> None:
    # The app's topic would be writable by two accounts: the offender could speak for the
    # victim's phone.
    case = {"id": "A", "offenders": ["tag-1"], "protected": ["phone-1"], "order": {"distance_m": 1}}
    app = {"user": "els", "device": "pixel"}
    db = import_cases(tmp_path, [case], [{"id": "phone-1", "owntracks": app}])
    second = write_cases(tmp_path / "b.json", [], [{"id": "tag-1", "owntracks": app}])
    out = run_cli("cases", "import", str(second), "--db", str(db))
    assert out.returncode != 0 and "OwnTracks els/pixel is already device 'phone-1'" in out.stderr
    # The same device described again, or the app moved within one file, is fine.
    moved = write_cases(
        tmp_path / "c.json",
        [],
        [{"id": "phone-1"}, {"id": "tag-1", "owntracks": app}],
    )
    assert run_cli("cases", "import", str(moved), "--db", str(db)).returncode == 0
