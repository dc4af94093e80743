"""The README and docs/ say what the code does: their commands run as shown.

How a page marks its blocks (HTML comment lines directly above a fence: invisible in rendered
Markdown, obvious in the source; several may be stacked):

- ``<!-- runnable -->`` above a ```` ```sh ```` block: the test runs it with
  ``bash -c 'set -euo pipefail; BLOCK'`` in a fresh temporary directory, with the project's
  virtual environment first on PATH and no ``PROXIMITY_*`` settings in the environment, and it
  must exit 0 within RUN_TIMEOUT_S. The runnable blocks of one page run in their order in
  the same directory, as a reader who follows the page top to bottom would run them (the
  import before the list); each block is its own test.
- ``<!-- runnable: fails -->``: the same, but the block documents a refusal and must exit
  non-zero (keep such a block to the one command that fails).
- ``<!-- runnable: checkout -->``: runs in the root of the checkout instead (``scripts/...``);
  such a block must not write files.
- ``<!-- output -->`` above a ```` ```text ```` block right after a runnable block: every line of
  it (but ``...``) appears in what that block printed.
- ``<!-- file: NAME -->`` above any block: its text is written to NAME in the page's temporary
  directory before the page's runnable blocks run (a case file, a config file, a message).
- ``<!-- abridged -->`` above a ```` ```json ```` block: a shortened example, checked only for
  valid JSON and known field names. Every other JSON block that is a case file (a top-level
  ``cases`` list) must import with :func:`proximity.cases.parse_case_file`, unless it is marked
  ``<!-- invalid -->`` (a documented mistake, which must be rejected); every other JSON block
  that is an alarm message must validate against the alarm message schema.
- ``<!-- demo-output -->`` above the README's sample of the demo's output: its alarm lines are
  exactly what ``proximity demo`` prints for such an alarm today, and its other lines and
  summary headings are the ones the demo prints.

Blocks that need a running broker or engine (``proximity run``, ``mosquitto_pub``,
``mosquitto_sub``) and the long ones (``scripts/demo``, ``scripts/evaluate``, ``scripts/bench``)
are not marked: a command pasted by a reader must work as printed, so no block depends on a
fixture's broker URL; what they show is covered by the integration tests.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import cli.demo as demo
from cic.messages import ALARM_SCHEMA_PATH
from proximity.cases import parse_case_file
from proximity.errors import CaseFileError

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 400
RUN_TIMEOUT_S = 60.0
#: Settings a reader's shell is assumed not to set (they would redirect the blocks' files);
#: the kernel cache switch is no setting and stays.
KEEP_ENV = {"PROXIMITY_NUMBA_CACHE"}

_MARK = re.compile(r"^\s*<!--\s*([a-z-]+)\s*(?::\s*(.*?))?\s*-->\s*$")
_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    marks: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


@cache
def blocks(page: Path) -> tuple[Block, ...]:
    """Every fenced block of ``page`` with the marks on the comment lines right above it."""
    lines = page.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang = m.group(1), m.group(2)
        marks: dict[str, str] = {}
        j = i - 1
        while j >= 0 and (mark := _MARK.match(lines[j])):
            marks.setdefault(mark.group(1), mark.group(2) or "")
            j -= 1
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        assert end < len(lines), f"{page.name}:{i + 1}: the block is never closed"
        body = [ln[len(indent) :] if ln.startswith(indent) else ln for ln in lines[i + 1 : end]]
        out.append(Block(page, i + 1, lang, "\n".join(body) + "\n", marks))
        i = end + 1
    return tuple(out)


def all_blocks() -> list[Block]:
    return [b for page in PAGES for b in blocks(page)]


def _param(items: list[Block]) -> Any:
    return pytest.mark.parametrize("block", items, ids=[b.where for b in items])


RUNNABLE = [b for b in all_blocks() if "runnable" in b.marks]
JSON_BLOCKS = [b for b in all_blocks() if b.lang == "json"]


# -- running the runnable blocks ----------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    returncode: int | None  # None: timed out
    output: str


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROXIMITY_") or k in KEEP_ENV}
    env["PATH"] = os.pathsep.join(
        [str(Path(sys.executable).parent), env.get("PATH", ""), "/usr/sbin"]
    )
    return env


def _run(block: Block, cwd: Path) -> Run:
    try:
        done = subprocess.run(
            ["bash", "-c", "set -euo pipefail\n" + block.text],
            cwd=cwd,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or b""
        text = out.decode() if isinstance(out, bytes) else out
        return Run(None, text + f"\n(timed out after {RUN_TIMEOUT_S:.0f} s)")
    return Run(done.returncode, done.stdout + done.stderr)


@cache
def page_runs(page: Path) -> dict[int, Run]:
    """Run the page's runnable blocks in order (files written first); results by line."""
    work = Path(tempfile.mkdtemp(prefix="proximity-docs-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    for b in blocks(page):
        if "file" in b.marks:
            (work / b.marks["file"]).write_text(b.text, encoding="utf-8")
    results = {}
    for b in blocks(page):
        if "runnable" in b.marks:
            where = ROOT if b.marks["runnable"] == "checkout" else work
            results[b.line] = _run(b, where)
    return results


def _expected_output(block: Block) -> Block | None:
    following = [b for b in blocks(block.page) if b.line > block.line]
    if following and "output" in following[0].marks:
        return following[0]
    return None


def test_the_marks_are_known() -> None:
    known = {"runnable", "file", "output", "abridged", "invalid", "demo-output"}
    for b in all_blocks():
        assert set(b.marks) <= known, f"{b.where}: unknown mark(s) {set(b.marks) - known}"
        if "runnable" in b.marks:
            assert b.lang == "sh", f"{b.where}: only sh blocks run"
            assert b.marks["runnable"] in ("", "fails", "checkout"), b.where
        if "output" in b.marks:
            before = [x for x in blocks(b.page) if x.line < b.line]
            assert before and "runnable" in before[-1].marks, f"{b.where}: output of what?"
    assert RUNNABLE, "no runnable blocks found"


@_param(RUNNABLE)
def test_runnable_block_runs_as_shown(block: Block) -> None:
    run = page_runs(block.page)[block.line]
    context = f"{block.where}:\n{block.text}\n--- output ---\n{run.output}"
    assert run.returncode is not None, context
    if block.marks["runnable"] == "fails":
        assert run.returncode != 0, "the documented refusal did not happen: " + context
    else:
        assert run.returncode == 0, context
    shown = _expected_output(block)
    if shown is not None:
        for line in shown.text.splitlines():
            if line.strip() and line.strip() != "...":
                assert line.strip() in run.output, (
                    f"{shown.where}: {line.strip()!r} not in\n{context}"
                )


# -- JSON examples ------------------------------------------------------------------------------


@cache
def _alarm_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(ALARM_SCHEMA_PATH.read_text(encoding="utf-8"))
    return schema


def _is_alarm(doc: object) -> bool:
    return isinstance(doc, dict) and {"alarm_id", "type", "level", "state"} <= set(doc)


@_param(JSON_BLOCKS)
def test_json_example_is_valid(block: Block) -> None:
    try:
        doc = json.loads(block.text)
    except json.JSONDecodeError as exc:
        pytest.fail(f"{block.where}: not valid JSON ({exc}); mark a sketch <!-- abridged -->?")
    abridged = "abridged" in block.marks
    if isinstance(doc, dict) and "cases" in doc and not abridged:
        if "invalid" in block.marks:
            with pytest.raises(CaseFileError):
                parse_case_file(doc, block.where)
        else:
            parse_case_file(doc, block.where)  # raises, naming every problem
    if _is_alarm(doc):
        schema = _alarm_schema()
        if abridged:
            unknown = set(doc) - set(schema["properties"])
            assert not unknown, f"{block.where}: fields the message does not have: {unknown}"
        else:
            jsonschema.validate(doc, schema)


# -- links, length, contents --------------------------------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(page: Path) -> frozenset[str]:
    fences = {b.line for b in blocks(page)}
    out, inside = set(), False
    for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip().startswith("```"):
            inside = not inside if n in fences or inside else inside
            continue
        if not inside and (m := re.match(r"^#{1,6} (.+)$", line)):
            out.add(_slug(m.group(1)))
    return frozenset(out)


def _links(page: Path) -> Iterator[tuple[int, str]]:
    inside = False
    for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip().startswith("```"):
            inside = not inside
            continue
        if not inside:
            for m in _LINK.finditer(re.sub(r"`[^`]*`", "", line)):
                yield n, m.group(1)


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_lead_somewhere(page: Path) -> None:
    for n, target in _links(page):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not checked here
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}:{n}: {target}: {dest} does not exist"
        if anchor and dest.suffix == ".md":
            assert anchor in anchors(dest), f"{page.name}:{n}: no heading #{anchor} in {dest.name}"


def test_readme_is_a_guide_with_its_contents() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    sections = [h for h in re.findall(r"^## (.+)$", text, re.M) if h != "Contents"]
    contents = text.split("## Contents", 1)[1].split("\n## ", 1)[0]
    for h in sections:
        assert f"](#{_slug(h)})" in contents, f"section {h!r} missing from the contents"
    for page in PAGES[1:]:
        assert f"(docs/{page.name})" in text, f"README does not link to docs/{page.name}"


def test_the_docs_assume_no_gender() -> None:
    # Offenders and protected persons are "the offender" and "the protected person".
    for page in PAGES:
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            found = re.findall(r"\b(he|him|his|himself|she|her|hers|herself)\b", line, re.I)
            assert not found, f"{page.name}:{n}: {found}: {line.strip()}"


# -- the README's sample of the demo's output ---------------------------------------------------

_TIME = r"^ *(?P<t>\d+\.\d)s  "
_ALARM = re.compile(
    _TIME + r"(?P<type>[A-Z_]+) +(?P<state>[A-Z]+) +(?P<level>[a-z_]+) +(?P<case>\S+)  "
    r"(?P<where>.+?) (?P<verdict>[a-z]*) *p=(?P<p>\S+)  (?P<cause>.+)$"
)
_PAIR = re.compile(
    r"^(?P<off>\S+) -> (?P<vic>\S+) +(?P<dist>-?\d+) m \+-(?P<unc>\d+) \(order (?P<order>\d+) m\)$"
)
_ZONE = re.compile(
    r'^(?P<off>\S+) (?P<inside>\d+) m (?P<side>inside|outside) (?P<kind>\w+) zone "(?P<zone>.*)"'
    r" \+-(?P<unc>\d+)$"
)
_LATENCY = re.compile(r"^latency (?P<ms>\d+\.\d) ms$")


def _demo_sample() -> list[str]:
    (sample,) = [b for b in blocks(ROOT / "README.md") if "demo-output" in b.marks]
    return sample.text.splitlines()


def _is_alarm_line(line: str) -> bool:
    return re.match(_TIME + r"[A-Z]", line) is not None


def _alarm_of(line: str, seq: int) -> tuple[float, dict[str, Any], float | None]:
    """The alarm message (the fields the demo prints) that the README line shows."""
    m = _ALARM.match(line)
    assert m, f"README demo line does not parse as an alarm line: {line!r}"
    where, cause = m.group("where"), m.group("cause")
    pair, zone, latency = _PAIR.match(where), _ZONE.match(where), _LATENCY.match(cause)
    assert pair or zone, f"neither a pair nor a zone alarm: {where!r}"
    assert latency or cause == "(sweep: no new fix)", f"unknown cause {cause!r}"
    verdict = m.group("verdict")
    p = m.group("p")
    msg: dict[str, Any] = {
        "type": m.group("type").lower(),
        "state": m.group("state").lower(),
        "level": m.group("level"),
        "case_id": m.group("case"),
        "classification": f"{verdict}_breach" if verdict in ("certain", "possible") else verdict,
        "probability": None if p == "nan" else float(p),
        "trigger": {"cause": "fix" if latency else "time", "seq": seq},
    }
    if pair:
        msg |= {
            "offender": {"device": pair.group("off")},
            "victim": {"device": pair.group("vic")},
            "distance_m": float(pair.group("dist")),
            "uncertainty_m": float(pair.group("unc")),
            "order_distance_m": float(pair.group("order")),
            "zone": None,
        }
    else:
        assert zone is not None
        inside = float(zone.group("inside")) * (1 if zone.group("side") == "inside" else -1)
        msg |= {
            "offender": {"device": zone.group("off")},
            "victim": {"device": "phone-x"},
            "uncertainty_m": float(zone.group("unc")),
            "zone": zone.group("zone"),
            "zone_kind": zone.group("kind"),
            "zone_inside_m": inside,
        }
    msg["trigger"]["device"] = msg["offender"]["device"]
    return float(m.group("t")), msg, float(latency.group("ms")) if latency else None


def _shape(line: str) -> str:
    """A demo line with its numbers, paths and lists of counts made generic."""
    line = re.sub(r"\S*/registry\.sqlite", "PATH", line)
    line = re.sub(r"mqtt://\S+", "URL", line)
    line = re.sub(r"\d+(\.\d+)?", "N", line)
    line = re.sub(r"\((?:[\w-]+ N)(?:, [\w-]+ N)*\)", "(LIST)", line)
    line = re.sub(r": N [\w-]+(?:, N [\w-]+)*$", ": LIST", line)
    return " ".join(line.split())  # the columns of alarm lines are checked exactly


def test_the_readme_shows_the_demo_output_of_today() -> None:
    """Each alarm line of the README's sample is exactly what the demo prints for that alarm
    (:func:`cli.demo.alarm_line`), and the summary's headings are the demo's, in its
    order. (tests/test_demo.py runs the demo and holds its real output to the same format
    and the sample's other lines.)"""
    sample = _demo_sample()
    alarms = [line for line in sample if _is_alarm_line(line)]
    assert len(alarms) >= 5, "the sample shows too few alarm lines"
    for seq, line in enumerate(alarms):
        elapsed, msg, latency = _alarm_of(line, seq)
        printed = demo.alarm_line(elapsed, msg, math.nan if latency is None else latency)
        assert printed == line, f"the demo prints this alarm as\n{printed}\nnot\n{line}"
    shown = summary_headings(sample)
    assert shown == [h for h in demo.SUMMARY_HEADINGS if h in shown]
    assert {"simulated", "fixes", "rejected", "alarms", "latency"} <= set(shown)


def summary_headings(lines: list[str]) -> list[str]:
    """ "  simulated      24 cases, ...": the heading is the padded column after two spaces."""
    return [ln[2:17].strip() for ln in lines[lines.index("Summary") + 1 :] if ln.strip()]
