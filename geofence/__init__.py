"""Zones: exclusion and inclusion areas of a case, compiled for the numba kernels.

``geofence`` will own the zone model (polygons with holes, multipolygons, circles, warning
bands, schedules), GeoJSON in and out, compilation with shapely and pyproj into flat arrays in
a local metric frame, and the containment and distance-to-boundary kernels. It knows nothing
of MQTT or the CIC.

In this version zones are validated for structure and stored with their case by
:mod:`proximity.cases` and :mod:`proximity.registry`; they are not evaluated yet.
"""
