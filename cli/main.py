"""Command line: ``proximity run``, ``proximity config show``, ``proximity cases
import|list|remove``, ``proximity evidence export|verify|key``, ``proximity demo``,
``proximity evaluate``, ``proximity broker config``."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import re
import signal
import sys
import textwrap
import threading
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from cli import broker as broker_cli
from cli import operators as operators_cli
from ingest.model import IngestError
from ingest.transport import PASSWORD_ENV, parse_broker_url
from numerics.uncertainty import MOBILITY_MPS
from proximity.cases import Case, Device, parse_case_file, parse_mobility, top_speeds
from proximity.errors import CaseFileError, ProximityError
from service.settings import (
    CONFIG_ENV,
    ENV_PREFIX,
    ResolvedSettings,
    Settings,
    flag_name,
    resolve_settings,
)
from storage.registry import REDACTED, Registry, redacted

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2

_ENV_HELP = """\
Every setting can also come from an environment variable (PROXIMITY_BROKER, PROXIMITY_DB,
PROXIMITY_ALARM_TOPIC, ...: PROXIMITY_ and the upper-case name) or from a TOML config file
(--config FILE or PROXIMITY_CONFIG) with the same names, e.g.

    broker = "mqtt://10.0.0.5:1883"
    db = "/var/lib/proximity/registry.sqlite"
    margin_min_m = 30

Precedence: command-line flag > environment variable > config file > default.
'proximity config show' (with the same flags) prints every effective value and its source.
"""


def _para(text: str) -> str:
    """Wrap a description paragraph (the raw formatter keeps epilog examples as written)."""
    return textwrap.fill(text, 79)


#: Metavars of the setting flags; the others follow from the name's unit suffix or type.
_METAVARS = {
    "broker": "URL",
    "db": "PATH",
    "evidence": "PATH",
    "journal": "PATH",
    "client_id": "ID",
    "http_listen": "HOST:PORT",
    "margin_fraction": "F",
    "escalation_fraction": "F",
    "implausible_speed_mps": "V",
    "time_scale": "X",
    "time_epoch": "T",
    "log_level": "LEVEL",
}
_SUFFIX_METAVARS = (
    ("_topic", "TOPIC"),
    ("_days", "DAYS"),
    ("_mps", "V"),
    ("_deg", "DEG"),
    ("_m", "M"),
    ("_s", "S"),
)


def _default_text(default: object) -> str | None:
    if default is None:  # the description says what "not set" means
        return None
    if default == "":
        return "empty"
    if isinstance(default, float):
        return f"{default:g}"
    return str(default)


def _help(name: str) -> str:
    field = Settings.model_fields[name]
    default = _default_text(field.default)
    text = f"{field.description} (default: {default})" if default else str(field.description)
    return text.replace("%", "%%")  # argparse formats help with %


def _flag_type(name: str) -> tuple[Any, dict[str, Any]]:
    """The argparse type and options of setting ``name``, from its annotation."""
    annotation: Any = Settings.model_fields[name].annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is typing.Literal:
        return str, {"choices": list(typing.get_args(annotation))}
    if annotation is bool:
        return None, {"action": argparse.BooleanOptionalAction}
    metavar = _METAVARS.get(name) or next(
        (m for suffix, m in _SUFFIX_METAVARS if name.endswith(suffix)), None
    )
    if metavar is None:
        metavar = {int: "N", float: "X", Path: "PATH"}.get(annotation, "TEXT")
    if annotation not in (int, float, Path, str):
        raise TypeError(f"setting {name}: no command-line type for {annotation!r}")
    return annotation, {"metavar": metavar}


def _add_setting_flags(p: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """One flag per setting (``names``, default: every one), typed, with its description and
    default; each flag's dest is the setting's name."""
    for name in names if names is not None else Settings.model_fields:
        kind, options = _flag_type(name)
        if kind is not None:
            options["type"] = kind
        p.add_argument(flag_name(name), dest=name, default=None, help=_help(name), **options)


def _setting_flags(args: argparse.Namespace) -> dict[str, object]:
    """The settings given as flags (None: not given)."""
    return {name: getattr(args, name, None) for name in Settings.model_fields}


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"TOML config file (default: the file {CONFIG_ENV} names, if set)",
    )


def _add_db(p: argparse.ArgumentParser) -> None:
    _add_setting_flags(p, ["db"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="proximity",
        description=_para(
            "Electronic tracking and geofence proximity engine for stalking and"
            " restraining-order cases: GPS fixes in over MQTT, stalking alarms out to the"
            " police emergency centre (CIC)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'proximity COMMAND --help' for each command's options.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run the engine against an MQTT broker",
        description=_para(
            "Subscribe to devices/+/fix, keep the last fix of every device, evaluate"
            " the offender/protected-person pairs of the registered cases, and publish an alarm"
            " on the alarm topic (QoS 1) whenever a pair enters or leaves breach of its order."
            " Stops cleanly on Ctrl-C or SIGTERM. Exit status: 0 stopped, 1 could not start, 3"
            " stopped by its watchdog (a stuck decision loop or a dead MQTT network thread: an"
            " engine_fault alarm went to every case first; let a supervisor restart it)."
        ),
        epilog=_ENV_HELP
        + "\nExample:\n  proximity run --broker mqtt://127.0.0.1:1883 --db cases.sqlite\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config(run)
    _add_setting_flags(run)

    config = sub.add_parser(
        "config",
        help="show the effective settings and where each came from",
        description=_para(
            "Inspect the settings the engine would run with ('proximity run' takes the same"
            " flags, environment variables and config file)."
        ),
    )
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = config_sub.add_parser(
        "show",
        help="every setting, its effective value and its source",
        description=_para(
            "Print every setting, its effective value and where that value came from: a flag"
            " (flag), an environment variable (environment, naming it), the config file (file,"
            " naming it) or the default. Give the same flags, environment and config file as"
            " to 'proximity run'. An unknown key in the config file or a bad value is an"
            " error naming the key and its source."
        ),
        epilog=_ENV_HELP + "\nExamples:\n  proximity config show --config /etc/proximity.toml\n"
        "  PROXIMITY_CONFIRM_S=10 proximity config show --json\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config(show)
    show.add_argument(
        "--json",
        action="store_true",
        help='print JSON: {"config_file": ..., "settings": {NAME: {"value": ..., "source":'
        ' "flag"|"environment"|"file"|"default", and "flag", "variable" or "file"}}}',
    )
    _add_setting_flags(show)

    cases = sub.add_parser("cases", help="import, list and remove cases in the registry")
    cases_sub = cases.add_subparsers(dest="cases_command", required=True, metavar="ACTION")
    imp = cases_sub.add_parser(
        "import",
        help="import a case file (JSON) into the registry",
        description=_para(
            "Validate a case file and write all its cases in one transaction: if any"
            " case has a problem, every problem is listed and nothing is imported. A case whose"
            " id is already registered is replaced. The file format is in the README."
        ),
        epilog="Example:\n  proximity cases import cases.json --db cases.sqlite\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    imp.add_argument("file", type=Path, metavar="FILE", help="case file (JSON)")
    _add_db(imp)
    _add_config(imp)
    lst = cases_sub.add_parser(
        "list",
        help="list the registered cases",
        description=_para(
            "List the cases in the registry (devices, order and warning distances, mobility,"
            " zones), then each device of a case: its role, protocol mappings (OwnTracks"
            " user/device, OsmAnd id; keys and secrets shown as ***), reporting interval,"
            " grace and top speed, with where each comes from (the device's entry, its case,"
            " or the engine's default)."
        ),
    )
    _add_db(lst)
    _add_config(lst)
    lst.add_argument(
        "--json", action="store_true", help="print the cases as JSON (secrets redacted too)"
    )
    rm = cases_sub.add_parser(
        "remove",
        help="end a case: remove it from the registry (its evidence record is kept)",
        description=_para(
            "End a case: remove it from the registry; an engine running on the registry ends"
            " the case's open alarms and stops watching it at once. Its evidence record (the"
            " .evidence.sqlite file next to the"
            " registry) is kept untouched and can still be exported. The device descriptions"
            " (protocol mappings, secrets, intervals) of the case's devices that no other case"
            " uses are removed with it, unless --keep-devices is given; devices that another"
            " case uses keep theirs."
        ),
        epilog="Example:\n  proximity cases remove BE-2026-0001 --db cases.sqlite\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rm.add_argument("case", metavar="ID", help="case id (see 'proximity cases list')")
    _add_db(rm)
    _add_config(rm)
    rm.add_argument(
        "--keep-devices",
        action="store_true",
        help="keep the device descriptions of devices that no other case uses",
    )

    demo = sub.add_parser(
        "demo",
        help="run a self-contained demonstration (private broker, simulated devices)",
        description="Start a private Mosquitto on a free port, write generated cases to a"
        " temporary SQLite registry, start the engine ('proximity run') and simulated"
        " devices (walking and driving people, some approaching their victims, with GPS"
        " noise), print alarms as they arrive, and end with a summary: fixes processed,"
        " alarms, detection against ground truth, and latency from fix publication to alarm"
        " reception.",
    )
    demo.add_argument(
        "--duration",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds of simulated movement (default: 60)",
    )
    demo.add_argument(
        "--pairs",
        type=int,
        default=24,
        metavar="N",
        help="number of cases (offender/victim pairs) to simulate (default: 24)",
    )
    demo.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds between fixes of each device (default: 1)",
    )
    demo.add_argument("--seed", type=int, default=7, help="random seed (default: 7)")
    demo.add_argument("--quiet", action="store_true", help="print only the summary")
    ev = sub.add_parser(
        "evaluate",
        help="measure detection and latency: scenarios through the broker to the engine",
        description=_para(
            "Generate seeded scenarios with known ground truth (and replay recorded tracks),"
            " start a private Mosquitto (or use --broker) and the engine ('proximity run')"
            " with its clock --speed times faster, publish every device's fixes through the"
            " broker, collect the alarms on the CIC channel (acknowledging each as an"
            " operator would), and score them: detection rate of real breaches, delay after"
            " the true crossing, false alarms and alarms per pair-day, end-to-end latency."
            " Writes summary.json, report.html and the alarms received to --out. With"
            " --sweep, the same scenarios run once per setting."
        ),
        epilog="Scenario types: walk-home, drive-to-walker, parallel, indoor-pass,"
        " silent-approach, probing, stationary, city (or all).\n\nExamples:\n"
        "  proximity evaluate\n"
        "  proximity evaluate stationary,indoor-pass --pairs 10 --speed 120\n"
        "  proximity evaluate walk-home,stationary --sweep confirm_s=0,5,15,30\n"
        "  proximity evaluate none --replay offender.gpx:protected.csv --speed 10\n"
        "  proximity evaluate stationary,indoor-pass --pairs 400 --direct\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ev.add_argument(
        "scenarios",
        nargs="?",
        default="all",
        metavar="SCENARIOS",
        help="comma-separated scenario types, 'all' (default) or 'none' (replays only)",
    )
    ev.add_argument(
        "--pairs",
        type=int,
        default=4,
        metavar="N",
        help="cases per scenario type, each a seeded variant (the city has 6 x N; default: 4)",
    )
    ev.add_argument(
        "--speed",
        type=float,
        default=20.0,
        metavar="X",
        help="scenario seconds per wall second (default: 20; 1 is real time)",
    )
    ev.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds between fixes of each simulated device (default: 1)",
    )
    ev.add_argument(
        "--alarm-interval",
        type=float,
        metavar="S",
        help="the interval pursuit mode asks the devices for during an alarm (sets"
        " pursuit_interval_s; default: the engine's, 10 s): the devices report faster when"
        " the engine commands it",
    )
    ev.add_argument("--seed", type=int, default=7, help="random seed (default: 7)")
    ev.add_argument(
        "--out",
        type=Path,
        default=Path("evaluation"),
        metavar="DIR",
        help="directory for summary.json, report.html and the alarms (default: evaluation)",
    )
    ev.add_argument(
        "--broker", metavar="URL", help="use this broker instead of a private Mosquitto"
    )
    ev.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an engine setting for every run, e.g. confirm_s=10 (repeatable)",
    )
    ev.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="NAME=V1,V2,...",
        help="run once per value (every combination when repeated); NAME is an engine"
        " setting (confirm_s, margin_fraction, dwell_s, ...) or interval_s (the devices')",
    )
    ev.add_argument(
        "--replay",
        action="append",
        default=[],
        metavar="OFFENDER[:VICTIM]",
        help="replay recorded tracks (GPX or CSV) as a case: the offender's, and the protected"
        " person's moved in time and place so that they meet; without it the protected person"
        " stands on the offender's route (repeatable)",
    )
    ev.add_argument(
        "--meet",
        type=float,
        default=0.5,
        metavar="F",
        help="where replayed tracks meet, as a fraction of the offender's recording (default: 0.5)",
    )
    ev.add_argument(
        "--ack-after",
        type=float,
        default=60.0,
        metavar="S",
        help="scenario seconds before the simulated operator acknowledges an alarm (default: 60)",
    )
    ev.add_argument(
        "--direct",
        action="store_true",
        help="no broker: run the engine in this process and feed it the fixes as fast as it"
        " goes (same engine, settings and scoring; no latency figures): for long false-alarm"
        " runs, dozens of pair-days in minutes",
    )
    ev.add_argument("--quiet", action="store_true", help="print only the summary")
    broker_conf = broker_cli.add_parser(sub, _para)
    _add_setting_flags(
        broker_conf,
        ["broker_username", "alarm_topic", "cap_topic", "anchor_topic", "status_topic"],
    )
    _add_db(broker_conf)
    _add_config(broker_conf)
    evidence = sub.add_parser(
        "evidence",
        help="export, verify and sign a case's tamper-evident evidence record",
        description=_para(
            "The engine records, per case, the fixes it used and every alarm message it sent,"
            " in a hash-chained log whose entries it signs with the deployment's evidence key"
            " (Ed25519). 'export' writes a case's record as JSON Lines for a court, with the"
            " case's anchors (signed head hashes the engine published to the CIC); 'verify'"
            " checks that an export is complete and unaltered, and, given the deployment's"
            " public key, that the deployment signed it; 'key' prints that public key."
        ),
    )
    ev_sub = evidence.add_subparsers(dest="evidence_command", required=True, metavar="ACTION")
    exp = ev_sub.add_parser(
        "export",
        help="write a case's evidence record as JSON Lines, signed",
        description=_para(
            "Writes the case's entries, then the case's anchors found in the outbox journal"
            " (a journal that does not exist is not created: the export then holds no"
            " anchors), then a head line signed with the evidence key. The key must exist:"
            " the engine makes it when it first starts."
        ),
        epilog="Example:\n  proximity evidence export BE-2026-0001 --db registry.sqlite"
        " --out BE-2026-0001.jsonl\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    exp.add_argument("case", metavar="CASE", help="case id")
    exp.add_argument("--out", type=Path, metavar="FILE", help="output file (default: stdout)")
    _add_setting_flags(exp, ["evidence", "evidence_key", "journal", "anchor_topic"])
    _add_db(exp)
    _add_config(exp)
    ver = ev_sub.add_parser(
        "verify",
        help="check an exported evidence record (exit 0: intact, 1: altered or unsigned, 2:"
        " unreadable input)",
        description=_para(
            "Checks the chain, every signature, that every entry is signed, the head line,"
            " each anchor against the chain (one beyond the end shows a cut end, one whose"
            " hash differs an edit) and that every removed body is a fix body a later purge"
            " covers. Without --public-key the export is checked against the key it names"
            " itself: that shows it is consistent, not who signed it."
        ),
        epilog="Examples:\n"
        "  proximity evidence verify BE-2026-0001.jsonl --public-key registry.evidence.pub\n"
        '  proximity evidence verify BE-2026-0001.jsonl --public-key "$(proximity evidence'
        ' key --db registry.sqlite)"\n',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ver.add_argument("file", type=Path, metavar="FILE", help="an export (JSON Lines)")
    ver.add_argument(
        "--public-key",
        metavar="HEX|FILE",
        help="the deployment's public key: 64 hex digits, or a file holding them (the .pub"
        " file next to the key; 'proximity evidence key' prints it)",
    )
    ver.add_argument(
        "--anchors",
        type=Path,
        metavar="FILE",
        help="what the CIC received on the anchor topic (one message a line, or the lines of"
        " mosquitto_sub -v; other messages are left aside): the anchors of the export's case"
        " are checked too, which shows a record cut or changed together with the engine's"
        " journal",
    )
    key = ev_sub.add_parser(
        "key",
        help="print the public key of the deployment's evidence key (64 hex digits)",
        description=_para(
            "Prints the public half of the key that signs the evidence record, for whoever"
            " verifies exports (it is also in the .pub file next to the key). It never makes a"
            " key: the engine makes it when it first starts, so a missing key means another"
            " --db, --evidence or --evidence-key than the engine's (exit 2)."
        ),
        epilog="Example:\n  proximity evidence key --db registry.sqlite\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_setting_flags(key, ["evidence", "evidence_key"])
    _add_db(key)
    _add_config(key)

    def with_db(p: argparse.ArgumentParser) -> None:
        _add_db(p)
        _add_config(p)

    operators_cli.add_parsers(sub, _para, with_db, _add_setting_flags)
    _no_abbreviations(parser)
    return parser


def _no_abbreviations(parser: argparse.ArgumentParser) -> None:
    """Flags are taken only as written: an abbreviation (``--broker-password`` for
    ``--broker-password-file``) would take a mistyped secret as a file name, and echo it; and
    an error never repeats what follows a flag named like a password."""
    parser.allow_abbrev = False
    usage_error = parser.error

    def error(message: str) -> typing.NoReturn:
        usage_error(re.sub(r"(--[\w-]*password[\w-]*)(=|\s+)(\S+)", r"\1\2***", message))

    parser.error = error  # type: ignore[method-assign]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _no_abbreviations(sub)


def _settings(args: argparse.Namespace) -> Settings:
    return resolve_settings(getattr(args, "config", None), _setting_flags(args)).settings


def _cmd_run(args: argparse.Namespace) -> int:
    from service.run import EngineService

    settings = _settings(args)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    EngineService(settings).run(stop)
    return EXIT_OK


def _json_value(value: object) -> object:
    return str(value) if isinstance(value, Path) else value


def _shown(value: object) -> str:
    if value is None:
        return "none"
    if value == "":
        return '""'
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _config_doc(resolved: ResolvedSettings) -> dict[str, Any]:
    detail_key = {"flag": "flag", "environment": "variable", "file": "file"}
    settings: dict[str, Any] = {}
    for name in Settings.model_fields:
        origin = resolved.origins[name]
        entry: dict[str, Any] = {
            "value": _json_value(getattr(resolved.settings, name)),
            "source": origin.kind,
        }
        if origin.where is not None:
            entry[detail_key[origin.kind]] = origin.where
        settings[name] = entry
    config = None if resolved.config is None else str(resolved.config)
    return {"config_file": config, "settings": settings}


def _cmd_config_show(args: argparse.Namespace) -> int:
    resolved = resolve_settings(args.config, _setting_flags(args))
    for warning in resolved.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(_config_doc(resolved), indent=2, ensure_ascii=False))
        return EXIT_OK
    rows = [("SETTING", "VALUE", "SOURCE")]
    for name in Settings.model_fields:
        rows.append((name, _shown(getattr(resolved.settings, name)), str(resolved.origins[name])))
    _print_table(rows)
    password = resolved.settings.broker_password_file
    if password is None and os.environ.get(PASSWORD_ENV):
        print(f"broker password: from the environment variable {PASSWORD_ENV} (not shown)")
    elif password is not None:
        print(f"broker password: from the file {password} (not shown)")
    where = "none" if resolved.config is None else str(resolved.config)
    print(
        f"config file: {where}; precedence: flag > environment ({ENV_PREFIX}<NAME>) >"
        " config file > default"
    )
    return EXIT_OK


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _local_actor() -> str:
    """Who a change made through the CLI is recorded as: the local account."""
    try:
        return f"local:{getpass.getuser()}"
    except (KeyError, OSError):  # no name for this uid (a container)
        return f"local:uid {os.getuid()}"


def _cmd_cases_import(args: argparse.Namespace) -> int:
    settings = _settings(args)
    try:
        doc = json.loads(args.file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        print(f"error: case file {args.file} does not exist", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, or a 5000-digit number
        print(f"error: {args.file} is not valid JSON: {exc}; nothing was imported", file=sys.stderr)
        return EXIT_BAD_INPUT
    case_file = parse_case_file(doc, str(args.file))
    for warning in case_file.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    with Registry(settings.db) as registry:
        report = registry.import_file(case_file, actor=_local_actor())
    print(
        f"imported {len(case_file.cases)} case(s) into {settings.db}:"
        f" {len(report.created)} new, {len(report.updated)} replaced"
        + (f"; {report.devices} device description(s)" if report.devices else "")
        + "; an engine running on this registry applies them at once"
    )
    return EXIT_OK


def _speed(mps: float) -> str:
    return f"{mps:g} m/s"


def _case_mobility(case: Case) -> str:
    off, prot = case.offender_top_speed_mps, case.protected_top_speed_mps
    if off is None and prot is None:
        return "-"
    if off == prot and off is not None:
        return _speed(off)
    parts = [f"{who} {_speed(v)}" for who, v in (("off", off), ("prot", prot)) if v is not None]
    return ", ".join(parts)


def _protocols(info: Mapping[str, Any]) -> str:
    """The device's protocol mappings, secrets redacted: how it reports besides
    devices/ID/fix."""
    out = []
    ot = info.get("owntracks")
    if isinstance(ot, Mapping):
        text = f"owntracks {ot.get('user')}/{ot.get('device')}"
        out.append(text + (f" key: {REDACTED}" if "key" in ot else ""))
    o = info.get("osmand")
    if isinstance(o, Mapping):
        text = "osmand" + (f" id {o['id']}" if "id" in o else "")
        out.append(text + (f" secret: {REDACTED}" if "secret" in o else ""))
    return "; ".join(out) or "-"


def _case_speeds(cases: Sequence[Case]) -> dict[str, float]:
    """Each device's highest top speed from its cases' mobility (as :func:`top_speeds`)."""
    out: dict[str, float] = {}
    for c in cases:
        for ids, speed in (
            (c.offenders, c.offender_top_speed_mps),
            (c.protected, c.protected_top_speed_mps),
        ):
            if speed is not None:
                for d in ids:
                    out[d] = max(out.get(d, 0.0), speed)
    return out


def _device_view(
    case: Case,
    devices: Mapping[str, Device],
    speeds: Mapping[str, float],
    from_cases: Mapping[str, float],
    settings: Settings,
) -> list[dict[str, Any]]:
    """The case's devices as shown by ``cases list``: role, description (secrets redacted),
    the effective reporting interval, grace and top speed, and where the top speed comes
    from (the device's entry, this case, another case of the device, the engine default)."""
    out = []
    for role, ids, case_speed in (
        ("offender", case.offenders, case.offender_top_speed_mps),
        ("protected", case.protected, case.protected_top_speed_mps),
    ):
        for dev_id in ids:
            info = devices[dev_id].info if dev_id in devices else {}
            own = parse_mobility(info["mobility"]) if "mobility" in info else None
            if isinstance(own, float):
                speed_from = "device"
            elif dev_id in from_cases:
                speed_from = "case" if case_speed == from_cases[dev_id] else "another case"
            else:
                speed_from = "default"
            entry: dict[str, Any] = {"id": dev_id, "role": role}
            shown_info = redacted(info)
            assert isinstance(shown_info, dict)
            entry.update(shown_info)
            entry["effective"] = {
                "reporting_interval_s": info.get(
                    "reporting_interval_s", settings.reporting_interval_s
                ),
                "signal_grace_s": info.get("signal_grace_s", settings.signal_grace_s),
                "top_speed_mps": speeds[dev_id],
                "top_speed_from": speed_from,
            }
            out.append(entry)
    return out


def _seconds_from(info: Mapping[str, Any], key: str, default: float) -> str:
    return f"{info[key]:g}" if key in info else f"{default:g} (default)"


def _cmd_cases_list(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if not settings.db.exists():
        print(
            f"error: registry {settings.db} does not exist; import a case file first",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    with Registry(settings.db) as registry:
        cases = registry.cases()
        described = registry.devices()
    devices = {d.id: d for d in described}
    speeds = top_speeds(cases, described, MOBILITY_MPS[settings.default_mobility])
    from_cases = _case_speeds(cases)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "id": c.id,
                        "offenders": list(c.offenders),
                        "protected": list(c.protected),
                        "order": {
                            "distance_m": c.order_distance_m,
                            "warning_distance_m": c.warning_distance_m,
                            **(
                                {"escalation_distance_m": c.escalation_distance_m}
                                if c.escalation_distance_m is not None
                                else {}
                            ),
                        },
                        "mobility": {
                            "offenders_mps": c.offender_top_speed_mps,
                            "protected_mps": c.protected_top_speed_mps,
                        },
                        "devices": _device_view(c, devices, speeds, from_cases, settings),
                        "summary": dict(c.summary),
                        "zones": c.zones,
                    }
                    for c in cases
                ],
                indent=2,
                ensure_ascii=False,
            )
        )
        return EXIT_OK
    if not cases:
        print(f"no cases in {settings.db}")
        return EXIT_OK
    rows = [("CASE", "OFFENDERS", "PROTECTED", "ORDER_M", "WARNING_M", "MOBILITY", "ZONES")]
    for c in cases:
        rows.append(
            (
                c.id,
                ",".join(c.offenders),
                ",".join(c.protected),
                f"{c.order_distance_m:g}",
                f"{c.warning_distance_m:g}",
                _case_mobility(c),
                str(len(c.zones.get("features", []))),
            )
        )
    _print_table(rows)
    print(f"{len(cases)} case(s)")
    print()
    rows = [("CASE", "DEVICE", "ROLE", "PROTOCOLS", "INTERVAL_S", "GRACE_S", "TOP_SPEED")]
    for c in cases:
        for d in _device_view(c, devices, speeds, from_cases, settings):
            info = devices[d["id"]].info if d["id"] in devices else {}
            eff = d["effective"]
            rows.append(
                (
                    c.id,
                    d["id"],
                    d["role"],
                    _protocols(info),
                    _seconds_from(info, "reporting_interval_s", settings.reporting_interval_s),
                    _seconds_from(info, "signal_grace_s", settings.signal_grace_s),
                    f"{_speed(eff['top_speed_mps'])} ({eff['top_speed_from']})",
                )
            )
    _print_table(rows)
    in_cases = {d for c in cases for d in (*c.offenders, *c.protected)}
    unused = sorted(set(devices) - in_cases)
    if unused:
        print(f"{len(unused)} device description(s) in no case: {', '.join(unused)}")
    return EXIT_OK


def _cmd_cases_remove(args: argparse.Namespace) -> int:
    settings = _settings(args)
    hint = f"'proximity cases list --db {settings.db}' shows the registered ids"
    if not settings.db.exists():
        print(f"error: registry {settings.db} does not exist; {hint}", file=sys.stderr)
        return EXIT_BAD_INPUT
    with Registry(settings.db) as registry:
        report = registry.remove_case(
            args.case, keep_devices=args.keep_devices, actor=_local_actor()
        )
    if report is None:
        print(f"error: no case {args.case!r} in {settings.db}; {hint}", file=sys.stderr)
        return EXIT_BAD_INPUT
    evidence = settings.evidence or settings.db.with_suffix(".evidence.sqlite")
    print(
        f"removed case {report.case_id} (offenders {', '.join(report.offenders)}; protected"
        f" {', '.join(report.protected)}) from {settings.db}; an engine running on this"
        " registry stops watching it at once"
    )
    for ids, what in (
        (report.devices_removed, "removed the description(s) of {} (in no other case)"),
        (report.devices_shared, "kept the description(s) of {} (in another case)"),
        (report.devices_kept, "kept the description(s) of {} (--keep-devices)"),
    ):
        if ids:
            print(what.format(", ".join(ids)))
    kept = "kept untouched" if evidence.exists() else "none recorded yet"
    print(f"evidence record {evidence}: {kept}")
    return EXIT_OK


def _evidence_paths(settings: Settings) -> tuple[Path, Path]:
    """The evidence record and its key, as the engine finds them."""
    record = settings.evidence or settings.db.with_suffix(".evidence.sqlite")
    return record, settings.evidence_key or record.with_suffix(".key")


def _public_key(text: str) -> str | None:
    """A --public-key value: 64 hex digits, or a file holding them; None: neither."""
    from storage.signing import is_key_hex

    if is_key_hex(text.strip()):
        return text.strip().lower()
    try:
        written = Path(text).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return written.lower() if is_key_hex(written) else None


def _cmd_evidence_verify(args: argparse.Namespace) -> int:
    from storage.evidence import verify_export
    from storage.signing import public_of

    try:
        data = args.file.read_bytes()
    except OSError as exc:
        print(f"error: cannot read {args.file}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    key = None
    if args.public_key is not None:
        key = _public_key(args.public_key)
        if key is None:
            print(
                f"error: --public-key {args.public_key!r} is neither 64 hex digits nor a file"
                " holding them ('proximity evidence key' prints the deployment's)",
                file=sys.stderr,
            )
            return EXIT_BAD_INPUT
    outside: list[bytes] = []
    if args.anchors is not None:
        try:
            outside = args.anchors.read_bytes().splitlines()
        except OSError as exc:
            print(f"error: cannot read {args.anchors}: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
    found = verify_export(data.splitlines(), key, outside, str(args.anchors))
    if key is not None and public_of(key) in found.named_keys:
        # The private key (its 64 hex digits look like a public key's): never echoed.
        shown = args.public_key if Path(args.public_key).is_file() else "(the digits given)"
        print(
            f"error: --public-key {shown}"
            " holds the private evidence key of the record, not its public key: give the .pub"
            " file, or what 'proximity evidence key' prints; keep the private key secret (it"
            " may have to be replaced if it was shown)",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    for p in found.problems:
        print(f"{p.source or args.file}:{p.line}: {p.what}")
    if found.problems:
        if not found.signed and len(found.problems) == 1:
            print(
                f"UNSIGNED: its {found.entries} entries are consistent, but without signatures"
                " nothing shows that they are unaltered",
                file=sys.stderr,
            )
        else:
            print(
                f"ALTERED: {len(found.problems)} problem(s) in {found.entries} entries",
                file=sys.stderr,
            )
        return EXIT_FAILURE
    anchors = f", {found.anchors} anchor(s) agree" if found.anchors else ""
    if args.anchors is not None:
        anchors += f", {found.outside} of the CIC's anchor(s) in {args.anchors} agree"
    if found.key_given:
        print(
            f"intact: {found.entries} entries, head {found.head}{anchors}; signed by the key"
            f" given, {found.key}"
        )
    else:
        print(
            f"intact: {found.entries} entries, head {found.head}{anchors}; consistent with the"
            f" key it names, {found.key}"
        )
        print(
            "this shows only that the export is consistent: to show that the deployment signed"
            " it, give its public key with --public-key ('proximity evidence key' prints it)"
        )
    return EXIT_OK


def _cmd_evidence(args: argparse.Namespace) -> int:
    from cic.journal import Journal
    from storage.evidence import EvidenceLog, anchors_of
    from storage.signing import EvidenceKey
    from storage.store import write_whole

    if args.evidence_command == "verify":
        return _cmd_evidence_verify(args)
    settings = _settings(args)
    path, key_path = _evidence_paths(settings)
    if args.evidence_command == "export" and not path.exists():
        print(f"error: no evidence record at {path} (is --db the engine's?)", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not key_path.exists():
        print(
            f"error: no evidence key at {key_path}: the engine makes it when it first starts"
            " (is --db the engine's? --evidence-key names a key kept elsewhere)",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    if args.evidence_command == "key":
        print(EvidenceKey.load(key_path, create=False).public_key)
        return EXIT_OK
    journal_path = settings.journal or settings.db.with_suffix(".journal.sqlite")
    # The anchors are read before the record: one journalled after the record was read would
    # name entries the export does not hold.
    anchors = []
    if journal_path.exists():
        journal = Journal(journal_path)
        try:
            anchors = anchors_of(journal.payloads(settings.anchor_topic), args.case)
        finally:
            journal.close()
    else:
        print(f"note: no journal at {journal_path}: the export holds no anchors", file=sys.stderr)
    log = EvidenceLog(path, key_path, create_key=False)
    try:
        if args.case not in log.cases():
            print(f"error: no evidence for case {args.case!r} in {path}", file=sys.stderr)
            return EXIT_BAD_INPUT
        lines = list(log.export(args.case, anchors))
    finally:
        log.close()
    if args.out is None:
        sys.stdout.buffer.write(b"".join(lines))
    else:
        try:  # it holds the case's positions: readable by its owner only
            write_whole(args.out, b"".join(lines), private=True)
        except OSError as exc:
            print(f"error: cannot write {args.out}: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(
            f"exported {len(lines) - 1 - len(anchors)} entries and {len(anchors)} anchor(s) of"
            f" case {args.case} to {args.out}"
        )
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from cli.demo import DemoOptions, run_demo

    return run_demo(
        DemoOptions(
            duration_s=args.duration,
            pairs=args.pairs,
            interval_s=args.interval,
            seed=args.seed,
            quiet=args.quiet,
        )
    )


def _pairs_of(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name.strip() or not value.strip():
            raise ProximityError(f"{what} wants NAME=VALUE, got {item!r}")
        out[name.strip()] = value.strip()
    return out


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from simulator.evaluate import EvalOptions, print_summary, run_evaluation
    from simulator.families import FAMILIES
    from simulator.replay import ReplayPair, TrackError, read_track

    names = {"all": list(FAMILIES), "none": []}.get(
        args.scenarios, [n.strip() for n in args.scenarios.split(",") if n.strip()]
    )
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise ProximityError(
            f"unknown scenario type(s) {', '.join(unknown)}; known: {', '.join(FAMILIES)}"
            " (or all, or none with --replay)"
        )
    if args.pairs < 1 or args.speed <= 0 or args.interval <= 0 or not 0 <= args.meet <= 1:
        raise ProximityError("--pairs, --speed and --interval must be positive, --meet in 0..1")
    if args.direct and args.broker:
        raise ProximityError("--direct runs without a broker: give --direct or --broker")
    if args.broker:
        try:  # before anything starts
            parse_broker_url(args.broker)
        except IngestError as exc:
            raise ProximityError(f"--broker: {exc}") from exc
    if args.alarm_interval is not None and not 0 < args.alarm_interval <= args.interval:
        raise ProximityError("--alarm-interval must be positive and at most --interval")
    replay = []
    for spec in args.replay:
        off, _, vic = spec.partition(":")
        pair = ReplayPair(Path(off), Path(vic) if vic else None, args.meet)
        try:  # read them now: a bad file is reported before anything starts
            read_track(pair.offender)
            if pair.victim is not None:
                read_track(pair.victim)
        except TrackError as exc:
            raise ProximityError(f"--replay: {exc}") from exc
        replay.append(pair)
    if not names and not replay:
        raise ProximityError("nothing to run: name scenario types, or give --replay")
    sweep = {
        k: [x.strip() for x in v.split(",") if x.strip()]
        for k, v in _pairs_of(args.sweep, "--sweep").items()
    }
    doc = run_evaluation(
        EvalOptions(
            scenarios=names,
            pairs=args.pairs,
            speed=args.speed,
            interval_s=args.interval,
            alarm_interval_s=args.alarm_interval,
            seed=args.seed,
            out=args.out,
            broker=args.broker,
            settings=_pairs_of(args.set, "--set"),
            sweep=sweep,
            ack_after_s=args.ack_after,
            quiet=args.quiet,
            replay=replay,
            direct=args.direct,
        )
    )
    print_summary(doc, args.out)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "config":
            return _cmd_config_show(args)
        if args.command == "cases":
            if args.cases_command == "import":
                return _cmd_cases_import(args)
            if args.cases_command == "remove":
                return _cmd_cases_remove(args)
            return _cmd_cases_list(args)
        if args.command == "evidence":
            return _cmd_evidence(args)
        if args.command == "broker":
            return broker_cli.run(args, _settings(args))
        if args.command == "evaluate":
            return _cmd_evaluate(args)
        if args.command in ("users", "audit", "alarms"):
            return operators_cli.run(args, lambda: _settings(args))
        return _cmd_demo(args)
    except CaseFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ProximityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE
