"""Operator-facing texts speak of "the offender" and "the protected person" and assume no
gender: every alarm reason the engine writes, the CAP alerts' texts and the notices."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import proximity.reasons
from cic.cap import CapFormatter
from cic.messages import alarm_message
from cic.notice import TEXT
from proximity.clock import iso_utc
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


def test_no_sentence_in_the_reasons_module_assumes_a_gender() -> None:
    """Every operator sentence is worded in proximity/reasons.py: none of its texts, including
    those the corpus above does not reach, assumes a gender."""
    tree = ast.parse(Path(proximity.reasons.__file__).read_text())
    texts = [
        n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    ]
    assert len(texts) > 50
    for text in texts:
        assert not GENDERED.search(text), text
