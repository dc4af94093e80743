"""``proximity broker config`` without a broker: the accounts, the ACL, the password hashes
and the command's refusals (the files themselves are tried against a real Mosquitto in
tests/test_integration_security.py)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from proximity.cases import Case, Device, parse_case_file
from proximity.errors import CaseFileError, ConfigError
from service.broker import acl_text, password_hash, plan_accounts
from tests.conftest import import_cases, run_cli


def _case(case_id: str, offender: str, protected: str) -> Case:
    return Case(case_id, (offender,), (protected,), 500.0, 1000.0)


def test_a_password_is_hashed_as_mosquitto_passwd_does() -> None:
    salt = bytes(range(12))
    hashed = password_hash("s3cret", salt)
    kind, iterations, salt64, digest64 = hashed.split("$")[1:]
    assert (kind, iterations, base64.b64decode(salt64)) == ("7", "101", salt)
    expected = hashlib.pbkdf2_hmac("sha512", b"s3cret", salt, 101)
    assert base64.b64decode(digest64) == expected
    assert password_hash("s3cret") != password_hash("s3cret")  # a new salt each time


def test_each_device_gets_only_its_own_topics_and_a_desk_only_its_acknowledgements() -> None:
    cases = [_case("A", "tag-1", "phone-1"), _case("B", "tag-2", "phone-1")]
    devices = [Device("phone-1", {"owntracks": {"user": "els", "device": "pixel"}})]
    accounts = {a.name: a for a in plan_accounts(cases, devices, ["desk-1"])}
    assert set(accounts) == {
        "proximity-engine", "proximity-engine-out", "desk-1", "desk-1-watch", "tag-1", "tag-2",
        "phone-1",
    }  # fmt: skip
    tag = accounts["tag-1"]
    assert set(tag.write) == {"devices/tag-1/fix", "devices/tag-1/event", "devices/tag-1/cmd/ack"}
    assert set(tag.read) == {"devices/tag-1/notice", "devices/tag-1/cmd"}
    phone = accounts["phone-1"]
    # The app's own topic and what it publishes under it (event, info, waypoints, ...).
    assert {"owntracks/els/pixel", "owntracks/els/pixel/#"} <= set(phone.write)
    assert accounts["desk-1"].write == ("cic/acks/desk-1",)
    watch = accounts["desk-1-watch"]  # the desk's listener: reads as the desk, writes nothing
    assert watch.read == accounts["desk-1"].read and watch.write == ()
    assert accounts["proximity-engine"].write == ()  # the intake writes nothing
    assert "cic/acks/+" in accounts["proximity-engine"].read
    assert accounts["proximity-engine-out"].read == ()
    acl = acl_text(list(accounts.values()), "registry.sqlite")
    block = acl.split("user tag-1\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert sorted(block) == sorted(
        [f"topic read {t}" for t in tag.read] + [f"topic write {t}" for t in tag.write]
    )


def test_names_that_cannot_be_accounts_are_refused_naming_them() -> None:
    with pytest.raises(ConfigError) as info:
        plan_accounts([_case("A", "tag 1", "proximity-engine")], [], ["desk:1", "desk-2"])
    text = str(info.value)
    assert "device 'tag 1'" in text and "CIC desk 'desk:1'" in text
    assert "device 'proximity-engine' has the name of the engine's account" in text
    assert "desk-2" not in text


def test_the_command_refuses_what_it_cannot_use(tmp_path: Path) -> None:
    missing = run_cli("broker", "config", "--db", str(tmp_path / "none.sqlite"), "--out", "x")
    assert missing.returncode == 1 and "no registry at" in missing.stderr
    db = import_cases(
        tmp_path, [{"id": "A", "offenders": ["t"], "protected": ["p"], "order": {"distance_m": 1}}]
    )
    half = run_cli(
        "broker", "config", "--db", str(db), "--out", str(tmp_path / "b"), "--server-cert", "c"
    )
    assert half.returncode == 1 and "go together" in half.stderr
    port = run_cli("broker", "config", "--db", str(db), "--out", str(tmp_path / "b"), "--port", "0")
    assert port.returncode == 1 and "--port must be 1-65535" in port.stderr
    bind = run_cli(
        "broker", "config", "--db", str(db), "--out", str(tmp_path / "b"), "--bind", "x y"
    )
    assert bind.returncode == 1 and "neither a host name nor an address" in bind.stderr
    assert not (tmp_path / "b").exists()  # nothing written on refusal
    made = run_cli("broker", "config", "--db", str(db), "--out", str(tmp_path / "b"))
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "b" / "accounts.json").stat().st_mode & 0o077 == 0
    assert (tmp_path / "b" / "ca.key").stat().st_mode & 0o077 == 0
    drop = run_cli(
        "broker", "config", "--db", str(db), "--out", str(tmp_path / "b"), "--drop-cic", "d7"
    )
    assert drop.returncode == 1 and "--drop-cic d7: no such desk" in drop.stderr
    onto_file = run_cli("broker", "config", "--db", str(db), "--out", str(db))
    assert (
        onto_file.returncode == 1 and "cannot write the broker's configuration" in onto_file.stderr
    )


def test_a_rerun_keeps_the_listener_it_is_not_told_to_change(tmp_path: Path) -> None:
    db = import_cases(
        tmp_path, [{"id": "A", "offenders": ["t"], "protected": ["p"], "order": {"distance_m": 1}}]
    )
    out = str(tmp_path / "b")
    first = run_cli(
        "broker", "config", "--db", str(db), "--out", out, "--host", "broker.example.org",
        "--port", "18883", "--bind", "10.0.0.5",
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    again = run_cli("broker", "config", "--db", str(db), "--out", out)
    assert again.returncode == 0, again.stderr
    assert "kept from the earlier run: hosts broker.example.org" in again.stdout
    assert "mqtts://broker.example.org:18883" in again.stdout
    conf = (tmp_path / "b" / "mosquitto.conf").read_text()
    assert "listener 18883 10.0.0.5" in conf


def test_names_from_the_case_file_cannot_write_rules_into_the_acl() -> None:
    # A line break in an OwnTracks name would start an ACL rule of its own.
    hostile = [Device("tag-1", {"owntracks": {"user": "bob", "device": "x\ntopic readwrite cic"}})]
    with pytest.raises(ConfigError, match="cannot be written into the ACL"):
        acl_text(plan_accounts([_case("A", "tag-1", "p")], hostile, []), "r.sqlite")
    case = {"id": "A", "offenders": ["tag-1"], "protected": ["p"], "order": {"distance_m": 1}}
    app = {"user": "bob", "device": "x\ntopic readwrite cic"}
    with pytest.raises(CaseFileError, match="'owntracks' must be"):  # refused at import too
        parse_case_file({"cases": [case], "devices": [{"id": "tag-1", "owntracks": app}]})
    # Nor may two devices share one app's topic (the offender would speak for the victim).
    shared = [
        Device("phone-1", {"owntracks": {"user": "els", "device": "pixel"}}),
        Device("tag-1", {"owntracks": {"user": "els", "device": "pixel"}}),
    ]
    with pytest.raises(ConfigError, match="both name the OwnTracks app owntracks/els/pixel"):
        plan_accounts([_case("A", "tag-1", "phone-1")], shared, [])


def _one_case(tmp_path: Path, offender: str = "t") -> Path:
    case = {"id": "A", "offenders": [offender], "protected": ["p"], "order": {"distance_m": 1}}
    return import_cases(tmp_path, [case])


def test_a_rerun_keeps_the_operators_own_certificate_and_the_persistence_folder(
    tmp_path: Path,
) -> None:
    db = _one_case(tmp_path)
    own = tmp_path / "own"
    assert run_cli("broker", "config", "--db", str(db), "--out", str(own)).returncode == 0
    out, store = tmp_path / "b", tmp_path / "store"
    first = run_cli(
        "broker", "config", "--db", str(db), "--out", str(out), "--server-cert",
        str(own / "server.crt"), "--server-key", str(own / "server.key"), "--ca",
        str(own / "ca.crt"), "--persistence", str(store),
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    again = run_cli("broker", "config", "--db", str(db), "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert "kept from the earlier run: your own certificate" in again.stdout
    conf = (out / "mosquitto.conf").read_text()
    assert f"certfile {own / 'server.crt'}" in conf and f"persistence_location {store}/" in conf
    assert not (out / "ca.crt").exists()  # no private CA was made beside the operator's


def test_the_cas_key_may_be_kept_elsewhere_until_a_certificate_must_be_signed(
    tmp_path: Path,
) -> None:
    db = _one_case(tmp_path)
    out = tmp_path / "b"
    config = ["broker", "config", "--db", str(db), "--out", str(out)]
    assert run_cli(*config).returncode == 0
    ca = (out / "ca.crt").read_bytes()
    (out / "ca.key").rename(tmp_path / "ca.key")  # off the broker, as the docs advise
    assert run_cli(*config).returncode == 0
    assert (out / "ca.crt").read_bytes() == ca  # the same CA: every client keeps trusting it
    new_host = run_cli(*config, "--host", "broker.example.org")
    assert (
        new_host.returncode == 1 and "put " in new_host.stderr and "ca.key back" in new_host.stderr
    )
    (tmp_path / "ca.key").rename(out / "ca.key")
    assert run_cli(*config, "--host", "broker.example.org").returncode == 0


def test_a_name_that_changes_role_gets_a_new_password(tmp_path: Path) -> None:
    # The device x is gone and a desk called x comes: the device's holder must not be it.
    db = _one_case(tmp_path, offender="x")
    out = tmp_path / "b"
    assert run_cli("broker", "config", "--db", str(db), "--out", str(out)).returncode == 0
    before = {
        a["account"]: a["password"]
        for a in json.loads((out / "accounts.json").read_text())["accounts"]
    }
    assert run_cli("cases", "remove", "A", "--db", str(db)).returncode == 0
    _one_case(tmp_path, offender="t")
    again = run_cli("broker", "config", "--db", str(db), "--out", str(out), "--cic", "x")
    assert again.returncode == 0, again.stderr
    after = {
        a["account"]: a["password"]
        for a in json.loads((out / "accounts.json").read_text())["accounts"]
    }
    assert after["x"] != before["x"]


def test_the_operator_services_operators_are_cic_desks(tmp_path: Path) -> None:
    db = _one_case(tmp_path, offender="t")
    for name, role in (("desk-9", "operator"), ("cm-9", "case_manager")):
        assert run_cli("users", "add", name, "--role", role, "--db", str(db)).returncode == 0
    out = tmp_path / "b"
    made = run_cli("broker", "config", "--db", str(db), "--out", str(out))
    assert made.returncode == 0, made.stderr
    assert "CIC desks of the operator service's operators: desk-9" in made.stdout
    roles = {
        a["account"]: a["role"] for a in json.loads((out / "accounts.json").read_text())["accounts"]
    }
    assert roles["desk-9"] == "cic" and "desk-9-watch" in roles and "cm-9" not in roles
    assert run_cli("users", "revoke", "desk-9", "--db", str(db)).returncode == 0
    again = run_cli("broker", "config", "--db", str(db), "--out", str(out), "--drop-cic", "desk-9")
    assert again.returncode == 0, again.stderr
    assert "revoked operators desk-9" in again.stdout
    accounts = [a["account"] for a in json.loads((out / "accounts.json").read_text())["accounts"]]
    assert "desk-9" not in accounts
