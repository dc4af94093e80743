"""The case file: parsing and validation into immutable :class:`Case` values.

Shape (DESIGN.md)::

    {"cases": [{"id": "BE-2026-0001", "offenders": ["tag-17"], "protected": ["phone-42"],
                "order": {"distance_m": 500, "warning_distance_m": 1000},
                "summary": {"offender_name": "...", "victim_phone": "...", ...},
                "zones": {"type": "FeatureCollection", "features": [...]}}],
     "devices": [{"id": "phone-42", "reporting_interval_s": 30, ...}]}

Validation collects every problem of the file before failing, and names the case and field
of each, so a file can be corrected in one pass.

Every level is strict (:data:`FIELDS`): a field the engine does not know is an error naming
its path and the nearest known name (``cases[0].order.warning_distance: unknown field; did you
mean warning_distance_m?``), since a misspelt field would otherwise be dropped and its default
used. ``summary`` is free text keyed by the user. The GeoJSON objects of ``zones`` may carry
members of other tools (RFC 7946 allows them; editors add ``stroke`` or ``name``): there only a
near miss of a known name (``radius`` for ``radius_m``, ``warning`` for ``warning_m``) is an
error, other members are ignored with a warning. Zones whose coordinates look written as
``[lat, lon]`` are errors too (:func:`geofence.model.swapped_axes`).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from geofence.errors import ZoneError
from geofence.model import NamedZone, parse_zone, swapped_axes, unknown_properties, zone_name
from numerics.uncertainty import MOBILITY_MPS
from proximity.errors import CaseFileError

MAX_ORDER_DISTANCE_M = 100_000.0
#: A device id is used in MQTT topics (devices/{id}/fix): no level separator, no wildcards.
FORBIDDEN_ID_CHARS = frozenset("/+#")
CASE_KEYS = frozenset(
    {
        "id",
        "offenders",
        "protected",
        "order",
        "summary",
        "zones",
        "mobility",
        "share_offender_position",
    }
)


@dataclass(frozen=True, slots=True)
class Fields:
    """The fields one object of the file may have; ``nested`` maps a field to the
    :class:`Fields` of its value (an object, or each item of a list). ``open``: a GeoJSON
    object, where other members are allowed (ignored with a warning, or silently with
    ``quiet``) but a near miss of a known name is an error."""

    names: frozenset[str]
    nested: Mapping[str, Fields] = field(default_factory=dict)
    open: bool = False
    quiet: bool = False


_SCHEDULE = Fields(
    frozenset({"timezone", "weekly", "dates"}),
    {
        "weekly": Fields(frozenset({"days", "start", "end"})),
        "dates": Fields(frozenset({"from", "until"})),
    },
)
#: The zone properties; unknown_properties() warns about the other members.
_PROPERTIES = Fields(
    frozenset({"kind", "label", "radius_m", "warning_m", "schedule"}),
    {"schedule": _SCHEDULE},
    open=True,
    quiet=True,
)
_FEATURE = Fields(
    frozenset({"type", "id", "geometry", "properties", "bbox"}),
    {
        "geometry": Fields(frozenset({"type", "coordinates", "bbox"}), open=True),
        "properties": _PROPERTIES,
    },
    open=True,
)
#: Every field of a case file. The device fields are those the engine reads from a device's
#: description (ingest.owntracks, ingest.osmand, proximity.health, top_speeds) and
#: alarm_reporting_interval_s, which the evaluation suite writes for devices that report
#: faster during an alarm (informative: nothing in the engine depends on it).
FIELDS = Fields(
    frozenset({"cases", "devices"}),
    {
        "cases": Fields(
            CASE_KEYS,
            {
                "order": Fields(
                    frozenset({"distance_m", "warning_distance_m", "escalation_distance_m"})
                ),
                "mobility": Fields(frozenset({"offenders", "protected"})),
                "zones": Fields(
                    frozenset({"type", "features", "bbox"}), {"features": _FEATURE}, open=True
                ),
            },
        ),
        "devices": Fields(
            frozenset(
                {
                    "id",
                    "owntracks",
                    "osmand",
                    "reporting_interval_s",
                    "signal_grace_s",
                    "mobility",
                    "alarm_reporting_interval_s",
                }
            ),
            {
                "owntracks": Fields(frozenset({"user", "device", "key"})),
                "osmand": Fields(frozenset({"secret", "id"})),
            },
        ),
    },
)


def _nearest(key: str, names: frozenset[str], cutoff: float) -> str | None:
    """The known name ``key`` most likely misspells: a close spelling (difflib), or the
    shortest name that contains it (``grace_s`` for ``signal_grace_s``)."""
    low = key.lower()
    close = difflib.get_close_matches(low, sorted(names), n=1, cutoff=cutoff)
    if close:
        return close[0]
    within = sorted((n for n in names if len(low) >= 4 and low in n), key=len)
    return within[0] if within else None


def check_fields(
    value: object, spec: Fields, path: str, problems: list[str], warnings: list[str]
) -> object:
    """Check the field names of ``value`` at every depth against ``spec``; return a copy
    without the fields that are errors (so that the other checks still run on the rest,
    and report every other problem of the file too)."""
    if isinstance(value, list):
        return [
            check_fields(v, spec, f"{path}[{i}]", problems, warnings) for i, v in enumerate(value)
        ]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        where = f"{path}.{key}" if path else str(key)
        if key in spec.names:
            sub = spec.nested.get(key)
            out[key] = item if sub is None else check_fields(item, sub, where, problems, warnings)
            continue
        near = _nearest(str(key), spec.names, 0.75 if spec.open else 0.7)
        if near is not None:
            problems.append(f"{where}: unknown field; did you mean {near}?")
        elif not spec.open:
            known = ", ".join(sorted(spec.names))
            problems.append(f"{where}: unknown field (known here: {known})")
        else:
            if not spec.quiet:
                warnings.append(f"{where}: ignored (a GeoJSON member the engine does not read)")
            out[key] = item
    return out


#: Highest top speed a case file may state, m/s (1080 km/h: beyond any ground vehicle).
MAX_TOP_SPEED_MPS = 300.0


@dataclass(frozen=True, slots=True)
class Case:
    """One court order: who must stay away from whom, how far, and what the team must know."""

    id: str
    offenders: tuple[str, ...]
    protected: tuple[str, ...]
    order_distance_m: float
    warning_distance_m: float
    summary: Mapping[str, str] = field(default_factory=dict)
    zones: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "FeatureCollection", "features": []}
    )
    #: Plausible top speeds (m/s) of the case's offenders and protected persons; None: the
    #: device's own setting or the engine default decides (see :func:`top_speeds`).
    offender_top_speed_mps: float | None = None
    protected_top_speed_mps: float | None = None
    #: Certainly within this distance, an alarm escalates; None: the engine's
    #: ``escalation_fraction`` of the order distance.
    escalation_distance_m: float | None = None
    #: The protected person's notices may show the offender's position, distance and
    #: direction (cic.notice.VictimNotices); off unless the case file says so.
    share_offender_position: bool = False


@dataclass(frozen=True, slots=True)
class Device:
    """A device described in the file's optional ``devices`` list (aliases, interval, ...)."""

    id: str
    info: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class CaseFile:
    cases: tuple[Case, ...]
    devices: tuple[Device, ...]
    warnings: tuple[str, ...] = ()


def case_document(case: Case) -> dict[str, Any]:
    """``case`` as a case file writes it (the inverse of the parsing, for the HTTP API and the
    change record): parsing ``{"cases": [case_document(c)]}`` gives ``c`` back."""
    order: dict[str, Any] = {
        "distance_m": case.order_distance_m,
        "warning_distance_m": case.warning_distance_m,
    }
    if case.escalation_distance_m is not None:
        order["escalation_distance_m"] = case.escalation_distance_m
    doc: dict[str, Any] = {
        "id": case.id,
        "offenders": list(case.offenders),
        "protected": list(case.protected),
        "order": order,
        "summary": dict(case.summary),
        "zones": case.zones,
    }
    mobility = {
        role: speed
        for role, speed in (
            ("offenders", case.offender_top_speed_mps),
            ("protected", case.protected_top_speed_mps),
        )
        if speed is not None
    }
    if mobility:
        doc["mobility"] = mobility
    if case.share_offender_position:
        doc["share_offender_position"] = True
    return doc


def _device_id_problem(value: object) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return f"must be a non-empty string, got {value!r}"
    if value != value.strip():
        return f"{value!r} has leading or trailing spaces"
    if not value.isprintable():
        return f"{value!r} holds a control character (a line break, a tab, ...)"
    bad = sorted(FORBIDDEN_ID_CHARS & set(value))
    if bad:
        return f"{value!r} contains {''.join(bad)!r}, which MQTT topics do not allow"
    return None


def as_float(value: int | float) -> float:
    """``value`` as a float; an integer beyond any float is infinite (for the range checks
    to refuse), not an OverflowError."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _positive(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    x = as_float(value)
    return x if math.isfinite(x) and x > 0 else None


def parse_mobility(value: object) -> float | str:
    """A mobility value (profile name or m/s) -> top speed in m/s, or a problem description."""
    if isinstance(value, str):
        if value in MOBILITY_MPS:
            return MOBILITY_MPS[value]
        return f"must be one of {', '.join(map(repr, MOBILITY_MPS))} or a speed in m/s"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"must be a profile name ({', '.join(MOBILITY_MPS)}) or a speed in m/s"
    x = as_float(value)
    if not (math.isfinite(x) and 0 < x <= MAX_TOP_SPEED_MPS):
        return f"must be a speed in (0, {MAX_TOP_SPEED_MPS:g}] m/s, got {value!r}"
    return x


def _check_mobility(
    where: str, value: object, problems: list[str]
) -> tuple[float | None, float | None]:
    if value is None:
        return None, None
    if isinstance(value, dict):  # its field names are checked by check_fields
        speeds: list[float | None] = []
        for role in ("offenders", "protected"):
            if role not in value:
                speeds.append(None)
                continue
            got = parse_mobility(value[role])
            if isinstance(got, str):
                problems.append(f"{where}: 'mobility.{role}' {got}, got {value[role]!r}")
                speeds.append(None)
            else:
                speeds.append(got)
        return speeds[0], speeds[1]
    got = parse_mobility(value)
    if isinstance(got, str):
        problems.append(f"{where}: 'mobility' {got}, got {value!r}")
        return None, None
    return got, got


def top_speeds(
    cases: Sequence[Case], devices: Sequence[Device], default_mps: float
) -> dict[str, float]:
    """Each device's top speed (m/s): its own ``mobility`` in the devices list, else the
    highest its cases give its role, else ``default_mps``. The highest wins because a lower
    one would make an old fix look more certain than it is."""
    out: dict[str, float] = {}
    for case in cases:
        for devs, speed in (
            (case.offenders, case.offender_top_speed_mps),
            (case.protected, case.protected_top_speed_mps),
        ):
            if speed is not None:
                for d in devs:
                    out[d] = max(out.get(d, 0.0), speed)
    for dev in devices:
        got = parse_mobility(dev.info["mobility"]) if "mobility" in dev.info else None
        if isinstance(got, float):
            out[dev.id] = got
    for case in cases:
        for d in (*case.offenders, *case.protected):
            out.setdefault(d, default_mps)
    return out


def _check_devices(where: str, key: str, value: object, problems: list[str]) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        problems.append(f"{where}: '{key}' must be a non-empty list of device ids")
        return ()
    out: list[str] = []
    for i, dev in enumerate(value):
        problem = _device_id_problem(dev)
        if problem:
            problems.append(f"{where}: '{key}[{i}]' {problem}")
        elif dev in out:
            problems.append(f"{where}: '{key}' lists {dev!r} twice")
        else:
            out.append(str(dev))
    return tuple(out)


def _check_zones(
    where: str, value: object, problems: list[str], warnings: list[str]
) -> tuple[dict[str, Any], list[NamedZone]]:
    """The case's zones, each checked by :func:`geofence.model.parse_zone` (geometry, kind,
    label, warning band, schedule), every problem naming the zone; and the valid zones with
    their names (for :func:`geofence.model.swapped_axes`)."""
    empty: dict[str, Any] = {"type": "FeatureCollection", "features": []}
    if value is None:
        return empty, []
    if not isinstance(value, dict) or value.get("type") != "FeatureCollection":
        problems.append(f"{where}: 'zones' must be a GeoJSON FeatureCollection")
        return empty, []
    features = value.get("features")
    if not isinstance(features, list):
        problems.append(f"{where}: 'zones.features' must be a list")
        return empty, []
    named: list[NamedZone] = []
    bad = False
    for i, feat in enumerate(features):
        try:
            named.append(NamedZone(zone_name(feat, i), parse_zone(feat)))
        except ZoneError as exc:
            problems.append(f"{where}: {zone_name(feat, i)}: {exc}")
            bad = True
    if bad:
        return empty, named
    warnings.extend(f"{where}: {w}" for w in unknown_properties(value))
    return value, named


def _parse_case(
    where: str, raw: dict[str, Any], problems: list[str], warnings: list[str]
) -> tuple[Case | None, list[NamedZone]]:
    before = len(problems)
    case_id = raw["id"]
    offenders = _check_devices(where, "offenders", raw.get("offenders"), problems)
    protected = _check_devices(where, "protected", raw.get("protected"), problems)
    for dev in sorted(set(offenders) & set(protected)):
        problems.append(f"{where}: device {dev!r} is both an offender and a protected person")

    order = raw.get("order")
    distance = warning = math.nan
    escalation: float | None = None
    if not isinstance(order, dict):
        problems.append(f"{where}: 'order' must be an object with 'distance_m' (metres)")
    else:
        d = _positive(order.get("distance_m"))
        if d is None or d > MAX_ORDER_DISTANCE_M:
            problems.append(
                f"{where}: 'order.distance_m' must be a number of metres in"
                f" (0, {MAX_ORDER_DISTANCE_M:.0f}],"
                f" got {order.get('distance_m')!r}"
            )
        else:
            distance = d
            w_raw = order.get("warning_distance_m")
            if w_raw is None:
                warning = 2.0 * d
            else:
                w = _positive(w_raw)
                if w is None or w < d:
                    problems.append(
                        f"{where}: 'order.warning_distance_m' must be a number of metres >= "
                        f"'order.distance_m' ({d:g}), got {w_raw!r}"
                    )
                else:
                    warning = w
            e_raw = order.get("escalation_distance_m")
            if e_raw is not None:
                e = _positive(e_raw)
                if e is None or e > d:
                    problems.append(
                        f"{where}: 'order.escalation_distance_m' must be a number of metres in"
                        f" (0, 'order.distance_m' ({d:g})], got {e_raw!r}"
                    )
                else:
                    escalation = e

    summary_raw = raw.get("summary", {})
    summary: dict[str, str] = {}
    if not isinstance(summary_raw, dict):
        problems.append(f"{where}: 'summary' must be an object of text fields")
    else:
        for key, val in summary_raw.items():
            if not isinstance(val, str):
                problems.append(
                    f"{where}: 'summary.{key}' must be text (quote numbers such as phone numbers),"
                    f" got {type(val).__name__}"
                )
            else:
                summary[key] = val
    zones, named = _check_zones(where, raw.get("zones"), problems, warnings)
    off_speed, prot_speed = _check_mobility(where, raw.get("mobility"), problems)
    share = raw.get("share_offender_position", False)
    if not isinstance(share, bool):
        problems.append(f"{where}: 'share_offender_position' must be true or false, got {share!r}")
    if len(problems) > before:
        return None, named
    case = Case(
        str(case_id),
        offenders,
        protected,
        distance,
        warning,
        summary,
        zones,
        off_speed,
        prot_speed,
        escalation,
        share is True,
    )
    return case, named


def _check_device(
    where: str,
    raw: dict[str, Any],
    dev_id: str,
    seen_apps: dict[tuple[str, str], str],
    problems: list[str],
) -> None:
    """The problems of one device entry of a case file (its timings, mobility, OwnTracks and
    OsmAnd settings); ``seen_apps`` holds the OwnTracks topics taken so far."""
    for key, least in (
        ("reporting_interval_s", "> 0"),
        ("signal_grace_s", ">= 0"),
        ("alarm_reporting_interval_s", "> 0"),
    ):
        value = raw.get(key)
        ok = _positive(value) is not None or (least == ">= 0" and value == 0)
        if key in raw and (not ok or isinstance(value, bool)):
            problems.append(f"{where}: '{key}' must be a number of seconds {least}, got {value!r}")
    if "mobility" in raw:
        got = parse_mobility(raw["mobility"])
        if isinstance(got, str):
            problems.append(f"{where}: 'mobility' {got}, got {raw['mobility']!r}")
    if "owntracks" in raw:
        ot = raw["owntracks"]
        names = (ot.get("user"), ot.get("device")) if isinstance(ot, dict) else (None, None)
        if not all(
            isinstance(n, str)
            and n
            and not any(c in n for c in "/+#")
            and n.isprintable()
            and not any(c.isspace() for c in n)
            for n in names
        ):  # a topic level: no wildcard, no separator, no space or control character
            problems.append(
                f"{where}: 'owntracks' must be"
                f' {{"user": ..., "device": ...}} (the app\'s topic owntracks/USER/DEVICE),'
                f" got {ot!r}"
            )
        elif "key" in ot and not (isinstance(ot["key"], str) and 0 < len(ot["key"]) <= 32):
            problems.append(
                f"{where}: 'owntracks.key' must be the app's encryption secret, 1 to 32 characters"
            )
        elif (app := (str(names[0]), str(names[1]))) in seen_apps:
            problems.append(
                f"{where}: OwnTracks {app[0]}/{app[1]} is already device {seen_apps[app]}"
            )
        else:
            seen_apps[app] = dev_id
    if "osmand" in raw:
        o = raw["osmand"]
        ok = isinstance(o, dict) and isinstance(o.get("secret"), str)
        ok = ok and len(o["secret"]) >= 8 and "/" not in o["secret"]
        if not ok or ("id" in o and not (isinstance(o["id"], str) and o["id"])):
            problems.append(
                f"{where}: 'osmand' must be"
                ' {"secret": "at least 8 characters, no /", "id": "the id the app'
                ' sends (default: the device id)"}'
            )


def parse_case_file(doc: object, source: str = "case file") -> CaseFile:
    """Validate a decoded case file; raise :class:`CaseFileError` listing every problem."""
    problems: list[str] = []
    warnings: list[str] = []
    if not isinstance(doc, dict):
        raise CaseFileError(source, ['the file must be a JSON object with a "cases" list'])
    checked = check_fields(doc, FIELDS, "", problems, warnings)
    assert isinstance(checked, dict)
    doc = checked
    raw_cases = doc.get("cases")
    if not isinstance(raw_cases, list):
        raise CaseFileError(source, [*problems, '"cases" must be a list of case objects'])

    cases: list[Case] = []
    zones_of: list[tuple[str, list[NamedZone]]] = []
    where_of: list[str] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_cases):
        if not isinstance(raw, dict):
            problems.append(f"cases[{i}]: must be an object")
            continue
        case_id = raw.get("id")
        if not isinstance(case_id, str) or not case_id.strip():
            problems.append(f"cases[{i}]: 'id' must be a non-empty string, got {case_id!r}")
            continue
        where = f"cases[{i}] ({case_id})"
        if case_id in seen:
            problems.append(f"{where}: the id appears more than once in the file")
            continue
        seen.add(case_id)
        case, named = _parse_case(where, raw, problems, warnings)
        if case is not None:
            cases.append(case)
        zones_of.append((case_id, named))
        where_of.append(where)
    for g, message in swapped_axes(zones_of):
        problems.append(f"{where_of[g]}: {message}")

    devices: list[Device] = []
    raw_devices = doc.get("devices", [])
    if not isinstance(raw_devices, list):
        problems.append('"devices" must be a list of device objects')
        raw_devices = []
    seen_dev: set[str] = set()
    seen_apps: dict[tuple[str, str], str] = {}
    for i, raw in enumerate(raw_devices):
        dev_id = raw.get("id") if isinstance(raw, dict) else None
        problem = _device_id_problem(dev_id) if isinstance(raw, dict) else "must be an object"
        if problem:
            problems.append(f"devices[{i}]: 'id' {problem}")
        elif dev_id in seen_dev:
            problems.append(f"devices[{i}] ({dev_id}): the id appears more than once")
        else:
            assert isinstance(raw, dict) and isinstance(dev_id, str)
            seen_dev.add(dev_id)
            _check_device(f"devices[{i}] ({dev_id})", raw, dev_id, seen_apps, problems)
            devices.append(Device(dev_id, {k: v for k, v in raw.items() if k != "id"}))

    if problems:
        raise CaseFileError(source, problems)
    members = sorted({d for c in cases for d in (*c.offenders, *c.protected)})
    for dev in members:
        if any(ch == ":" or ch.isspace() for ch in dev):
            # Mosquitto's password file and ACL cannot name it (proximity broker config).
            warnings.append(
                f"device {dev!r}: a ':' or a space cannot be in a broker account's name, so"
                " 'proximity broker config' will refuse it; rename it for a secured broker"
            )
    return CaseFile(tuple(cases), tuple(devices), tuple(warnings))
