"""Zones: exclusion and inclusion areas of a case, compiled for the numba kernels.

* :mod:`geofence.model`: the zone model and its GeoJSON form (polygons with holes,
  multipolygons, circles, warning bands), validated with messages that name the zone.
* :mod:`geofence.schedule`: weekly windows in a named time zone and validity dates.
* :mod:`geofence.compiled`: zones projected once with pyproj into local metric frames and
  flattened into arrays (:class:`~geofence.compiled.ZoneSet`).
* :mod:`geofence.kernels`: containment, signed distance to the boundary and the uncertainty
  classification, in numba.

The package knows nothing of MQTT or the CIC; the engine (:mod:`proximity.engine`) turns its
verdicts into alarms.
"""
