"""What one evaluation run is made of, shared by its two ways of running: through the broker
(:mod:`simulator.evaluate`) and in process (:mod:`simulator.direct`): the options, the
devices' report schedule, the CIC side that collects the alarms, a run's result and its
scoring, and the progress line."""

from __future__ import annotations

import itertools
import math
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import paho.mqtt.client as mqtt

from proximity.rules import RuleConfig
from simulator.families import Suite, TruthEvent
from simulator.metrics import (
    AlarmRecord,
    CaseWindow,
    collect_alarms,
    percentiles_ms,
    score,
    totals,
)
from simulator.metrics import epoch as iso_to_epoch
from simulator.process import STATUS_TOPIC

#: Settings a sweep may vary besides the engine's: the devices' reporting interval.
DEVICE_SETTINGS = ("interval_s",)


@dataclass
class EvalOptions:
    scenarios: list[str]
    pairs: int = 5
    speed: float = 20.0
    interval_s: float = 1.0
    alarm_interval_s: float | None = None
    seed: int = 7
    out: Path = Path("evaluation")
    broker: str | None = None
    #: Engine settings for every run (name -> value), e.g. {"confirm_s": 15}.
    settings: dict[str, str] = field(default_factory=dict)
    #: Sweep: setting name -> values; every combination is one run.
    sweep: dict[str, list[str]] = field(default_factory=dict)
    ack_after_s: float = 60.0
    quiet: bool = False
    #: Replayed tracks (simulator.replay.ReplayPair), added to the generated cases.
    replay: list[Any] = field(default_factory=list)
    #: An in-process engine fed the fixes as fast as it goes, without broker and latency
    #: (simulator.direct): for long false-alarm runs.
    direct: bool = False


@dataclass
class Schedule:
    """Every report of every device, in time order (scenario seconds)."""

    t: npt.NDArray[np.float64]
    dev: npt.NDArray[np.int64]
    seq: npt.NDArray[np.int64]
    lat: npt.NDArray[np.float64]
    lon: npt.NDArray[np.float64]
    acc: npt.NDArray[np.float64]
    #: Sent only while an alarm of the device's case is open (faster reporting).
    fast: npt.NDArray[np.bool_]
    devices: list[str]
    case_of: list[int]  # device -> index of its case
    #: device -> its reports' positions in the arrays, indexed by seq (-1: not sent).
    index: list[npt.NDArray[np.int64]]


# --- the CIC side ---------------------------------------------------------------------------


class Cic:
    """Collects the alarm messages and the engine's status; knows which alarms are open and
    which the simulated operator is to acknowledge."""

    def __init__(self, case_ids: Sequence[str]) -> None:
        self.messages: list[tuple[float, dict[str, Any]]] = []
        self.status: dict[str, Any] = {}
        self.lock = threading.Lock()
        self._case = {c: i for i, c in enumerate(case_ids)}
        self.open_alarms: dict[str, int] = {}  # alarm id -> case index
        self.new_alarms: list[tuple[str, float]] = []  # (alarm id, decided epoch)
        self.disconnects = 0

    def on_disconnect(self, client: mqtt.Client, userdata: Any, *args: Any) -> None:
        self.disconnects += 1

    def on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        arrived = time.time()
        try:
            body = orjson.loads(msg.payload)
        except orjson.JSONDecodeError:
            return
        if msg.topic == STATUS_TOPIC:
            self.status = body
            return
        self.take(body, arrived)

    def take(self, body: dict[str, Any], arrived: float) -> None:
        """An alarm message has arrived: keep it, and follow which alarms are open and which
        the operator is to acknowledge."""
        with self.lock:
            self.messages.append((arrived, body))
            ci = self._case.get(body.get("case_id", ""))
            if ci is None:
                return
            aid = body["alarm_id"]
            if body["state"] in ("ended", "closed"):
                self.open_alarms.pop(aid, None)
            else:
                # The operator acknowledges each new alarm, and each rise of its level.
                prev = body.get("previous_level")
                if body["state"] == "open" or (
                    body["state"] == "update" and prev and prev != body["level"]
                ):
                    self.new_alarms.append((aid, iso_to_epoch(body["times"]["decided"])))
                self.open_alarms[aid] = ci


# --- the devices' side of the command channel ------------------------------------------------


class DevicePaces:
    """The simulated devices' obedience to the engine's pursuit commands (cic.commands):
    each device sends its schedule's faster reports (``Schedule.fast``) while a
    ``report_interval`` it received asks for them (until the command's ``until``), and its
    own reports always. Times are scenario seconds (the engine's clock minus ``epoch``)."""

    def __init__(self, devices: Sequence[str], epoch: float, rows: int) -> None:
        self.epoch = epoch
        self.index = {d: i for i, d in enumerate(devices)}
        self.until = np.full(len(devices), -np.inf)
        #: A device numbers the fixes it sends (seq): a report it does not send (a faster
        #: one nobody asked for) takes no number, so the engine sees no gap.
        self.next_seq = np.zeros(len(devices), dtype=np.int64)
        self.seq_of_row = np.full(rows, -1, dtype=np.int64)
        self.lock = threading.Lock()
        self.commands = 0  # commands taken (repeats of one command included)
        self._seen: set[str] = set()

    def take(self, device: str, command: dict[str, Any]) -> bool:
        """One command message to ``device``; whether the device obeys it (to acknowledge)."""
        i = self.index.get(device)
        cid = command.get("command_id")
        if i is None or not isinstance(cid, str):
            return False
        with self.lock:
            self.commands += 1
            if cid in self._seen:
                return True  # a repeat: taken already, acknowledged again
            self._seen.add(cid)
            if command.get("command") != "report_interval":
                return True  # report_now: the next report is soon anyway
            until = command.get("until")
            self.until[i] = iso_to_epoch(until) - self.epoch if until else -np.inf
        return True

    def sent(self, sched: Schedule, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Of the schedule's ``rows``, those the devices send now."""
        with self.lock:
            faster = sched.t[rows] < self.until[sched.dev[rows]]
        return rows[~sched.fast[rows] | faster]

    def number(self, sched: Schedule, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """The seq of each of ``rows`` (sent now, in time order), one more per device."""
        dev = sched.dev[rows]
        # Each row's rank among the chunk's rows of its device (rows in time order).
        order = np.argsort(dev, kind="stable")
        grouped = dev[order]
        starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
        rank = np.arange(grouped.size) - np.repeat(starts, np.diff(np.r_[starts, grouped.size]))
        out = np.empty(rows.size, dtype=np.int64)
        out[order] = self.next_seq[grouped] + rank
        self.next_seq += np.bincount(dev, minlength=self.next_seq.size)
        self.seq_of_row[rows] = out
        return out


# --- one run --------------------------------------------------------------------------------


@dataclass
class RunResult:
    settings: dict[str, str]
    suite: Suite
    schedule: Schedule
    messages: list[tuple[float, dict[str, Any]]]
    published_wall: npt.NDArray[np.float64]
    epoch: float
    speed: float
    wall_s: float
    published: int
    engine_status: dict[str, Any]
    lag_max_s: float
    disconnects: int = 0
    #: "broker": published through MQTT to 'proximity run'; "direct": an in-process engine
    #: fed the fixes (simulator.direct), without transport and latency.
    mode: str = "broker"
    #: Which rows of the schedule the devices sent (None: every row's publication time is
    #: in ``published_wall``).
    sent: npt.NDArray[np.bool_] | None = None
    #: Pursuit commands the devices received.
    commands: int = 0
    #: The seq each row was sent with (-1: not sent); None: the schedule's own numbers.
    seq_of_row: npt.NDArray[np.int64] | None = None
    _by_seq: list[npt.NDArray[np.int64]] | None = None

    def row_of_seq(self, device: int) -> npt.NDArray[np.int64]:
        """Device ``device``'s rows by the seq they were sent with (-1: none)."""
        if self.seq_of_row is None:
            return self.schedule.index[device]
        if self._by_seq is None:  # every device's at once (one sort)
            sent = np.flatnonzero(self.seq_of_row >= 0)
            dev = self.schedule.dev[sent]
            sent = sent[np.lexsort((self.seq_of_row[sent], dev))]
            cuts = np.searchsorted(
                self.schedule.dev[sent], np.arange(len(self.schedule.devices) + 1)
            )
            # Seqs run 0, 1, ... per device: the k-th sent row has seq k.
            self._by_seq = [sent[a:b] for a, b in itertools.pairwise(cuts.tolist())]
        return self._by_seq[device]

    def sent_rows(self) -> npt.NDArray[np.bool_]:
        if self.sent is not None:
            return self.sent
        return np.isfinite(self.published_wall)

    def alarm_track(self) -> dict[str, Any]:
        """The offenders' track while an alarm of theirs stood at level alarm or above (its
        spells): the intervals between the fixes they sent then, median and 90th
        percentile, seconds, and how many fixes."""
        sent = self.sent_rows()
        sched = self.schedule
        dev = {d: i for i, d in enumerate(sched.devices)}
        offender = {c.id: dev.get(c.offender) for c in self.suite.cases}
        gaps: list[float] = []
        fixes = 0
        for a in self.alarms():
            i = offender.get(a.case_id)
            if i is None or not a.is_alarm:
                continue
            rows = sched.index[i][sched.index[i] >= 0]
            t = sched.t[rows[sent[rows]]]
            spells = a.spells or [[a.alarm_s, a.alarm_until_s]]
            for lo, hi in spells:
                inside = t[(t >= lo) & (t <= min(hi, self.suite.duration_s))]
                fixes += int(inside.size)
                gaps.extend(np.diff(inside).tolist())
        return {
            "fixes": fixes,
            "interval_median_s": round(float(np.median(gaps)), 2) if gaps else None,
            "interval_p90_s": round(float(np.percentile(gaps, 90)), 2) if gaps else None,
        }

    def alarms(self) -> list[AlarmRecord]:
        return collect_alarms((m for _, m in self.messages), self.epoch)

    def latencies_s(self) -> list[float]:
        """Fix published -> alarm received, for alarms a fix caused (wall seconds)."""
        out = []
        dev = {d: i for i, d in enumerate(self.schedule.devices)}
        index: dict[int, npt.NDArray[np.int64]] = {}
        for arrived, m in self.messages:
            trig = m.get("trigger") or {}
            if trig.get("cause") != "fix" or trig.get("seq") is None:
                continue
            i = dev.get(str(trig.get("device")))
            if i is None:
                continue
            if i not in index:
                index[i] = self.row_of_seq(i)
            if trig["seq"] >= index[i].size:
                continue
            j = index[i][trig["seq"]]
            if j >= 0 and math.isfinite(self.published_wall[j]):
                out.append(arrived - float(self.published_wall[j]))
        return out

    def dropouts(self) -> dict[str, list[TruthEvent]]:
        """Per case: the gaps in its offender's reports (dropouts that swallowed a report)
        longer than the declared interval plus the signal grace, up to the case's end too,
        as marginal silences: a
        ``signal_lost`` alarm in one is the rule doing what it says, not a false alarm, and
        the engine is not required to raise one (it allows for the cadence it learned)."""
        grace = float(self.settings.get("signal_grace_s", RuleConfig().signal_grace_s))
        sched = self.schedule
        dev = {d: i for i, d in enumerate(sched.devices)}
        out: dict[str, list[TruthEvent]] = {}
        for c in self.suite.cases:
            i = dev.get(c.offender)
            if i is None:
                continue
            rows = sched.index[i][sched.index[i] >= 0]  # its reports, in time order
            t = sched.t[rows[~sched.fast[rows]]]
            limit = self.suite.devices[c.offender].declared_s + grace
            long = np.flatnonzero(np.diff(t) > limit)
            out[c.id] = [
                TruthEvent(c.id, "silence", float(t[k]), float(t[k + 1]), marginal=True)
                for k in long.tolist()
            ]
            # And a last report that a dropout left without a successor before the case ended.
            if t.size and c.end_s - float(t[-1]) > limit:
                out[c.id].append(TruthEvent(c.id, "silence", float(t[-1]), c.end_s, marginal=True))
        return out

    def summary(self) -> dict[str, Any]:
        gaps = self.dropouts()
        windows = [
            CaseWindow(
                c.id, c.family, c.start_s, c.end_s, (*c.truth, *gaps.get(c.id, ())), c.parallel
            )
            for c in self.suite.cases
        ]
        fams, outcomes = score(windows, self.alarms())
        return {
            "settings": self.settings,
            "mode": self.mode,
            "speed": self.speed if self.mode == "broker" else None,
            "wall_s": round(self.wall_s, 1),
            "scenario_s": self.suite.duration_s,
            "fixes_published": self.published,
            "fixes_processed": self.engine_status.get("fixes_processed"),
            # Set aside by the engine (multipath jumps), and late or duplicate: not lost.
            "fixes_set_aside": self.engine_status.get("fixes_implausible"),
            "fixes_late_or_duplicate": (self.engine_status.get("fixes_late") or 0)
            + (self.engine_status.get("fixes_duplicate") or 0),
            "messages": len(self.messages),
            "publish_lag_max_s": round(self.lag_max_s, 3),
            "mqtt_disconnects": self.disconnects,
            # Sweeps the engine skipped, having fallen behind its clock (0: it kept up).
            "sweeps_skipped": self.engine_status.get("sweeps_skipped") or 0,
            "epoch": self.epoch,
            "latency_ms": percentiles_ms(self.latencies_s()),
            "pursuit": {"commands": self.commands, "alarm_track": self.alarm_track()},
            "families": [f.row() for f in fams.values()],
            "total": totals(fams).row(),
            "missed": [
                {"case_id": o.case_id, "kind": o.kind, "start_s": round(o.start_s, 1)}
                for o in outcomes
                if not o.detected
            ],
        }


class Progress:
    """A one-line progress bar on a terminal, a line every 10 s otherwise."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self._last = 0.0

    def show(self, frac: float, text: str, force: bool = False) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if not force and now - self._last < (0.5 if self.tty else 10.0):
            return
        self._last = now
        bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
        line = f"  [{bar}] {100 * frac:5.1f} %  {text}"
        if self.tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.tty and not self.quiet:
            print(file=sys.stderr)


def hms(s: float) -> str:
    s = max(0, int(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
