"""Every alarm message the engine makes validates against the published JSON Schema."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema
import pytest

from cic.messages import ALARM_SCHEMA_PATH, alarm_message
from proximity.clock import iso_utc
from proximity.events import AlarmEvent, AlarmType
from tests.alarm_corpus import every_alarm

SCHEMA = json.loads(ALARM_SCHEMA_PATH.read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


@pytest.fixture(scope="module")
def corpus() -> list[tuple[AlarmEvent, dict[str, Any]]]:
    events, case = every_alarm()
    out = []
    for e in events:
        m = alarm_message(e, case)
        m["times"]["published"] = iso_utc(e.t_decided + 0.001)
        out.append((e, json.loads(json.dumps(m, allow_nan=False))))  # as it goes on the wire
    return out


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_the_corpus_covers_every_alarm_type_state_and_level(
    corpus: list[tuple[AlarmEvent, dict[str, Any]]],
) -> None:
    kinds = {m["type"] for _, m in corpus}
    assert kinds == {t.name.lower() for t in AlarmType}
    states = {m["state"] for _, m in corpus}
    assert states == {"open", "update", "ended", "acknowledged", "closed", "suspended"}
    assert {m["level"] for _, m in corpus} == {"pre_alert", "alarm", "escalation"}


def test_every_message_validates(corpus: list[tuple[AlarmEvent, dict[str, Any]]]) -> None:
    for e, m in corpus:
        errors = [f"{list(x.path)}: {x.message}" for x in VALIDATOR.iter_errors(m)]
        assert errors == [], (e.type, e.state, errors)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda m: m.pop("alarm_id"), "a required field is missing"),
        (lambda m: m.update(category="panic"), "not marked as a stalking alarm"),
        (lambda m: m.update(level="red"), "an unknown level"),
        (lambda m: m["times"].update(decided="2026-11-23 10:00:00"), "a time without T and Z"),
        (lambda m: m["offender"].update(lat=91.0), "a latitude out of range"),
        (lambda m: m.update(probability=1.5), "a probability above 1"),
        (lambda m: m.update(operator="op-1"), "an operator on an open message"),
        (lambda m: m.update(extra_field=1), "a field the contract does not have"),
    ],
)
def test_the_schema_rejects_a_broken_message(
    corpus: list[tuple[AlarmEvent, dict[str, Any]]], change: Any, why: str
) -> None:
    [opened] = [m for e, m in corpus if m["type"] == "proximity" and m["state"] == "open"][:1]
    broken = copy.deepcopy(opened)
    change(broken)
    assert not VALIDATOR.is_valid(broken), why


def test_zone_alarms_must_name_their_zone(corpus: list[tuple[AlarmEvent, dict[str, Any]]]) -> None:
    zone = copy.deepcopy(next(m for _, m in corpus if m["type"] == "zone"))
    assert VALIDATOR.is_valid(zone)
    zone["zone"] = None
    assert not VALIDATOR.is_valid(zone)
