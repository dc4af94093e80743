"""The geofence package's exceptions: one base, a subclass per kind of input."""

from __future__ import annotations


class GeofenceError(ValueError):
    """Base of every error raised by :mod:`geofence`."""


class ZoneError(GeofenceError):
    """What is wrong with one zone, without naming it (the caller adds where it is)."""


class ScheduleError(ZoneError):
    """A schedule that cannot be understood; the message names the field and the remedy."""
