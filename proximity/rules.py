"""Every threshold and timing of the alarm rules, in one documented place.

The engine takes a :class:`RuleConfig`; the service builds it from the settings (TOML,
``PROXIMITY_*`` environment variables), so a pilot can change any of them without code.
Defaults and the reasons for them are in the field comments and the README's rule table.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


def _rule(default: Any, description: str, **bounds: float) -> Any:
    """A rule's default, with what the settings need to know of it: its description (the
    ``--help`` text and the configuration reference) and its bounds (pydantic's ``ge``,
    ``gt``, ``le``)."""
    return field(default=default, metadata={"description": description, **bounds})


@dataclass(frozen=True, slots=True)
class RuleConfig:
    """Thresholds and timings of the alarm rules (metres, seconds, metres per second)."""

    #: Hysteresis: an alarm ends only beyond ``order + max(margin_fraction * order,
    #: margin_min_m)`` (10 % and 25 m: about two GPS accuracy radii of a phone in the open).
    margin_fraction: float = _rule(
        0.1,
        "hysteresis margin as a fraction of the order distance",
        ge=0,
        le=1,
    )
    margin_min_m: float = _rule(
        25.0,
        "smallest hysteresis margin, metres",
        ge=0,
    )

    #: Fix quality. A fix is implausible when it lies farther from the device's last accepted
    #: fix than ``implausible_speed_mps`` times the time between them, plus both fixes' 99 %
    #: radii and ``jump_slack_m``: 70 m/s (250 km/h) is beyond any road vehicle, so only
    #: multipath jumps and broken fixes exceed it. Such a fix is set aside, not used; a
    #: second fix that agrees with it (by the same rule) confirms the move and is used, and
    #: after ``max_rejected`` set-aside fixes in a row the next fix is used whatever it says,
    #: so a device is never frozen at an old position (a long gap also widens the rule by
    #: the speed times the gap).
    implausible_speed_mps: float = _rule(
        70.0,
        "a fix implying a faster move from the last accepted one (plus both"
        " accuracies and jump_slack_m) is set aside as a multipath jump",
        gt=0,
    )
    #: Smoothing: the motion model's white-acceleration spectral density (m^2/s^3) in each
    #: device's Kalman filter (:mod:`proximity.core`). Larger follows sharper manoeuvres
    #: without the gate's help but averages less jitter: 0.1 keeps a standing phone with
    #: 15 m fixes at 1 Hz within about 6 m instead of 14.
    motion_accel_psd: float = _rule(
        0.1,
        "white-acceleration spectral density (m^2/s^3) of the per-device motion"
        " filter: larger follows manoeuvres faster, smaller averages more GPS jitter",
        gt=0,
    )
    #: Fixes' errors are not independent (indoors, a phone's fixes share a slowly drifting
    #: bias of about their stated accuracy): the filtered position's 68 % radius is never
    #: below this fraction of its fix's stated accuracy, however many fixes it averaged.
    estimate_floor_fraction: float = _rule(
        0.5,
        "the filtered position's 68 % radius is at least this fraction of its fix's stated"
        " accuracy (fix errors share a bias that averaging does not remove)",
        ge=0,
        le=1,
    )
    jump_slack_m: float = _rule(
        50.0,
        "metres added to the implausible-jump allowance",
        ge=0,
    )
    max_rejected: int = _rule(
        3,
        "after this many fixes set aside in a row, the next fix is used whatever"
        " it says (a device is never frozen at an old position)",
        ge=0,
    )

    #: Device health. A device from which nothing has arrived for longer than its expected
    #: reporting interval plus the grace is silent: "signal lost" for an offender (an alarm:
    #: the pairs and zones cannot be assessed), "victim device silent" for a protected person
    #: (a pre-alert). The devices list of the case file may set ``reporting_interval_s`` and
    #: ``signal_grace_s`` per device; these are the defaults (a tag reporting every minute,
    #: as GPS tags commonly do when the wearer moves, and one more minute of grace).
    reporting_interval_s: float = _rule(
        60.0,
        "expected seconds between fixes of a device that the case file's devices"
        " list does not describe (silence beyond it plus the grace is signal lost)",
        gt=0,
    )
    signal_grace_s: float = _rule(
        60.0,
        "seconds of grace after a missed report before a device counts as silent",
        ge=0,
    )

    #: Levels (:mod:`proximity.states`). A certain breach raises the alarm at once; a likely
    #: one (the best estimate is inside the order distance, but the pessimistic estimate is
    #: not) once it has held for ``confirm_s`` on every evaluation: the bound on how late a
    #: possible breach is raised. Each level is left only after its leave condition (beyond
    #: its distance plus the margin) has held for ``dwell_s``. An alarm escalates when the
    #: offender is certainly within the escalation distance (the case's, or
    #: ``escalation_fraction`` of the order distance) or after ``escalate_after_s``.
    confirm_s: float = _rule(
        15.0,
        "seconds a likely (best estimate inside, not certain) breach must hold"
        " before it raises the alarm; a certain breach raises it at once",
        ge=0,
    )
    dwell_s: float = _rule(
        30.0,
        "seconds a level's leave condition (beyond its distance plus the margin)"
        " must hold before the level is left",
        ge=0,
    )
    escalation_fraction: float = _rule(
        0.5,
        "escalation distance as a fraction of the order distance, for cases that"
        " do not set order.escalation_distance_m",
        gt=0,
        le=1,
    )
    escalate_after_s: float = _rule(
        300.0,
        "an alarm lasting this long escalates",
        gt=0,
    )

    #: An old fix's uncertainty grows with its age (its 99 % radius at the device's top
    #: speed); once a pair's (or an offender's against a zone) 99 % radius is beyond
    #: ``max_uncertainty_m`` its verdict is unknown: no level rises, falls, escalates or is
    #: announced again until a fix makes it known (the health rule speaks for a silent device).
    max_uncertainty_m: float = _rule(
        1000.0,
        "a 99 % uncertainty radius (m) beyond which a verdict is 'position unknown',"
        " on which no alarm changes",
        gt=0,
    )

    #: Operator load: an alarm that has not changed is announced again every ``renotify_s``
    #: until an operator acknowledges it (a rise in level is always announced).
    renotify_s: float = _rule(
        300.0,
        "an unchanged alarm is announced again this often until acknowledged",
        gt=0,
    )

    #: Approach: an ``approach`` pre-alert before the breach when the offender closes in at
    #: ``approach_min_speed_mps`` or more, is predicted to reach the order distance within
    #: ``approach_horizon_s`` (by the pair's relative motion and by his own course towards
    #: where she is), and has already closed ``approach_min_m`` in this approach (a
    #: sustained approach, not a swing of the velocity estimate); settled estimates only.
    approach_horizon_s: float = _rule(
        120.0,
        "an approach is announced when the order distance is predicted within this time",
        gt=0,
    )
    #: ... and the prediction has held on every evaluation for this long.
    approach_hold_s: float = _rule(
        3.0,
        "an approach must be predicted this long before it is announced",
        ge=0,
    )
    #: An approach is a prediction, and a prediction may be wrong (an offender who rides
    #: straight at her home and turns 100 m short looks like one until the turn): by
    #: default it is a pre-alert (the operator sees it coming, the offender is warned to
    #: turn back: "deter first"), and the police alarm is the breach. A programme whose
    #: protocol sends the police on a prediction sets it to true.
    approach_alarm: bool = _rule(
        False,
        "an approach is an alarm (level alarm) instead of a pre-alert",
    )
    approach_min_speed_mps: float = _rule(
        0.5,
        "smallest closing speed of an approach",
        gt=0,
    )
    approach_min_m: float = _rule(
        50.0,
        "metres an approach must already have closed before it is announced",
        ge=0,
    )

    #: Parallel travel: a pair alarm says so when both move at ``parallel_min_speed_mps`` or
    #: more, headings within ``parallel_max_angle_deg`` and speeds within a factor 1.5 of
    #: each other (both on the same road, the same way: perhaps a coincidental encounter,
    #: which the operator triages differently from a pursuit).
    parallel_min_speed_mps: float = _rule(
        2.0,
        "a pair alarm is labelled parallel travel when both move at least this"
        " fast, the same way (perhaps a coincidental encounter)",
        gt=0,
    )
    parallel_max_angle_deg: float = _rule(
        30.0,
        "largest heading difference of parallel travel, degrees",
        gt=0,
        le=90,
    )

    #: Boundary probing: ``probe_entries`` separate entries into the warning band (or a
    #: zone's) within ``probe_window_s`` raise a ``probing`` alarm, which ends when a whole
    #: window passes without an entry.
    probe_entries: int = _rule(
        3,
        "entries into the warning band within probe_window_s that make a probing alarm",
        ge=2,
    )
    probe_window_s: float = _rule(
        3600.0,
        "window of the boundary-probing count, seconds",
        gt=0,
    )
    #: Entries closer together than this are one visit (see EntryCounter).
    probe_min_gap_s: float = _rule(
        300.0,
        "entries closer together than this (seconds) count as one visit for"
        " boundary probing (uncertainty flickering at the band's edge is not a probe)",
        ge=0,
    )

    #: Pursuit mode (proximity.pursuit): while an alarm at level alarm or above is open for a
    #: pair or a zone, the offender's device and the protected person's are asked to report
    #: every ``pursuit_interval_s`` (a device that already reports faster keeps its pace),
    #: until ``pursuit_tail_s`` after the episode ends; then their own interval is restored.
    pursuit: bool = _rule(
        True,
        "ask the devices of an alarm at level alarm or above to report faster (pursuit mode)",
    )
    pursuit_interval_s: float = _rule(
        10.0,
        "reporting interval the devices are asked for during pursuit, seconds",
        gt=0,
    )
    pursuit_tail_s: float = _rule(
        120.0,
        "pursuit goes on this long after the episode's last alarm ends, seconds",
        ge=0,
    )
    #: A command a device has not acknowledged this long after it was sent is sent again
    #: (at most pursuit_sends times); a device that acknowledged, or cannot, but sends no
    #: fix for three pursuit intervals after this long keeps its old cadence: the command is
    #: sent again, and after the last send a ``pursuit_ignored`` health alarm opens.
    pursuit_ack_timeout_s: float = _rule(
        10.0,
        "a device command not acknowledged this long after it was sent is sent again, seconds",
        gt=0,
    )
    pursuit_sends: int = _rule(
        3,
        "how often a device command is sent before the device is taken to ignore it",
        ge=1,
    )
    #: The faster interval is asked for until a time (the command's ``until``): a device
    #: that hears nothing more falls back to its own interval by itself; the engine renews
    #: it at half the lease while the pursuit goes on.
    pursuit_lease_s: float = _rule(
        600.0,
        "a pursuit command asks for the faster interval until this long after it is sent,"
        " seconds (renewed while the pursuit goes on)",
        gt=0,
    )


def rule_settings() -> dict[str, tuple[str, Any, dict[str, Any]]]:
    """Every rule as a setting: name -> (type name, default, description and bounds)."""
    return {f.name: (str(f.type), f.default, dict(f.metadata)) for f in fields(RuleConfig)}
