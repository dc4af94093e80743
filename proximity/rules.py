"""Every threshold and timing of the alarm rules, in one documented place.

The engine takes a :class:`RuleConfig`; the service builds it from the settings (TOML,
``PROXIMITY_*`` environment variables), so a pilot can change any of them without code.
Defaults and the reasons for them are in the field comments and the README's rule table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RuleConfig:
    """Thresholds and timings of the alarm rules (metres, seconds, metres per second)."""

    #: Hysteresis: an alarm ends only beyond ``order + max(margin_fraction * order,
    #: margin_min_m)`` (10 % and 25 m: about two GPS accuracy radii of a phone in the open).
    margin_fraction: float = 0.1
    margin_min_m: float = 25.0

    #: Fix quality. A fix is implausible when it lies farther from the device's last accepted
    #: fix than ``implausible_speed_mps`` times the time between them, plus both fixes' 99 %
    #: radii and ``jump_slack_m``: 70 m/s (250 km/h) is beyond any road vehicle, so only
    #: multipath jumps and broken fixes exceed it. Such a fix is set aside, not used; a
    #: second fix that agrees with it (by the same rule) confirms the move and is used, and
    #: after ``max_rejected`` set-aside fixes in a row the next fix is used whatever it says,
    #: so a device is never frozen at an old position (a long gap also widens the rule by
    #: the speed times the gap).
    implausible_speed_mps: float = 70.0
    #: Smoothing: the motion model's white-acceleration spectral density (m^2/s^3) in each
    #: device's Kalman filter (:mod:`proximity.core`). Larger follows sharper manoeuvres
    #: without the gate's help but averages less jitter: 0.1 keeps a standing phone with
    #: 15 m fixes at 1 Hz within about 6 m instead of 14.
    motion_accel_psd: float = 0.1
    jump_slack_m: float = 50.0
    max_rejected: int = 3

    #: Device health. A device from which nothing has arrived for longer than its expected
    #: reporting interval plus the grace is silent: "signal lost" for an offender (an alarm:
    #: the pairs and zones cannot be assessed), "victim device silent" for a protected person
    #: (a pre-alert). The devices list of the case file may set ``reporting_interval_s`` and
    #: ``signal_grace_s`` per device; these are the defaults (a tag reporting every minute,
    #: as GPS tags commonly do when the wearer moves, and one more minute of grace).
    reporting_interval_s: float = 60.0
    signal_grace_s: float = 60.0

    #: Levels (:mod:`proximity.states`). A certain breach raises the alarm at once; a likely
    #: one (the best estimate is inside the order distance, but the pessimistic estimate is
    #: not) once it has held for ``confirm_s`` on every evaluation: the bound on how late a
    #: possible breach is raised. Each level is left only after its leave condition (beyond
    #: its distance plus the margin) has held for ``dwell_s``. An alarm escalates when the
    #: offender is certainly within the escalation distance (the case's, or
    #: ``escalation_fraction`` of the order distance) or after ``escalate_after_s``.
    confirm_s: float = 15.0
    dwell_s: float = 30.0
    escalation_fraction: float = 0.5
    escalate_after_s: float = 300.0

    #: Operator load: an alarm that has not changed is announced again every ``renotify_s``
    #: until an operator acknowledges it (a rise in level is always announced).
    renotify_s: float = 300.0

    #: Approach: an ``approach`` alarm before the breach when the offender closes in at
    #: ``approach_min_speed_mps`` or more, is predicted to reach the order distance within
    #: ``approach_horizon_s`` (by the pair's relative motion and by his own course towards
    #: where she is), and has already closed ``approach_min_m`` in this approach (a
    #: sustained approach, not a swing of the velocity estimate); settled estimates only.
    approach_horizon_s: float = 120.0
    #: ... and the prediction has held on every evaluation for this long.
    approach_hold_s: float = 3.0
    approach_min_speed_mps: float = 0.5
    approach_min_m: float = 50.0

    #: Parallel travel: a pair alarm says so when both move at ``parallel_min_speed_mps`` or
    #: more, headings within ``parallel_max_angle_deg`` and speeds within a factor 1.5 of
    #: each other (both on the same road, the same way: perhaps a coincidental encounter,
    #: which the operator triages differently from a pursuit).
    parallel_min_speed_mps: float = 2.0
    parallel_max_angle_deg: float = 30.0

    #: Boundary probing: ``probe_entries`` separate entries into the warning band (or a
    #: zone's) within ``probe_window_s`` raise a ``probing`` alarm, which ends when a whole
    #: window passes without an entry.
    probe_entries: int = 3
    probe_window_s: float = 3600.0
    #: Entries closer together than this are one visit (see EntryCounter).
    probe_min_gap_s: float = 300.0
