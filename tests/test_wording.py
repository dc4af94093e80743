"""Operator-facing texts speak of "the offender" and "the protected person" and assume no
gender: every alarm reason the engine writes, the CAP alerts' texts and the notices."""

from __future__ import annotations

import re

from proximity.cap import CapFormatter
from proximity.messages import alarm_message, iso_utc
from proximity.notice import TEXT
from tests.alarm_corpus import every_alarm

GENDERED = re.compile(r"\b(he|him|his|himself|she|her|hers|herself)\b", re.IGNORECASE)


def test_no_alarm_text_assumes_a_gender() -> None:
    events, case = every_alarm()
    cap = CapFormatter()
    kinds = set()
    for e in events:
        m = alarm_message(e, case)
        m["times"]["published"] = iso_utc(e.t_decided)
        kinds.add(m["type"])
        assert not GENDERED.search(m["reason"]), m["reason"]
        xml = cap.alert(m).decode()
        assert not GENDERED.search(re.sub(r"<[^>]+>", " ", xml)), xml
    # The corpus covers pair, zone, curfew, probing, silence and device alarms.
    assert {"proximity", "approach", "zone", "curfew", "probing", "signal_lost", "panic"} <= kinds
    for text in TEXT.values():
        assert not GENDERED.search(text), text
