"""Scoring an evaluation run: the alarms the CIC received against the scenarios' ground truth.

Pure functions over plain values, so that a hand-made case can check them.

- An **alarm** is one alarm id that reached level ``alarm`` or ``escalation`` (pre-alerts are
  counted apart, as operator load). It belongs to the case whose active window holds the
  moment it reached that level; alarms of a case outside its window are not scored (a
  device that has not started or has finished its scenario is not the engine's mistake).
- A true **breach** (non-marginal episode within the order distance) is *detected* by a
  ``proximity`` alarm reaching level alarm from ``BREACH_LEAD_S`` before its start to
  ``BREACH_TAIL_S`` after its end (its first rise, or a rise again after it was lowered to a
  pre-alert: one alarm id can have several spells at level alarm); its **detection delay**
  is that rise's decision time minus the true crossing. In a
  case whose offender was silent at the crossing, a ``signal_lost`` alarm during the silence
  detects it too (the engine cannot see a silent device cross). An ``approach`` alarm (a
  pre-alert by default, ``approach_alarm``) whose first message comes up to
  ``APPROACH_LEAD_S`` before a breach is an early warning of it, not a false alarm.
- A breach that begins while a ``proximity`` alarm of the case stands at level alarm or
  above (reached for an earlier episode, not lowered or ended since) is detected by it: the
  operator has the alarm. Its delay is not counted, and the alarm is not false (it may have
  opened early, on a fix that GPS noise put inside, and stood until the real crossing).
- A true **zone breach** (a non-marginal episode of the offender inside an exclusion zone of
  his case) counts as a breach, detected in the same ways by a ``zone`` alarm instead.
- A **probing** event (third true entry into the warning distance within an hour) is
  detected by a ``probing`` alarm from ``PROBE_LEAD_S`` before it to the case's end.
- A **silence** is detected by a ``signal_lost`` alarm within it (or ``BREACH_TAIL_S`` after).
  A marginal silence (a dropout that swallowed a report, longer than the declared interval
  plus the grace) justifies such an alarm without requiring one.
- A **false alarm** is an alarm that matches no true event; alarms matching only a marginal
  breach are neither false nor detections. Approach alarms that no breach followed are false
  alarms, and are also counted apart (``false_approach``): they are predictions.
- Detection delays of breaches that began while the offender's device was silent are
  reported apart: they measure when the device came back, not the engine.
- **Operator load** per pair-day: the incidents (what an operator works: the alarms of one
  situation, :mod:`proximity.incidents`), the alarms (ids) and alarm messages that reached
  the CIC, and the offender notices they caused (one per alarm of a rule about an offender
  that opens or rises: :func:`cic.notice.notices_for`'s rule). Each incident's **priority**
  is its highest alarm's (escalation, panic or engine fault: high; alarm: medium; pre-alert:
  low), and the split is reported. The **largest uncertainty** ever carried by a
  message at level alarm or escalation is reported too.
- The **detection probability**'s 95 % lower bound is the one-sided Clopper-Pearson limit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from simulator.families import TruthEvent

ALARM_LEVELS = frozenset({"alarm", "escalation"})
LEVEL_RANK = {"pre_alert": 1, "alarm": 2, "escalation": 3}
#: Rules about an offender whose alarms send him a notice when they open or rise.
NOTICE_TYPES = frozenset({"proximity", "approach", "zone", "curfew"})
HIGH_TYPES = frozenset({"panic", "engine_fault"})
BREACH_LEAD_S = 60.0
BREACH_TAIL_S = 120.0
APPROACH_LEAD_S = 300.0
PROBE_LEAD_S = 900.0
DAY_S = 86_400.0


def epoch(iso: str | None) -> float:
    """ISO 8601 UTC (``...Z``) -> epoch seconds; None -> NaN."""
    if not iso:
        return math.nan
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@dataclass
class AlarmRecord:
    """One alarm id as the CIC saw it, times in scenario seconds."""

    alarm_id: str
    case_id: str
    type: str
    #: When it first reached level alarm or escalation (NaN: it stayed a pre-alert).
    alarm_s: float
    first_s: float
    messages: int = 0
    parallel: bool = False
    #: The largest uncertainty_m of its messages at level alarm or escalation (NaN: none).
    max_alarm_uncertainty_m: float = math.nan
    #: Offender notices its messages caused (an open, or a rise in level).
    notices: int = 0
    #: Its highest level (1 pre-alert, 2 alarm, 3 escalation).
    top_level: int = 0
    #: The incident it belongs to (the alarms of one situation); "": none said.
    incident_id: str = ""
    #: When it first fell below level alarm after reaching it (lowered or ended; inf: never).
    alarm_until_s: float = math.inf
    #: Every spell at level alarm or above, [from, until] (until inf: not left): an alarm
    #: lowered to a pre-alert that rises again is one alarm id with two spells, and the
    #: second is as much an alarm as the first.
    spells: list[list[float]] = field(default_factory=list)

    def standing(self, t: float) -> bool:
        """Whether it stood at level alarm or above at ``t`` (reached before, not left)."""
        return any(a <= t <= b for a, b in self.spells) or (
            not self.spells and self.alarm_s <= t <= self.alarm_until_s
        )

    def rise_in(self, lo: float, hi: float) -> float:
        """The first time in [lo, hi] it reached level alarm (from below; NaN: none)."""
        rises = [a for a, _ in self.spells] or [self.alarm_s]
        return min((r for r in rises if lo <= r <= hi), default=math.nan)

    @property
    def is_alarm(self) -> bool:
        return not math.isnan(self.alarm_s)

    @property
    def priority(self) -> str:
        if self.top_level >= 3 or self.type in HIGH_TYPES:
            return "high"
        return "medium" if self.top_level == 2 else "low"


def collect_alarms(messages: Iterable[dict[str, Any]], t0_epoch: float) -> list[AlarmRecord]:
    """Group CIC messages by alarm id; times become seconds since ``t0_epoch`` (the run's
    scenario time 0 on the engine's clock), from each message's ``times.decided``."""
    out: dict[str, AlarmRecord] = {}
    for m in messages:
        t = epoch(m.get("times", {}).get("decided")) - t0_epoch
        rec = out.get(m["alarm_id"])
        if rec is None:
            rec = out[m["alarm_id"]] = AlarmRecord(
                m["alarm_id"], m["case_id"], m["type"], math.nan, t
            )
        rec.messages += 1
        if not rec.incident_id and isinstance(m.get("incident_id"), str):
            rec.incident_id = m["incident_id"]
        level = m.get("level")
        rank = LEVEL_RANK.get(str(level), 0)
        rec.top_level = max(rec.top_level, rank)
        if level in ALARM_LEVELS:
            u = m.get("uncertainty_m")
            if isinstance(u, (int, float)) and math.isfinite(u):
                rec.max_alarm_uncertainty_m = float(np.fmax(rec.max_alarm_uncertainty_m, u))
        rising = m.get("state") == "open" or (
            m.get("state") == "update" and LEVEL_RANK.get(str(m.get("previous_level")), rank) < rank
        )
        if m.get("type") in NOTICE_TYPES and rising:
            rec.notices += 1
        # A spell ends when the alarm falls below level alarm, ends, or the operator closes
        # it (a closed alarm is silent; if it rises again it is a new alarm id).
        up = level in ALARM_LEVELS and m.get("state") not in ("ended", "closed")
        in_spell = bool(rec.spells) and math.isinf(rec.spells[-1][1])
        if up and not in_spell:
            rec.spells.append([t, math.inf])
        elif not up and in_spell:
            rec.spells[-1][1] = t
        if level in ALARM_LEVELS and math.isnan(rec.alarm_s):
            rec.alarm_s = t
        elif (
            rec.is_alarm
            and math.isinf(rec.alarm_until_s)
            and (m.get("state") == "ended" or level not in ALARM_LEVELS)
        ):
            rec.alarm_until_s = t
        if (m.get("motion") or {}).get("parallel"):
            rec.parallel = True
    return list(out.values())


@dataclass(frozen=True)
class CaseWindow:
    """What scoring needs of a scenario case."""

    case_id: str
    family: str
    start_s: float
    end_s: float
    truth: tuple[TruthEvent, ...]
    parallel: bool = False


@dataclass
class Outcome:
    case_id: str
    family: str
    kind: str
    start_s: float
    detected: bool
    delay_s: float = math.nan  # proximity alarm - true crossing (breaches)
    by: str = ""  # the alarm type that detected it
    labelled_parallel: bool = False


@dataclass
class FamilyScore:
    family: str
    cases: int = 0
    pair_days: float = 0.0
    breaches: int = 0
    breaches_detected: int = 0
    marginal_breaches: int = 0
    probes: int = 0
    probes_detected: int = 0
    silences: int = 0
    silences_detected: int = 0
    delays_s: list[float] = field(default_factory=list)
    #: Breaches that began while the offender's device was silent: the proximity alarm's
    #: delay counts from the crossing the engine could not see (reported apart).
    delays_after_silence_s: list[float] = field(default_factory=list)
    alarms: int = 0
    false_alarms: int = 0
    #: Of the false alarms: approach predictions that no breach followed.
    false_approach: int = 0
    pre_alerts: int = 0
    early_warnings: int = 0
    parallel_labelled: int = 0
    parallel_expected: int = 0
    parallel_wrong: int = 0
    #: Incidents, alarm messages (pre-alerts included) and offender notices that reached
    #: the CIC.
    incidents: int = 0
    alarm_messages: int = 0
    notices: int = 0
    high: int = 0
    medium: int = 0
    low: int = 0
    #: The largest uncertainty of a message at level alarm or escalation (NaN: none).
    max_alarm_uncertainty_m: float = math.nan

    def row(self) -> dict[str, Any]:
        d = np.array(self.delays_s)
        days = self.pair_days or math.nan
        worked = self.high + self.medium + self.low
        return {
            "family": self.family,
            "cases": self.cases,
            "pair_days": round(self.pair_days, 4),
            "breaches": self.breaches,
            "breaches_detected": self.breaches_detected,
            "detection_rate": _ratio(self.breaches_detected, self.breaches),
            "marginal_breaches": self.marginal_breaches,
            "probes": self.probes,
            "probes_detected": self.probes_detected,
            "silences": self.silences,
            "silences_detected": self.silences_detected,
            "delay_median_s": _r(float(np.median(d))) if d.size else None,
            "delay_p95_s": _r(float(np.percentile(d, 95))) if d.size else None,
            "delay_p90_s": _r(float(np.percentile(d, 90))) if d.size else None,
            "delay_max_s": _r(float(d.max())) if d.size else None,
            "detection_lower95": (
                round(clopper_pearson_lower(self.breaches_detected, self.breaches), 4)
                if self.breaches
                else None
            ),
            "delay_after_silence_median_s": (
                _r(float(np.median(self.delays_after_silence_s)))
                if self.delays_after_silence_s
                else None
            ),
            "alarms": self.alarms,
            "alarms_per_pair_day": _r(self.alarms / days),
            "false_alarms": self.false_alarms,
            "false_alarms_per_pair_day": _r(self.false_alarms / days),
            "false_alarms_per_pair_day_upper95": _r(poisson_upper(self.false_alarms) / days),
            "false_approach": self.false_approach,
            "pre_alerts_per_pair_day": _r(self.pre_alerts / days),
            "early_warnings": self.early_warnings,
            "parallel_labelled": self.parallel_labelled,
            "parallel_expected": self.parallel_expected,
            "parallel_wrongly_labelled": self.parallel_wrong,
            "incidents": self.incidents,
            "incidents_per_pair_day": _r(self.incidents / days),
            "alarm_messages_per_pair_day": _r(self.alarm_messages / days),
            "notices_per_pair_day": _r(self.notices / days),
            "priority_high": self.high,
            "priority_medium": self.medium,
            "priority_low": self.low,
            "priority_split": (
                f"{self.high / worked:.0%}/{self.medium / worked:.0%}/{self.low / worked:.0%}"
                if worked
                else None
            ),
            "max_alarm_uncertainty_m": _r(self.max_alarm_uncertainty_m, 1),
        }


def clopper_pearson_lower(k: int, n: int, confidence: float = 0.95) -> float:
    """The one-sided lower confidence limit of a detection probability after ``k``
    detections in ``n`` trials (all ``n`` detected: ``(1 - confidence) ** (1 / n)``, so that
    4 of 4 bounds it only above 0.47, and 60 of 60 above 0.95)."""
    if not 0 <= k <= n or n == 0:
        raise ValueError(f"need 0 <= k <= n and n > 0, got {k!r}, {n!r}")
    if k == 0:
        return 0.0
    alpha = 1.0 - confidence

    def tail(p: float) -> float:  # P(X >= k) for X ~ Binomial(n, p)
        return sum(
            math.exp(
                math.lgamma(n + 1)
                - math.lgamma(i + 1)
                - math.lgamma(n - i + 1)
                + (i * math.log(p) if i else 0.0)
                + ((n - i) * math.log1p(-p) if n - i else 0.0)
            )
            for i in range(k, n + 1)
        )

    lo, hi = 0.0, 1.0
    for _ in range(100):  # the tail rises with p: bisect for tail(p) = alpha
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if tail(mid) > alpha else (mid, hi)
    return lo


def poisson_upper(k: int, confidence: float = 0.95) -> float:
    """The one-sided upper confidence limit of a Poisson mean after ``k`` events: the mean
    under which ``k`` or fewer events have probability ``1 - confidence`` (0 events: 3.00 at
    95 %, the "rule of three"). Divided by the exposure (pair-days), it bounds a false alarm
    rate: none in 60 pair-days shows a rate under 0.05 per pair-day at 95 %."""
    if k < 0 or not 0.0 < confidence < 1.0:
        raise ValueError(f"need k >= 0 and 0 < confidence < 1, got {k!r}, {confidence!r}")

    def cdf(lam: float) -> float:  # P(X <= k) for X ~ Poisson(lam), summed in log space
        return sum(math.exp(i * math.log(lam) - lam - math.lgamma(i + 1)) for i in range(k + 1))

    lo, hi = 0.0, k + 10.0 * math.sqrt(k + 1) + 10.0
    for _ in range(200):  # the CDF falls with lam: bisect to 1e-12 or so
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if cdf(mid) > 1.0 - confidence else (lo, mid)
    return hi


def _r(x: float, nd: int = 3) -> float | None:
    return round(x, nd) if math.isfinite(x) else None


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def score(
    cases: Sequence[CaseWindow], alarms: Sequence[AlarmRecord]
) -> tuple[dict[str, FamilyScore], list[Outcome]]:
    """Per family: detections, delays, false alarms and load; and each true event's outcome."""
    by_case: dict[str, list[AlarmRecord]] = {}
    for a in alarms:
        by_case.setdefault(a.case_id, []).append(a)
    fams: dict[str, FamilyScore] = {}
    outcomes: list[Outcome] = []
    for c in cases:
        f = fams.setdefault(c.family, FamilyScore(c.family))
        f.cases += 1
        f.pair_days += (c.end_s - c.start_s) / DAY_S
        mine = [a for a in by_case.get(c.case_id, []) if c.start_s <= _when(a) <= c.end_s]
        f.pre_alerts += sum(not a.is_alarm for a in mine)
        f.alarm_messages += sum(a.messages for a in mine)
        f.notices += sum(a.notices for a in mine)
        groups: dict[str, list[AlarmRecord]] = {}
        for a in mine:
            groups.setdefault(a.incident_id or a.alarm_id, []).append(a)
        f.incidents += len(groups)
        for members in groups.values():
            best = min((a.priority for a in members), key=("high", "medium", "low").index)
            setattr(f, best, getattr(f, best) + 1)
        for a in mine:
            f.max_alarm_uncertainty_m = float(
                np.fmax(f.max_alarm_uncertainty_m, a.max_alarm_uncertainty_m)
            )
        real = [a for a in mine if a.is_alarm]
        f.alarms += len(real)
        justified: set[str] = set()
        silences = [e for e in c.truth if e.kind == "silence" and not e.marginal]
        for e in c.truth:
            if e.kind in ("breach", "zone"):
                # A breach of the order distance is the proximity rule's; a zone passage
                # the zone rule's (approach alarms warn of the former only).
                rule = "proximity" if e.kind == "breach" else "zone"
                window = (e.start_s - BREACH_LEAD_S, e.end_s + BREACH_TAIL_S)
                rises = {a.alarm_id: a.rise_in(*window) for a in real if a.type == rule}
                prox = [a for a in real if a.type == rule and not math.isnan(rises[a.alarm_id])]
                # An approach warns at either level (a pre-alert by default): from its
                # first message.
                early = [
                    a
                    for a in mine
                    if a.type == "approach"
                    and rule == "proximity"
                    and e.start_s - APPROACH_LEAD_S <= a.first_s <= e.end_s
                ]
                dark = [s for s in silences if s.start_s <= e.start_s <= s.end_s]
                lost = [
                    a
                    for a in real
                    if a.type == "signal_lost"
                    and any(s.start_s <= a.alarm_s <= s.end_s + BREACH_TAIL_S for s in dark)
                ]
                # An alarm still standing from an earlier episode covers this one: the
                # operator has it (recordings of people who stay near, with brief
                # excursions, split into episodes the engine's hysteresis rightly joins).
                standing = [a for a in real if a.type == rule and a.standing(e.start_s)]
                justified |= {a.alarm_id for a in prox + early + lost + standing}
                if e.marginal:
                    f.marginal_breaches += 1
                    continue
                f.breaches += 1
                f.early_warnings += bool(early)
                o = Outcome(c.case_id, c.family, e.kind, e.start_s, bool(prox or lost or standing))
                if standing and not prox:
                    o.by = f"{rule}, standing"
                elif prox:
                    o.delay_s = min(rises[a.alarm_id] for a in prox) - e.start_s
                    o.by = rule
                    o.labelled_parallel = any(a.parallel for a in prox)
                    (f.delays_after_silence_s if dark else f.delays_s).append(o.delay_s)
                elif lost:
                    o.by = "signal_lost"
                f.breaches_detected += o.detected
                if c.parallel and rule == "proximity":
                    f.parallel_expected += 1
                    f.parallel_labelled += o.labelled_parallel
                outcomes.append(o)
            elif e.kind == "probing":
                hit = [
                    a
                    for a in real
                    if a.type == "probing" and e.start_s - PROBE_LEAD_S <= a.alarm_s <= c.end_s
                ]
                justified |= {a.alarm_id for a in hit}
                f.probes += 1
                f.probes_detected += bool(hit)
                outcomes.append(Outcome(c.case_id, c.family, "probing", e.start_s, bool(hit)))
            elif e.kind == "silence":
                hit = [
                    a
                    for a in real
                    if a.type == "signal_lost" and e.start_s <= a.alarm_s <= e.end_s + BREACH_TAIL_S
                ]
                justified |= {a.alarm_id for a in hit}
                if e.marginal:  # a dropout beyond the grace: an alarm is right, not required
                    continue
                f.silences += 1
                f.silences_detected += bool(hit)
                outcomes.append(Outcome(c.case_id, c.family, "silence", e.start_s, bool(hit)))
        false = [a for a in real if a.alarm_id not in justified]
        f.false_alarms += len(false)
        f.false_approach += sum(a.type == "approach" for a in false)
        if not c.parallel:
            f.parallel_wrong += sum(a.parallel for a in real)
    return fams, outcomes


def _when(a: AlarmRecord) -> float:
    return a.alarm_s if a.is_alarm else a.first_s


def totals(fams: dict[str, FamilyScore]) -> FamilyScore:
    """All families together."""
    t = FamilyScore("all")
    for f in fams.values():
        for name in FamilyScore.__dataclass_fields__:
            if name == "family":
                continue
            value = getattr(f, name)
            if isinstance(value, list):
                getattr(t, name).extend(value)
            elif name == "max_alarm_uncertainty_m":
                t.max_alarm_uncertainty_m = float(np.fmax(t.max_alarm_uncertainty_m, value))
            else:
                setattr(t, name, getattr(t, name) + value)
    return t


def percentiles_ms(latencies_s: Sequence[float]) -> dict[str, float | None]:
    """End-to-end latency (fix published -> alarm received) p50/p95/p99/max, milliseconds."""
    x = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    if x.size == 0:
        return {"count": 0, "p50": None, "p95": None, "p99": None, "max": None}
    p = np.percentile(x, [50, 95, 99])
    return {
        "count": int(x.size),
        "p50": round(float(p[0]), 2),
        "p95": round(float(p[1]), 2),
        "p99": round(float(p[2]), 2),
        "max": round(float(x.max()), 2),
    }
