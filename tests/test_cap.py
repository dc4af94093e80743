"""Every alarm message also as CAP 1.2, valid against the official OASIS schema."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from cic.cap import CAP_NS, CapFormatter, cap_time
from proximity.events import AlarmEvent
from tests.test_formats import corpus  # noqa: F401  (the fixture)

XSD = Path(__file__).resolve().parents[2] / "shared" / "standards" / "CAP-v1.2.xsd"
NS = {"cap": CAP_NS}


@pytest.fixture(scope="module")
def alerts(corpus: list[tuple[AlarmEvent, dict[str, Any]]]) -> list[tuple[dict[str, Any], Any]]:  # noqa: F811
    fmt = CapFormatter()
    return [(m, etree.fromstring(fmt.alert(m))) for _, m in corpus]


@pytest.mark.skipif(not XSD.exists(), reason=f"the CAP 1.2 schema is not at {XSD}")
def test_every_alert_validates_against_the_cap_1_2_schema(
    alerts: list[tuple[dict[str, Any], Any]],
) -> None:
    schema = etree.XMLSchema(etree.parse(str(XSD)))
    for m, xml in alerts:
        assert schema.validate(xml), (m["type"], m["state"], schema.error_log.last_error)
    # And the schema does reject a broken alert: a time with "Z", as CAP forbids.
    broken = copy.deepcopy(alerts[0][1])
    broken.find("cap:sent", NS).text = "2026-11-23T10:00:00Z"  # date-ok: the "Z" is the point
    assert not schema.validate(broken)


def test_updates_reference_the_first_alert_of_their_alarm(
    alerts: list[tuple[dict[str, Any], Any]],
) -> None:
    first: dict[str, str] = {}
    for m, xml in alerts:
        ident = xml.findtext("cap:identifier", namespaces=NS)
        sent = xml.findtext("cap:sent", namespaces=NS)
        # The alarm's incident (the alarms of one situation), then the alarm (the watchdog's
        # messages, sent past the stuck decision loop, have no incident).
        incident = m["incident_id"]
        assert (incident is None) == (m["type"] == "engine_fault" and m["level"] == "escalation")
        expected = f"{incident} {m['alarm_id']}" if incident else m["alarm_id"]
        assert xml.findtext("cap:incidents", namespaces=NS) == expected
        if m["state"] == "open":
            assert xml.findtext("cap:msgType", namespaces=NS) == "Alert"
            assert xml.find("cap:references", NS) is None
            first[m["alarm_id"]] = f"proximity-engine,{ident},{sent}"
        elif m["alarm_id"] in first:
            assert xml.findtext("cap:references", namespaces=NS) == first[m["alarm_id"]]
    assert len(first) >= 10
    idents = [xml.findtext("cap:identifier", namespaces=NS) for _, xml in alerts]
    assert len(set(idents)) == len(idents)


def test_the_fields_the_cic_expects(alerts: list[tuple[dict[str, Any], Any]]) -> None:
    for m, xml in alerts:
        assert xml.findtext("cap:status", namespaces=NS) == "Actual"
        assert xml.findtext("cap:scope", namespaces=NS) == "Restricted"
        assert xml.findtext("cap:restriction", namespaces=NS)
        assert xml.findtext("cap:info/cap:category", namespaces=NS) == "Security"
        assert xml.findtext("cap:info/cap:event", namespaces=NS).startswith("Stalking alarm: ")
        assert re.fullmatch(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", xml.findtext("cap:sent", namespaces=NS)
        )
        expected_type = {"open": "Alert", "closed": "Cancel"}.get(m["state"], "Update")
        assert xml.findtext("cap:msgType", namespaces=NS) == expected_type
        if m["state"] == "ended":
            assert xml.findtext("cap:info/cap:responseType", namespaces=NS) == "AllClear"
            assert xml.findtext("cap:info/cap:urgency", namespaces=NS) == "Past"
        circle = xml.findtext("cap:info/cap:area/cap:circle", namespaces=NS)
        if m["offender"]["lat"] is not None:
            lat, lon, r = re.fullmatch(r"(-?[\d.]+),(-?[\d.]+) ([\d.]+)", circle).groups()  # type: ignore[union-attr]
            assert float(lat) == pytest.approx(m["offender"]["lat"], abs=1e-6)
            assert float(lon) == pytest.approx(m["offender"]["lon"], abs=1e-6)
            # The 99 % radius of his position, in km: about twice the 68 % radius.
            assert float(r) == pytest.approx(
                m["offender"]["radius_m"] * 2.0 / 1000, rel=0.02, abs=0.001
            )
    [panic] = [xml for m, xml in alerts if m["type"] == "panic"]
    assert panic.findtext("cap:info/cap:severity", namespaces=NS) == "Extreme"
    assert panic.findtext("cap:info/cap:certainty", namespaces=NS) == "Observed"


def test_cap_times_and_senders() -> None:
    assert cap_time("2026-11-23T10:00:00.750Z") == "2026-11-23T10:00:00+00:00"  # date-ok
    with pytest.raises(ValueError, match="CAP sender"):
        CapFormatter("cic engine")
