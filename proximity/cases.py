"""The case file: parsing and validation into immutable :class:`Case` values.

Shape (DESIGN.md)::

    {"cases": [{"id": "BE-2026-0001", "offenders": ["tag-17"], "protected": ["phone-42"],
                "order": {"distance_m": 500, "warning_distance_m": 1000},
                "summary": {"offender_name": "...", "victim_phone": "...", ...},
                "zones": {"type": "FeatureCollection", "features": [...]}}],
     "devices": [{"id": "phone-42", "reporting_interval_s": 30, ...}]}

Validation collects every problem of the file before failing, and names the case and field
of each, so a file can be corrected in one pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from geofence.model import parse_zones, unknown_properties
from proximity.errors import CaseFileError
from proximity.uncertainty import MOBILITY_MPS

MAX_ORDER_DISTANCE_M = 100_000.0
#: A device id is used in MQTT topics (devices/{id}/fix): no level separator, no wildcards.
FORBIDDEN_ID_CHARS = frozenset("/+#")
CASE_KEYS = frozenset({"id", "offenders", "protected", "order", "summary", "zones", "mobility"})
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


def _device_id_problem(value: object) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return f"must be a non-empty string, got {value!r}"
    if value != value.strip():
        return f"{value!r} has leading or trailing spaces"
    bad = sorted(FORBIDDEN_ID_CHARS & set(value))
    if bad:
        return f"{value!r} contains {''.join(bad)!r}, which MQTT topics do not allow"
    return None


def _positive(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    x = float(value)
    return x if math.isfinite(x) and x > 0 else None


def parse_mobility(value: object) -> float | str:
    """A mobility value (profile name or m/s) -> top speed in m/s, or a problem description."""
    if isinstance(value, str):
        if value in MOBILITY_MPS:
            return MOBILITY_MPS[value]
        return f"must be one of {', '.join(map(repr, MOBILITY_MPS))} or a speed in m/s"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"must be a profile name ({', '.join(MOBILITY_MPS)}) or a speed in m/s"
    x = float(value)
    if not (math.isfinite(x) and 0 < x <= MAX_TOP_SPEED_MPS):
        return f"must be a speed in (0, {MAX_TOP_SPEED_MPS:g}] m/s, got {value!r}"
    return x


def _check_mobility(
    where: str, value: object, problems: list[str]
) -> tuple[float | None, float | None]:
    if value is None:
        return None, None
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"offenders", "protected"})
        if unknown:
            problems.append(
                f"{where}: 'mobility' takes 'offenders' and 'protected', not {unknown!r}"
            )
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
) -> dict[str, Any]:
    """The case's zones, checked by :func:`geofence.model.parse_zones` (geometry, kind,
    label, warning band, schedule); every problem names the zone."""
    empty: dict[str, Any] = {"type": "FeatureCollection", "features": []}
    if value is None:
        return empty
    _, zone_problems = parse_zones(value)
    problems.extend(f"{where}: {p}" for p in zone_problems)
    if zone_problems or not isinstance(value, dict):
        return empty
    warnings.extend(f"{where}: {w}" for w in unknown_properties(value))
    return value


def _parse_case(
    where: str, raw: dict[str, Any], problems: list[str], warnings: list[str]
) -> Case | None:
    before = len(problems)
    unknown = sorted(set(raw) - CASE_KEYS)
    if unknown:
        warnings.append(f"{where}: ignored unknown field(s) {', '.join(map(repr, unknown))}")
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
    zones = _check_zones(where, raw.get("zones"), problems, warnings)
    off_speed, prot_speed = _check_mobility(where, raw.get("mobility"), problems)
    if len(problems) > before:
        return None
    return Case(
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
    )


def parse_case_file(doc: object, source: str = "case file") -> CaseFile:
    """Validate a decoded case file; raise :class:`CaseFileError` listing every problem."""
    problems: list[str] = []
    warnings: list[str] = []
    if not isinstance(doc, dict):
        raise CaseFileError(source, ['the file must be a JSON object with a "cases" list'])
    raw_cases = doc.get("cases")
    if not isinstance(raw_cases, list):
        raise CaseFileError(source, ['"cases" must be a list of case objects'])

    cases: list[Case] = []
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
        case = _parse_case(where, raw, problems, warnings)
        if case is not None:
            cases.append(case)

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
            for key, least in (("reporting_interval_s", "> 0"), ("signal_grace_s", ">= 0")):
                value = raw.get(key)
                ok = _positive(value) is not None or (least == ">= 0" and value == 0)
                if key in raw and (not ok or isinstance(value, bool)):
                    problems.append(
                        f"devices[{i}] ({dev_id}): '{key}' must be a number of seconds"
                        f" {least}, got {value!r}"
                    )
            if "mobility" in raw:
                got = parse_mobility(raw["mobility"])
                if isinstance(got, str):
                    problems.append(
                        f"devices[{i}] ({dev_id}): 'mobility' {got}, got {raw['mobility']!r}"
                    )
            if "owntracks" in raw:
                ot = raw["owntracks"]
                names = (ot.get("user"), ot.get("device")) if isinstance(ot, dict) else (None, None)
                if not all(
                    isinstance(n, str) and n and not any(c in n for c in "/+#") for n in names
                ):
                    problems.append(
                        f"devices[{i}] ({dev_id}): 'owntracks' must be"
                        f' {{"user": ..., "device": ...}} (the app\'s topic owntracks/USER/DEVICE),'
                        f" got {ot!r}"
                    )
                elif "key" in ot and not (isinstance(ot["key"], str) and 0 < len(ot["key"]) <= 32):
                    problems.append(
                        f"devices[{i}] ({dev_id}): 'owntracks.key' must be the app's encryption"
                        " secret, 1 to 32 characters"
                    )
                elif (app := (str(names[0]), str(names[1]))) in seen_apps:
                    problems.append(
                        f"devices[{i}] ({dev_id}): OwnTracks {app[0]}/{app[1]} is already"
                        f" device {seen_apps[app]}"
                    )
                else:
                    seen_apps[app] = dev_id
            if "osmand" in raw:
                o = raw["osmand"]
                ok = isinstance(o, dict) and isinstance(o.get("secret"), str)
                ok = ok and len(o["secret"]) >= 8 and "/" not in o["secret"]
                if not ok or ("id" in o and not (isinstance(o["id"], str) and o["id"])):
                    problems.append(
                        f"devices[{i}] ({dev_id}): 'osmand' must be"
                        ' {"secret": "at least 8 characters, no /", "id": "the id the app'
                        ' sends (default: the device id)"}'
                    )
            devices.append(Device(dev_id, {k: v for k, v in raw.items() if k != "id"}))

    if problems:
        raise CaseFileError(source, problems)
    return CaseFile(tuple(cases), tuple(devices), tuple(warnings))
