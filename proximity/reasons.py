"""The operator's sentences: what each alarm's ``reason`` says, in one place.

The rules decide; these functions only word the decision, from plain values, so the wording
can be read (and changed) without reading the rules. Distances are whole metres (kilometres
to one decimal where :func:`metres` words them), ``+-`` the 99 % radius; times are ISO 8601
UTC.
"""

from __future__ import annotations

from proximity.events import AlarmLevel, Motion, Position
from proximity.states import Step


def where(offender: str, distance_m: float, uncertainty_m: float, victim: str) -> str:
    """ "offender o is 480 m (+-14 m) from protected person v"."""
    return (
        f"offender {offender} is {distance_m:.0f} m (+-{uncertainty_m:.0f} m)"
        f" from protected person {victim}"
    )


def old_fixes(offender: Position, victim: Position, now: float) -> str:
    """ "; the protected person's fix is 600 s old (+-1808 m)", or "" when both are fresh."""
    old = [
        f"the {role} fix is {now - p.t_fix:.0f} s old (+-{p.radius_m:.0f} m)"
        for role, p in (("offender's", offender), ("protected person's", victim))
        if p.old
    ]
    return f"; {' and '.join(old)}" if old else ""


def parallel(motion: Motion) -> str:
    """What an open or updated pair alarm adds when both parties travel the same way."""
    return (
        f"; both travel the same way (offender {motion.offender_speed_mps:.0f} m/s,"
        f" protected person {motion.victim_speed_mps:.0f} m/s, headings"
        f" {motion.heading_difference_deg:.0f} deg apart): parallel travel, perhaps a"
        " coincidental encounter"
    )


def proximity(
    step: Step,
    level: int,
    here: str,
    *,
    certain: bool,
    order_m: float,
    warning_m: float,
    margin_m: float,
    escalation_m: float,
    within_escalation: bool,
    opened: str | None,
    dwell_s: float,
    confirm_s: float,
    escalate_after_s: float,
) -> str:
    """A proximity alarm's reason for the level machine's ``step`` to ``level``; ``here`` is
    :func:`where`'s sentence, ``opened`` when the alarm opened."""
    if step == Step.END:
        return (
            f"{here}: beyond the warning distance plus margin ({warning_m:.0f} + {margin_m:.0f} m)"
            f" for {dwell_s:.0f} s"
        )
    if step == Step.REMIND:
        return reminder(opened, here)
    if step == Step.LOWER:
        return (
            f"{here}: beyond the order distance plus margin ({order_m:.0f} + {margin_m:.0f} m)"
            f" for {dwell_s:.0f} s; pre-alert"
        )
    if step == Step.CERTAIN:
        return f"breach now certain: {here}, order distance {order_m:.0f} m"
    if level == AlarmLevel.ESCALATION:
        if within_escalation:
            return f"escalation: {here}, certainly within {escalation_m:.0f} m"
        return f"escalation: the breach has lasted {escalate_after_s:.0f} s; {here}"
    if level == AlarmLevel.ALARM:
        if certain:
            return f"certain breach: {here}, order distance {order_m:.0f} m"
        return (
            f"breach confirmed (inside the order distance {order_m:.0f} m on the best"
            f" estimate for {confirm_s:.0f} s): {here}"
        )
    return (
        f"pre-alert: {here}, within the warning distance {warning_m:.0f} m"
        f" (order distance {order_m:.0f} m)"
    )


def approach(
    step: Step,
    here: str,
    *,
    superseded: bool,
    quiet_s: float,
    closing_mps: float,
    closed_m: float,
    order_m: float,
    time_to_breach_s: float,
) -> str:
    """An approach alarm's reason: ended (``superseded`` by the breach alarm, or quiet for
    ``quiet_s``), a reminder, or the approach itself."""
    if step == Step.END:
        if superseded:
            return f"superseded by the breach alarm: {here}"
        return f"no sustained approach for {quiet_s:.0f} s: {here}"
    if step == Step.REMIND:
        return f"reminder: still approaching, not acknowledged; {here}"
    return (
        f"approach: {here}, closing at {closing_mps:.1f} m/s ({closed_m:.0f} m closer than"
        f" lately); the order distance ({order_m:.0f} m) in about {time_to_breach_s:.0f} s at"
        " this speed"
    )


def probing(opened: bool, here: str, *, count: int, warning_m: float, window_s: float) -> str:
    """A probing alarm's reason: ``count`` entries into the warning band, or its end."""
    if opened:
        return (
            f"boundary probing: {count} entries within the warning distance"
            f" ({warning_m:.0f} m) in {window_s / 60:.0f} min; now {here}"
        )
    return f"no entry within the warning distance for {window_s / 60:.0f} min"


def reminder(opened: str | None, here: str) -> str:
    """The reminder of an open alarm that no operator has acknowledged."""
    return f"reminder: open since {opened}, not acknowledged; {here}"


def metres(d: float) -> str:
    """ "1.2 km" from 1000 m on, else "480 m"."""
    return f"{d / 1000:.1f} km" if abs(d) >= 1000 else f"{d:.0f} m"


def zone_name(label: str, exclusion: bool) -> str:
    """'exclusion zone "home"' or 'inclusion zone "home"'."""
    return f'{"exclusion" if exclusion else "inclusion"} zone "{label}"'


def zone_where(device: str, signed_m: float, uncertainty_m: float, name: str) -> str:
    """ "offender o is 120 m inside exclusion zone "home" (+-14 m)" (``signed_m`` < 0:
    inside)."""
    side = f"{metres(-signed_m)} inside" if signed_m <= 0 else f"{metres(signed_m)} outside"
    return f"offender {device} is {side} {name} (+-{uncertainty_m:.0f} m)"


def zone_probing(opened: bool, here: str, *, count: int, name: str, window_s: float) -> str:
    """A zone's probing alarm: ``count`` entries near it, or its end."""
    window = f"{window_s / 60:.0f} min"
    if opened:
        return f"boundary probing: {count} entries near {name} in {window}; now {here}"
    return f"no entry near {name} for {window}"


def zone(
    step: Step,
    level: int,
    here: str,
    *,
    name: str,
    exclusion: bool,
    in_force: bool,
    certain: bool,
    possibly_inside: bool,
    warning_m: float,
    margin_m: float,
    opened: str | None,
    curfew_began: bool,
    dwell_s: float,
    confirm_s: float,
    escalate_after_s: float,
) -> str:
    """A zone or curfew alarm's reason for the level machine's ``step`` to ``level``."""
    if step == Step.END:
        if not in_force:
            return f"{name} is no longer in force (schedule); {here}"
        if not exclusion:
            return f"back inside: {here}"
    if step in (Step.END, Step.LOWER):  # out of an exclusion zone by the margin, held
        return f"{here}, beyond the margin ({margin_m:.0f} m) for {dwell_s:.0f} s"
    if step == Step.REMIND:
        return reminder(opened, here)
    if step == Step.CERTAIN:
        return f"now certain: {here}"
    if level == AlarmLevel.ESCALATION:
        return f"escalation: the violation has lasted {escalate_after_s:.0f} s; {here}"
    if level == AlarmLevel.ALARM:
        what = "certain" if certain else f"confirmed ({confirm_s:.0f} s)"
        if exclusion:
            return f"{what} entry: {here}"
        started = " (the curfew began)" if curfew_began else ""
        return f"{what} curfew violation{started}: {here} while it is in force"
    if exclusion and possibly_inside:
        return f"possible entry, confirming: {here}"
    if exclusion:
        return f"pre-alert: {here}, within its warning band ({warning_m:.0f} m)"
    return f"possible curfew violation, confirming: {here}"


def _who(is_offender: bool) -> str:
    return "offender" if is_offender else "protected person"


def silence(
    device: str, is_offender: bool, *, quiet_s: float, interval_s: float, grace_s: float
) -> str:
    """A device silent for longer than its reporting interval plus grace."""
    consequence = (
        "the distance to the protected person and the offender's zones cannot be assessed"
        if is_offender
        else "the distance to the offender cannot be assessed"
    )
    return (
        f"no message from {_who(is_offender)} device {device} for {quiet_s:.0f} s (expected"
        f" every {interval_s:.0f} s + {grace_s:.0f} s grace); {consequence}"
    )


def silence_over(device: str) -> str:
    return f"device {device} reports again"


def device_event(kind: str, device: str, is_offender: bool, t_event: str | None) -> str:
    """An event a device reported (panic, tamper, ...)."""
    if kind == "panic" and not is_offender:
        return f"PANIC button pressed by the protected person ({device})"
    return f"{kind.replace('_', ' ')} reported by {_who(is_offender)} device {device} at {t_event}"


def sequence_gap(
    device: str,
    is_offender: bool,
    *,
    missing: int,
    lo: int,
    hi: int,
    partly: bool,
    since: str | None,
    until: str | None,
) -> str:
    """Numbers ``lo`` to ``hi`` of a device's fixes never arrived (``missing`` of them, when
    ``partly`` some came late)."""
    span = f"numbers {lo} to {hi}" if hi > lo else f"number {lo}"
    if partly:
        span = f"{missing} of the {span}"
    return (
        f"data gap: {missing} fix(es) of {_who(is_offender)} device {device} never arrived"
        f" ({span}; the fixes before and after them arrived at {since} and {until}): lost on"
        " the way (by the broker or the network) or rejected on arrival, so the case was not"
        " assessed on them"
    )


def session_lost(since: str | None, until: str | None) -> str:
    """The broker kept no session for the engine."""
    return (
        "data gap: the broker kept no session for the engine, so fixes and events sent"
        f" between {since} and {until} may be lost, and with them alarms of this case; the"
        " broker's persistence needs checking"
    )


def engine_stuck(why: str) -> str:
    """The watchdog found the engine stalled (the process ends for a restart)."""
    return (
        f"engine fault: {why}; the case is not watched until the engine is back (its"
        " supervisor restarts it): watch the parties by other means"
    )


def storage_fault(why: str, journal: bool) -> str:
    """The disk refuses the engine's writes (the journal's too when ``journal``)."""
    alarms = (
        "sends its alarms without the journal"
        if journal
        else "journals and sends its alarms as usual"
    )
    return (
        f"engine fault: {why}. The engine goes on deciding and {alarms}; the fixes it could not"
        " record stay unacknowledged at the broker (a restart gets them again) and everything is"
        " written when the disk takes it again. If the fault lasts, new fixes wait at the broker"
        " and the case is not watched: the disk needs attention"
    )


STORAGE_FAULT_OVER = (
    "storage fault over: the engine's files take writes again, and what the fault held is written"
)


def suspended(operator_name: str, note: str, until: str) -> str:
    """An operator suspended an alarm's source until ``until`` (ISO), saying why."""
    return f"suspended by {operator_name} until {until}: {note}"


def suspension_over(operator_name: str, reason: str) -> str:
    """The suspension by ``operator_name`` ran out; the alarm as it stands (``reason``)."""
    return f"suspension by {operator_name} is over; {reason}"


def operator(action: str, operator_name: str, note: str, resolution: str = "") -> str:
    """An operator acknowledged or closed an alarm (with a resolution code, for a close)."""
    said = " - ".join(x for x in (resolution.replace("_", " "), note) if x)
    return f"{action} by {operator_name}" + (f": {said}" if said else "")
