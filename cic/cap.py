"""The alarm messages as OASIS CAP 1.2 (Common Alerting Protocol) XML, for ``cic/alarms/cap``.

One CAP ``alert`` per alarm message (:func:`cic.messages.alarm_message`), built from the
JSON message so the two can never disagree:

* ``status`` Actual, ``scope`` Restricted (with the ``restriction`` CAP then requires: the
  message carries a protection order's personal data), ``info/category`` Security, ``event``
  "Stalking alarm: <type>".
* ``msgType``: Alert for the message that opens an alarm, Update for its changes,
  acknowledgements and its end (with ``responseType`` AllClear and ``urgency`` Past), Cancel
  when an operator closes it. Every later message ``references`` the first one
  (``sender,identifier,sent``), and ``incidents`` names the alarm's incident (the alarms of
  one situation: :mod:`proximity.incidents`) and the alarm id, so a CAP client groups them.
* ``urgency``, ``severity``, ``certainty`` follow the level and the verdict (a certain breach
  is Observed, a likely or possible one Likely or Possible).
* The area is a circle around the offender's estimated position whose radius is the 99 %
  radius of that estimate (CAP circles are "lat,lon radius" in kilometres), and a second one
  around the protected person's last position, so the team knows where both are.
* Times are CAP's ``YYYY-MM-DDThh:mm:ss+00:00`` (no fractions, no "Z").

The first message of each alarm is remembered (:class:`CapFormatter`) for the references.
"""

from __future__ import annotations

import math
import uuid
import xml.etree.ElementTree as ET
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

from numerics.uncertainty import K68, K99
from proximity.alarms import REMEMBERED

CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"
SENDER = "proximity-engine"
CAP_ID_NAMESPACE = uuid.UUID("8a1f5c3e-2d74-4b96-a0e8-6c9d3b7f1e52")
RESTRICTION = "CIC operators and intervention teams only: personal data of a protection order"
_SEVERITY = {"pre_alert": "Moderate", "alarm": "Severe", "escalation": "Extreme"}
_URGENCY = {"pre_alert": "Expected", "alarm": "Immediate", "escalation": "Immediate"}
_CERTAINTY = {
    "certain_breach": "Observed",
    "possible_breach": "Likely",
    "warning": "Possible",
    "clear": "Unlikely",
}
_INSTRUCTION = {
    "pre_alert": "Contact the offender and tell the offender to move away; the protected"
    " person need not be alarmed.",
    "alarm": "Alert the protected person and send an intervention team with the case file.",
    "escalation": "Highest priority: send the nearest intervention team to the protected"
    " person now.",
}

ET.register_namespace("", CAP_NS)


def cap_time(iso: str) -> str:
    """ISO 8601 UTC (``...T10:00:00.250Z``) -> CAP's ``2026-11-23T10:00:00+00:00``."""
    t = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(UTC)
    return t.replace(microsecond=0).isoformat()


class CapFormatter:
    """Turns alarm messages into CAP alerts, remembering each alarm's first alert."""

    def __init__(self, sender: str = SENDER) -> None:
        if any(c in sender for c in " ,<&"):
            raise ValueError(f"a CAP sender may not contain spaces, commas, < or &: {sender!r}")
        self.sender = sender
        self._first: OrderedDict[str, str] = OrderedDict()  # alarm id -> "sender,id,sent"

    def recall(self, first_alerts: dict[str, bytes]) -> int:
        """Remember the first alerts of alarms an earlier run raised (alarm id -> its first
        CAP alert, from the journal), so that later alerts reference them; how many."""
        n = 0
        for alarm_id, payload in first_alerts.items():
            try:
                root = ET.fromstring(payload)
            except ET.ParseError:
                continue
            parts = [root.findtext(f"{{{CAP_NS}}}{k}") for k in ("sender", "identifier", "sent")]
            if all(parts):
                self._first[alarm_id] = ",".join(p for p in parts if p)
                n += 1
        return n

    def alert(self, message: dict[str, Any]) -> bytes:
        """The CAP 1.2 XML of one alarm message (``times.published`` must be set)."""
        m = message
        sent = cap_time(m["times"]["published"])
        identifier = str(
            uuid.uuid5(
                CAP_ID_NAMESPACE,
                f"{m['alarm_id']}/{m['state']}/{m['level']}/{m['times']['decided']}",
            )
        )
        state = m["state"]
        msg_type = {"open": "Alert", "closed": "Cancel"}.get(state, "Update")
        first = self._first.get(m["alarm_id"])
        if state == "open" or first is None:
            # (An alarm whose first alert this process has not seen, after a restart, is
            # referenced from here on by its first alert seen.)
            self._first[m["alarm_id"]] = f"{self.sender},{identifier},{sent}"
            while len(self._first) > REMEMBERED:  # as many as the alarm book remembers
                self._first.popitem(last=False)
        if msg_type == "Alert" and first is not None:
            msg_type = "Update"  # the same alarm opened again after an operator closed it

        root = ET.Element(f"{{{CAP_NS}}}alert")
        _sub(root, "identifier", identifier)
        _sub(root, "sender", self.sender)
        _sub(root, "sent", sent)
        _sub(root, "status", "Actual")
        _sub(root, "msgType", msg_type)
        _sub(root, "source", m["source"])
        _sub(root, "scope", "Restricted")
        _sub(root, "restriction", RESTRICTION)
        _sub(root, "code", "stalking")
        _sub(root, "note", m["reason"])
        if first is not None and state != "open":
            _sub(root, "references", first)
        incident = m.get("incident_id")
        _sub(root, "incidents", f"{incident} {m['alarm_id']}" if incident else m["alarm_id"])
        self._info(root, m, state)
        return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))

    def _info(self, root: ET.Element, m: dict[str, Any], state: str) -> None:
        info = _sub(root, "info")
        _sub(info, "language", "en-US")
        _sub(info, "category", "Security")
        _sub(info, "event", f"Stalking alarm: {m['type'].replace('_', ' ')}")
        over = state in ("ended", "closed")
        level = m["level"]
        _sub(
            info,
            "responseType",
            "AllClear" if over else "Monitor" if level == "pre_alert" else "Execute",
        )
        _sub(info, "urgency", "Past" if over else _URGENCY[level])
        _sub(info, "severity", _SEVERITY[level])
        certainty = (
            "Observed"
            if m["trigger"]["cause"] == "event"
            else _CERTAINTY.get(m["classification"], "Unknown")
        )
        _sub(info, "certainty", certainty)
        _sub(info, "audience", "CIC operators; police intervention teams")
        _sub(info, "senderName", "Proximity engine (electronic monitoring of protection orders)")
        _sub(
            info,
            "headline",
            f"{level.replace('_', '-')}: {m['type'].replace('_', ' ')}, case {m['case_id']}",
        )
        _sub(info, "description", m["reason"])
        if not over:
            _sub(info, "instruction", _INSTRUCTION[level])
        for name, value in _parameters(m):
            p = _sub(info, "parameter")
            _sub(p, "valueName", name)
            _sub(p, "value", value)
        _area(info, "Offender's estimated position", m["offender"])
        _area(info, "Protected person's last position", m["victim"])


def _sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    el = ET.SubElement(parent, f"{{{CAP_NS}}}{tag}")
    if text is not None:
        el.text = text
    return el


def _parameters(m: dict[str, Any]) -> list[tuple[str, str]]:
    out = [
        ("alarm_id", m["alarm_id"]),
        ("case_id", m["case_id"]),
        ("type", m["type"]),
        ("level", m["level"]),
        ("state", m["state"]),
        ("classification", m["classification"]),
        ("offender_device", m["offender"]["device"]),
        ("victim_device", m["victim"]["device"]),
    ]
    for key in (
        "distance_m",
        "order_distance_m",
        "probability",
        "uncertainty_m",
        "closing_speed_mps",
        "time_to_breach_s",
        "zone",
        "operator",
        "suspended_until",
        "incident_id",
    ):
        if m.get(key) is not None:
            out.append((key, str(m[key])))
    p = m.get("pursuit")
    if p:
        out.append(("pursuit", "active" if p["active"] else "inactive"))
        out += [("pursuit_not_possible", x) for x in p["not_possible"]]
    out += [(f"summary.{k}", v) for k, v in m["summary"].items()]
    out += [(f"time.{k}", v) for k, v in m["times"].items() if v is not None]
    return out


def _area(info: ET.Element, what: str, p: dict[str, Any]) -> None:
    area = _sub(info, "area")
    lat, lon, r68 = p["lat"], p["lon"], p["radius_m"]
    if lat is None or lon is None:
        _sub(area, "areaDesc", f"{what} ({p['device']}): unknown, no fix yet")
        return
    _sub(area, "areaDesc", f"{what} ({p['device']}), fix of {p['fix_time']}")
    r99_km = (r68 * K99 / K68 if r68 is not None and math.isfinite(r68) else 0.0) / 1000.0
    _sub(area, "circle", f"{lat:.6f},{lon:.6f} {r99_km:.3f}")
