"""Shared numerics of the engine and the zones: numba's policy (:mod:`numerics.jit`), the
geodesy (:mod:`numerics.geodesy`) and the position uncertainty (:mod:`numerics.uncertainty`).
It imports nothing of the project: ``geofence`` and ``proximity`` both stand on it."""
