"""The operator console in a real browser (Debian's Chromium, driven by Playwright): a new
alarm appears in the queue, grouped with the alarms of its incident, the alert sounds, the
map shows both parties, acknowledging and suspending in the page reach cic/alarms; and the
case manager draws a zone. Screenshots are saved."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from simulator.broker import LocalBroker, free_port
from simulator.metrics import epoch
from simulator.process import EngineProcess
from tests.conftest import WAIT_S, Listener, Publisher, add_users, import_cases, now
from tests.naive import offset

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.broker,
    pytest.mark.wallclock,
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="Chromium is not installed (scripts/test installs it)"
    ),
]
playwright_api = pytest.importorskip("playwright.sync_api")

HOME = (50.8466, 4.3528)
CASE = {
    "id": "BE-CONSOLE-1",
    "offenders": ["tag-c"],
    "protected": ["phone-c"],
    "order": {"distance_m": 500, "warning_distance_m": 1000},
    "summary": {"offender_name": "R. Maes", "victim_name": "S. Dubois", "risk_notes": "threats"},
    "zones": {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [HOME[1], HOME[0]]},
                "properties": {"kind": "exclusion", "label": "home", "radius_m": 150},
            }
        ],
    },
}
#: Where the screenshots go: PROXIMITY_SCREENSHOTS if set, else the test's own folder.
SHOTS_ENV = "PROXIMITY_SCREENSHOTS"


@pytest.fixture(scope="module")
def console(
    broker: LocalBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, dict[str, str], Path]]:
    tmp = tmp_path_factory.mktemp("console")
    db = import_cases(tmp, [CASE])
    tokens = add_users(db, {"desk-7": "operator", "cm-7": "case_manager"})
    port = free_port()
    args = ("--dwell-s", "0", "--implausible-speed-mps", "1e9", "--http", f"127.0.0.1:{port}")
    proc = EngineProcess(broker.url, db, tmp / "engine.log", *args).start()
    shots = Path(os.environ.get(SHOTS_ENV) or tmp)
    shots.mkdir(parents=True, exist_ok=True)
    yield f"http://127.0.0.1:{port}/", tokens, shots
    assert proc.stop() == 0, proc.log.read_text()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--autoplay-policy=no-user-gesture-required", "--no-sandbox"],
        )
        yield b
        b.close()


def signed_in(browser: Any, url: str, token: str) -> tuple[Any, list[str]]:
    """A new page of the console, signed in with ``token``, and the script errors it raises."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.fill("#token", token)
    page.click("button[type=submit]")
    return page, errors


def test_a_new_alarm_shows_sounds_maps_and_is_acknowledged_in_the_page(
    console: tuple[str, dict[str, str], Path], browser: Any, broker: LocalBroker
) -> None:
    url, tokens, shots = console
    cic = Listener(broker.url, ["cic/alarms"])
    pub = Publisher(broker.url)
    page, errors = signed_in(browser, url, tokens["desk-7"])
    try:
        page.wait_for_function("window.consoleState.streamOpen === true", timeout=WAIT_S * 1000)
        assert page.text_content("#unacked") == "0 unacknowledged"
        # The offender 400 m from her: a pre-alert (low priority), shown without a sound.
        t0 = time.monotonic()
        pub.fix("phone-c", *HOME)
        pub.fix("tag-c", *offset(*HOME, 90.0, 400.0))
        row = page.wait_for_selector(
            "#queue tbody tr[data-case-id='BE-CONSOLE-1']", timeout=WAIT_S * 1000
        )
        shown_after = time.monotonic() - t0
        assert (row.get_attribute("class") or "").startswith("low")
        assert page.evaluate("window.consoleState.alertsPlayed") == 0
        # She presses the panic button: high priority, and the alert sounds.
        pub.raw("devices/phone-c/event", orjson.dumps({"ts": now(), "type": "panic"}))
        row = page.wait_for_selector(
            "#queue tbody tr.high[data-case-id='BE-CONSOLE-1']", timeout=WAIT_S * 1000
        )
        page.wait_for_function("window.consoleState.alertsPlayed >= 1", timeout=WAIT_S * 1000)
        assert page.text_content("#unacked") == "2 unacknowledged"
        # One situation, one incident: her panic and the pre-alert about him stand together
        # in the queue under one incident id, the incident high, the panic first.
        panic_id = row.get_attribute("data-alarm-id")
        rows = page.locator("#queue tbody tr")
        page.wait_for_function(
            "document.querySelectorAll('#queue tbody tr').length === 2", timeout=WAIT_S * 1000
        )
        assert rows.nth(0).get_attribute("data-alarm-id") == panic_id
        assert rows.nth(0).get_attribute("data-incident-id") == rows.nth(1).get_attribute(
            "data-incident-id"
        )
        assert (rows.nth(0).locator("td").nth(1).text_content() or "").endswith("(high)")
        assert "same-incident" in (rows.nth(1).get_attribute("class") or "")
        # (The queue is drawn anew every second: a locator finds the row again, a handle
        # taken before may point at a row that has been replaced.)
        page.locator(f"#queue tbody tr[data-alarm-id='{panic_id}']").click()
        page.wait_for_function(
            "window.consoleState.drawn.map(d => d.device).sort().join() === 'phone-c,tag-c'",
            timeout=WAIT_S * 1000,
        )
        assert "S. Dubois" in (page.text_content("#summary") or "")
        assert "with proximity pre_alert" in (page.text_content("#incident") or "")
        assert page.locator("#trail li").count() >= 1
        page.screenshot(path=str(shots / "console-alarm.png"), full_page=True)
        alarm_id = row.get_attribute("data-alarm-id")
        page.fill("#note", "team dispatched")
        page.click("#ack")
        acked = cic.wait_for(
            "cic/alarms", lambda m: m["alarm_id"] == alarm_id and m["state"] == "acknowledged"
        )
        assert acked["operator"] == "desk-7" and "team dispatched" in acked["reason"]
        page.wait_for_function(
            "document.querySelector('#action-result').textContent.startsWith('acknowledged')",
            timeout=WAIT_S * 1000,
        )
        page.screenshot(path=str(shots / "console-acknowledged.png"), full_page=True)
        # A panic is never suspended: the page says why.
        page.click("#suspend")
        page.wait_for_function(
            "document.querySelector('#action-result').textContent.includes('never suspended')",
            timeout=WAIT_S * 1000,
        )
        # The pre-alert's source is, for 30 minutes, with the operator's reason (required).
        pre_id = rows.nth(1).get_attribute("data-alarm-id")
        page.locator(f"#queue tbody tr[data-alarm-id='{pre_id}']").click()
        page.wait_for_function(
            "document.querySelector('#detail-title').textContent.startsWith('proximity')",
            timeout=WAIT_S * 1000,
        )
        page.fill("#note", "")
        page.click("#suspend")
        assert "needs a reason" in (page.text_content("#action-result") or "")
        page.select_option("#suspend-for", "30")
        page.fill("#note", "his workplace; known")
        page.click("#suspend")
        held = cic.wait_for(
            "cic/alarms", lambda m: m["alarm_id"] == pre_id and m["state"] == "suspended"
        )
        assert held["operator"] == "desk-7" and "his workplace; known" in held["reason"]
        minutes = (epoch(held["suspended_until"]) - epoch(held["times"]["decided"])) / 60
        assert minutes == pytest.approx(30.0, abs=0.1)
        page.wait_for_function(
            "document.querySelector('#action-result').textContent.startsWith('suspended')",
            timeout=WAIT_S * 1000,
        )
        page.screenshot(path=str(shots / "console-suspended.png"), full_page=True)
        print(f"the queue showed the alarm {shown_after:.2f} s after the first breach fix")
        assert not errors, errors
    finally:
        page.close()
        cic.close()
        pub.close()


def test_the_case_manager_draws_a_zone(
    console: tuple[str, dict[str, str], Path], browser: Any
) -> None:
    url, tokens, shots = console
    page, errors = signed_in(browser, url, tokens["cm-7"])
    try:
        page.click("#cases tbody tr[data-case-id='BE-CONSOLE-1']")
        canvas = page.locator("#zone-map")
        for x, y in ((100, 100), (300, 100), (300, 300), (100, 300)):
            canvas.click(position={"x": x, "y": y})
        page.fill("#zone-label", "school")
        page.click("#zone-save")
        page.wait_for_function(
            "document.querySelector('#zone-result').textContent.startsWith('saved')",
            timeout=WAIT_S * 1000,
        )
        page.wait_for_function(
            "document.querySelector('#case-title').textContent.includes('2 zone(s)')",
            timeout=WAIT_S * 1000,
        )
        page.screenshot(path=str(shots / "console-zone.png"), full_page=True)
        assert not errors, errors
    finally:
        page.close()
