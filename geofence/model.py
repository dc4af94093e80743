"""The zone model: a case's zones as GeoJSON features, validated into :class:`Zone` values.

A case's ``zones`` is a GeoJSON FeatureCollection (RFC 7946: positions are ``[lon, lat]`` in
WGS84 degrees). Each feature is one zone:

* ``geometry``: a ``Polygon`` (holes allowed), a ``MultiPolygon``, or a ``Point`` with the
  property ``radius_m`` (a circle; GeoJSON has no circle type).
* ``properties``:

  ========== ======== ==========================================================
  kind       required ``exclusion`` (the offender must not enter) or
                      ``inclusion`` (the offender must stay inside, e.g. a curfew)
  label      required shown to the operator: "victim's workplace"
  radius_m   circles  radius of a ``Point`` zone, metres
  warning_m  optional exclusion zones: a warning band this wide around the zone
  schedule   optional when the zone is in force (:mod:`geofence.schedule`); default always
  ========== ======== ==========================================================

Validation rejects, naming the zone by its label and position in the file: unknown geometry
types, empty geometry, rings that are not closed or have fewer than four positions,
coordinates out of range or not numbers, self-intersections and other invalid polygons
(shapely's reason with its location), and zones too large for the local metric frame
(:data:`MAX_ZONE_EXTENT_M`, see :mod:`geofence.compiled`) or across the antimeridian.

Coordinates written as ``[lat, lon]`` instead of GeoJSON's ``[lon, lat]`` are the most common
GeoJSON mistake; :func:`swapped_axes` finds the zones whose coordinates make sense only
swapped (the rule is in its docstring), and a position out of range as ``[lon, lat]`` that is
valid swapped says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np
import shapely
from pyproj import Geod

from geofence.errors import ZoneError
from geofence.schedule import Schedule, parse_schedule

#: Largest distance from a zone's centre to its farthest vertex, metres. The local frame's
#: distance error grows with the square of the distance from its centre (geofence.compiled):
#: at 25 km it is 8 mm per km of distance measured, still far below GPS accuracy.
MAX_ZONE_EXTENT_M = 25_000.0
MAX_RADIUS_M = MAX_ZONE_EXTENT_M
MAX_WARNING_M = 10_000.0
PROPERTY_KEYS = frozenset({"kind", "label", "radius_m", "warning_m", "schedule"})
_GEOD = Geod(ellps="WGS84")


class ZoneKind(IntEnum):
    EXCLUSION = 1
    INCLUSION = 2


@dataclass(frozen=True, slots=True)
class Zone:
    """One validated zone. ``geometry`` is a shapely Polygon or MultiPolygon in (lon, lat)
    degrees, or the circle's centre Point with ``radius_m`` set (NaN for polygons)."""

    label: str
    kind: ZoneKind
    geometry: shapely.Geometry
    radius_m: float = math.nan
    warning_m: float = 0.0
    schedule: Schedule | None = None

    @property
    def is_circle(self) -> bool:
        return not math.isnan(self.radius_m)


def _number(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    try:
        return float(v)
    except OverflowError:  # an integer beyond any float: out of every range
        return math.inf if v > 0 else -math.inf


def _position(pos: object, where: str) -> tuple[float, float]:
    if not isinstance(pos, list | tuple) or len(pos) < 2:
        raise ZoneError(f"{where} must be a position [lon, lat], got {pos!r}")
    lon, lat = _number(pos[0]), _number(pos[1])
    if lon is None or lat is None or not (math.isfinite(lon) and math.isfinite(lat)):
        raise ZoneError(f"{where} must hold numbers [lon, lat], got {pos!r}")
    if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
        swapped = ""
        if -180.0 <= lat <= 180.0 and -90.0 <= lon <= 90.0:
            swapped = (
                f"; swapped, [{lat:g}, {lon:g}] would be a valid [lon, lat] (lat {lon:g},"
                f" lon {lat:g}): were the coordinates written as [lat, lon]?"
            )
        raise ZoneError(
            f"{where} {list(pos)!r} is out of range (lon in [-180, 180], lat in [-90, 90];"
            f" GeoJSON positions are [lon, lat]){swapped}"
        )
    return lon, lat


def _ring(raw: object, where: str) -> list[tuple[float, float]]:
    if not isinstance(raw, list) or not raw:
        raise ZoneError(f"{where} is empty")
    ring = [_position(p, f"{where} position {i}") for i, p in enumerate(raw)]
    if ring[0] != ring[-1]:
        raise ZoneError(
            f"{where} is not closed: its first position {list(ring[0])} differs from its last"
            f" {list(ring[-1])} (GeoJSON rings repeat the first position at the end)"
        )
    if len(ring) < 4:
        raise ZoneError(f"{where} has {len(ring)} positions; a closed ring needs at least 4")
    return ring


def _polygon(raw: object, where: str) -> shapely.Polygon:
    if not isinstance(raw, list) or not raw:
        raise ZoneError(f"{where} is empty (a polygon needs an outer ring)")
    rings = [_ring(r, f"{where} ring {i}") for i, r in enumerate(raw)]
    return shapely.Polygon(rings[0], rings[1:])


def _geometry(geom: object, props: Mapping[str, Any]) -> tuple[shapely.Geometry, float]:
    if not isinstance(geom, dict):
        raise ZoneError("'geometry' must be a GeoJSON geometry object")
    kind = geom.get("type")
    coords = geom.get("coordinates")
    radius = math.nan
    if kind == "Polygon":
        shape: shapely.Geometry = _polygon(coords, "the polygon")
    elif kind == "MultiPolygon":
        if not isinstance(coords, list) or not coords:
            raise ZoneError("the multipolygon is empty")
        shape = shapely.MultiPolygon(
            [_polygon(p, f"polygon {i} of the multipolygon") for i, p in enumerate(coords)]
        )
    elif kind == "Point":
        lon, lat = _position(coords, "the circle's centre")
        r = _number(props.get("radius_m"))
        if r is None or not (0.0 < r <= MAX_RADIUS_M):
            raise ZoneError(
                f"a Point zone is a circle and needs 'properties.radius_m' in metres in"
                f" (0, {MAX_RADIUS_M:.0f}], got {props.get('radius_m')!r}"
            )
        return shapely.Point(lon, lat), r
    else:
        raise ZoneError(
            f"geometry type {kind!r} is not a zone; use Polygon, MultiPolygon or Point with"
            " 'radius_m'"
        )
    if shape.is_empty:
        raise ZoneError("the geometry is empty")
    if not shape.is_valid:
        raise ZoneError(f"the geometry is invalid: {shapely.is_valid_reason(shape)}")
    return shape, radius


def _extent_m(shape: shapely.Geometry) -> float:
    """Largest geodesic distance from the bounding box centre to a vertex, metres."""
    xmin, ymin, xmax, ymax = shape.bounds
    pts = shapely.get_coordinates(shape)
    n = len(pts)
    _, _, d = _GEOD.inv([0.5 * (xmin + xmax)] * n, [0.5 * (ymin + ymax)] * n, pts[:, 0], pts[:, 1])
    return float(max(d))


def parse_zone(feature: object) -> Zone:
    """One GeoJSON feature as a :class:`Zone`; :class:`ZoneError` says what is wrong."""
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        raise ZoneError("must be a GeoJSON Feature")
    props = feature.get("properties")
    if not isinstance(props, dict):
        raise ZoneError("needs 'properties' with 'kind' and 'label'")
    label = props.get("label")
    if not isinstance(label, str) or not label.strip():
        raise ZoneError("'properties.label' must be a non-empty string (shown to the operator)")
    kind_raw = props.get("kind")
    if kind_raw not in ("exclusion", "inclusion"):
        raise ZoneError(f"'properties.kind' must be 'exclusion' or 'inclusion', got {kind_raw!r}")
    kind = ZoneKind.EXCLUSION if kind_raw == "exclusion" else ZoneKind.INCLUSION
    shape, radius = _geometry(feature.get("geometry"), props)
    xmin, _, xmax, _ = shape.bounds
    if xmax - xmin > 180.0:
        raise ZoneError(
            "the zone crosses the antimeridian (longitude +-180), which is not supported"
        )
    extent = radius if not math.isnan(radius) else _extent_m(shape)
    if extent > MAX_ZONE_EXTENT_M:
        raise ZoneError(
            f"the zone reaches {extent / 1000:.1f} km from its centre; at most"
            f" {MAX_ZONE_EXTENT_M / 1000:.0f} km is supported (split it into smaller zones)"
        )
    warning = 0.0
    if props.get("warning_m") is not None:
        w = _number(props["warning_m"])
        if w is None or not (0.0 <= w <= MAX_WARNING_M):
            raise ZoneError(
                f"'properties.warning_m' must be metres in [0, {MAX_WARNING_M:.0f}],"
                f" got {props['warning_m']!r}"
            )
        if kind == ZoneKind.INCLUSION and w > 0:
            raise ZoneError("'properties.warning_m' applies to exclusion zones only")
        warning = w
    schedule = None
    if props.get("schedule") is not None:
        schedule = parse_schedule(props["schedule"])
    return Zone(label.strip(), kind, shape, radius, warning, schedule)


def zone_name(feature: object, index: int) -> str:
    """How messages name a feature: its label when it has one, and its place in the file."""
    props = feature.get("properties") if isinstance(feature, dict) else None
    label = props.get("label") if isinstance(props, dict) else None
    where = f"zones.features[{index}]"
    return f"zone {label!r} ({where})" if isinstance(label, str) and label.strip() else where


def parse_zones(collection: object) -> tuple[list[Zone], list[str]]:
    """A FeatureCollection as zones, and one problem message per bad zone (naming it).

    Every feature is checked, so a file can be corrected in one pass; a bad zone is left
    out of the returned list.
    """
    if collection is None:
        return [], []
    if not isinstance(collection, dict) or collection.get("type") != "FeatureCollection":
        return [], ["'zones' must be a GeoJSON FeatureCollection"]
    features = collection.get("features")
    if not isinstance(features, list):
        return [], ["'zones.features' must be a list"]
    zones: list[Zone] = []
    problems: list[str] = []
    for i, feat in enumerate(features):
        try:
            zones.append(parse_zone(feat))
        except ZoneError as exc:
            problems.append(f"{zone_name(feat, i)}: {exc}")
    return zones, problems


def unknown_properties(collection: Mapping[str, Any]) -> list[str]:
    """Property names the engine does not read, per feature (for warnings)."""
    out = []
    for i, feat in enumerate(collection.get("features", [])):
        props = feat.get("properties") if isinstance(feat, dict) else None
        if isinstance(props, dict):
            extra = sorted(set(props) - PROPERTY_KEYS)
            if extra:
                out.append(f"{zone_name(feat, i)}: ignored properties {', '.join(extra)}")
    return out


#: A swapped zone must lie this far from every reference zone as written...
SWAP_FAR_KM = 500.0
#: ...and this near one of them swapped, and that SWAP_RATIO times nearer. The zones of one
#: court order, or of one deployment, lie in one region (a city, a province: Belgium is
#: 320 km across), while a swap moves a point by about sqrt(2) * |lat - lon| degrees (6,700 km
#: for Brussels): only places within about 4 degrees of the lat = lon diagonal cannot be
#: judged.
SWAP_NEAR_KM = 400.0
SWAP_RATIO = 10.0
_EARTH_KM = 6371.0088  # mean radius (IUGG); the thresholds need no ellipsoid


@dataclass(frozen=True, slots=True)
class NamedZone:
    """A zone and how messages name it, e.g. ``zone 'school' (zones.features[1])``."""

    name: str
    zone: Zone


def centre(zone: Zone) -> tuple[float, float]:
    """The zone's centre ``(lon, lat)`` in degrees: a circle's centre, a polygon's centroid
    (in degrees: the zones are at most 25 km across)."""
    c = zone.geometry.centroid
    return float(c.x), float(c.y)


def _km(lon1: float, lat1: float, lon2: np.ndarray, lat2: np.ndarray) -> np.ndarray:
    """Haversine distances (km) from one point to arrays of points, (lon, lat) degrees."""
    p1, p2 = math.radians(lat1), np.radians(lat2)
    a = (
        np.sin((p2 - p1) / 2.0) ** 2
        + math.cos(p1) * np.cos(p2) * np.sin(np.radians(lon2 - lon1) / 2.0) ** 2
    )
    return np.asarray(2.0 * _EARTH_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0))))


def _dist(d_km: float) -> str:
    return f"{d_km:,.0f} km" if d_km >= 10.0 else f"{d_km:.1f} km"


def _at(lon: float, lat: float) -> str:
    return f"lat {lat:.4f}, lon {lon:.4f}"


def _swap_fits(given_km: float, swapped_km: float) -> bool:
    return (
        given_km > SWAP_FAR_KM
        and swapped_km <= SWAP_NEAR_KM
        and given_km >= SWAP_RATIO * swapped_km
    )


def swapped_axes(groups: Sequence[tuple[str, Sequence[NamedZone]]]) -> list[tuple[int, str]]:
    """Zones whose coordinates look written as ``[lat, lon]``: ``(group index, problem)``.

    ``groups`` are the cases of a file: ``(case id, its zones)``. A zone's *centre* is read
    as GeoJSON reads it (``[lon, lat]``) and *swapped* (``[lat, lon]``; only when its first
    value could be a latitude). The rule:

    A zone *fits swapped* a set of reference zones when its centre lies more than
    :data:`SWAP_FAR_KM` (500 km) from every one of them, while swapped it lies within
    :data:`SWAP_NEAR_KM` (400 km) of one of them and at least :data:`SWAP_RATIO` (10) times
    nearer than as written.

    1. Within a case of two or more zones, a zone that fits swapped the case's other zones
       is reported. When two zones each fit the other (a case of two zones), which of them
       is swapped cannot be told: one problem names both.
    2. A case none of whose zones rule 1 reports, each of whose zones fits swapped the
       zones of the file's other cases (they show the deployment area), has each of its
       zones reported. When two cases each fit the other (a file of two cases), one problem
       names both.
    3. Otherwise nothing is said: a lone zone in a file without other zones, or zones that
       are plausible both ways (within about 4 degrees of the lat = lon diagonal), cannot
       be judged without a coastline or a deployment area.

    The thresholds keep legitimate zones silent: the zones of a Belgian case lie within
    320 km of one another, and no legitimate zone lies at the mirror image of another
    (Brussels swapped is in the Indian Ocean, 6,700 km away). Since the majority of zones
    decides, a message says "or the other zones' are" rather than blaming one zone.
    """
    flat = [(g, nz, *centre(nz.zone)) for g, (_, zs) in enumerate(groups) for nz in zs]
    if len(flat) < 2:
        return []
    group = np.array([f[0] for f in flat])
    lon = np.array([f[2] for f in flat])
    lat = np.array([f[3] for f in flat])
    can_swap = np.abs(lon) <= 90.0
    problems: list[tuple[int, str]] = []
    # Rule 1: within each case. witness[i] = (j, as-written km, swapped km)
    witness: dict[int, tuple[int, float, float]] = {}
    for i in range(len(flat)):
        others = np.flatnonzero((group == group[i]) & (np.arange(len(flat)) != i))
        if not others.size or not can_swap[i]:
            continue
        given = _km(lon[i], lat[i], lon[others], lat[others])
        swapped = _km(lat[i], lon[i], lon[others], lat[others])
        k = int(np.argmin(swapped))
        if _swap_fits(float(given.min()), float(swapped[k])):
            witness[i] = (int(others[k]), float(given.min()), float(swapped[k]))
    for i, (j, d_given, d_swapped) in sorted(witness.items()):
        name, other = flat[i][1].name, flat[j][1].name
        if j in witness and witness[j][0] == i:  # each the other's mirror image
            if i < j:
                problems.append(
                    (
                        int(group[i]),
                        f"{name} and {other} lie {_dist(d_given)} apart ({name} at"
                        f" {_at(lon[i], lat[i])}, {other} at {_at(lon[j], lat[j])}, their"
                        " coordinates read as GeoJSON [lon, lat]); with the coordinates of"
                        f" either one read as [lat, lon] they would lie {_dist(d_swapped)}"
                        " apart: one of them looks written as [lat, lon]; GeoJSON positions"
                        " are [lon, lat]",
                    )
                )
            continue
        problems.append(
            (
                int(group[i]),
                f"{name}: lies at {_at(lon[i], lat[i])} (its coordinates read as GeoJSON"
                f" [lon, lat]), {_dist(d_given)} from the case's other zones; read as"
                f" [lat, lon] it would lie at {_at(lat[i], lon[i])}, {_dist(d_swapped)} from"
                f" {other}: its coordinates look written as [lat, lon] (or the other zones'"
                " are); GeoJSON positions are [lon, lat]",
            )
        )
    # Rule 2: a case against the file's other cases. found[g]: (zone, witness, km, km)
    flagged = {int(group[i]) for i in witness}
    found: dict[int, list[tuple[int, int, float, float]]] = {}
    for g in range(len(groups)):
        mine = np.flatnonzero(group == g)
        others = np.flatnonzero(group != g)
        if g in flagged or not mine.size or not others.size or not can_swap[mine].all():
            continue
        hits = []
        for i in mine.tolist():
            given = _km(lon[i], lat[i], lon[others], lat[others])
            swapped = _km(lat[i], lon[i], lon[others], lat[others])
            k = int(np.argmin(swapped))
            if not _swap_fits(float(given.min()), float(swapped[k])):
                break
            hits.append((i, int(others[k]), float(given.min()), float(swapped[k])))
        else:
            found[g] = hits
    for g, hits in found.items():
        cases = {int(group[j]) for _, j, _, _ in hits}
        h = next(iter(cases)) if len(cases) == 1 else None
        if h is not None and h in found and {int(group[j]) for _, j, _, _ in found[h]} == {g}:
            # Two cases, each the other's mirror image: which one is swapped cannot be told.
            if g > h:
                i, j, d_given, d_swapped = hits[0]
                problems.append(
                    (
                        g,
                        f"the zones of this case and of case {groups[h][0]} lie"
                        f" {_dist(d_given)} apart ({flat[i][1].name} at {_at(lon[i], lat[i])},"
                        f" {flat[j][1].name} of case {groups[h][0]} at {_at(lon[j], lat[j])},"
                        " their coordinates read as GeoJSON [lon, lat]); with the coordinates"
                        " of either case's zones read as [lat, lon] they would lie"
                        f" {_dist(d_swapped)} apart: one of the two looks written as [lat, lon];"
                        " GeoJSON positions are [lon, lat]",
                    )
                )
            continue
        for i, j, d_given, d_swapped in hits:
            other = f"{flat[j][1].name} of case {groups[int(group[j])][0]}"
            problems.append(
                (
                    g,
                    f"{flat[i][1].name}: lies at {_at(lon[i], lat[i])} (its coordinates"
                    f" read as GeoJSON [lon, lat]), {_dist(d_given)} from the zones of"
                    f" every other case in the file; read as [lat, lon] it would lie at"
                    f" {_at(lat[i], lon[i])}, {_dist(d_swapped)} from {other}: its"
                    " coordinates look written as [lat, lon] (or the other cases' are);"
                    " GeoJSON positions are [lon, lat]",
                )
            )
    return sorted(problems, key=lambda p: p[0])


def circle(lon: float, lat: float, radius_m: float, **properties: Any) -> dict[str, Any]:
    """A circle zone as a GeoJSON feature (for case files written by programs)."""
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
        "properties": {"radius_m": radius_m, **properties},
    }


def feature_collection(features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": list(features)}
