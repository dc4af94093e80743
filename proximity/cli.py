"""Command line: ``proximity run``, ``proximity cases import|list``, ``proximity evidence
export|verify``, ``proximity demo``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import textwrap
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from proximity.cases import parse_case_file
from proximity.errors import CaseFileError, ProximityError
from proximity.registry import Registry
from proximity.settings import Settings, load_settings

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
"""


def _para(text: str) -> str:
    """Wrap a description paragraph (the raw formatter keeps epilog examples as written)."""
    return textwrap.fill(text, 79)


def _help(name: str) -> str:
    field = Settings.model_fields[name]
    return f"{field.description} (default: {field.default})"


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, metavar="FILE", help="TOML config file")


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", type=Path, metavar="PATH", help=_help("db"))


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
            " Stops cleanly on Ctrl-C or SIGTERM."
        ),
        epilog=_ENV_HELP
        + "\nExample:\n  proximity run --broker mqtt://127.0.0.1:1883 --db cases.sqlite\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--broker", metavar="URL", help=_help("broker"))
    _add_db(run)
    _add_config(run)
    run.add_argument("--client-id", metavar="ID", help=_help("client_id"))
    run.add_argument("--http", metavar="HOST:PORT", help=_help("http_listen"))
    run.add_argument("--alarm-topic", metavar="TOPIC", help=_help("alarm_topic"))
    run.add_argument("--rejected-topic", metavar="TOPIC", help=_help("rejected_topic"))
    run.add_argument("--status-topic", metavar="TOPIC", help=_help("status_topic"))
    run.add_argument(
        "--status-interval-s", type=float, metavar="S", help=_help("status_interval_s")
    )
    run.add_argument("--margin-fraction", type=float, metavar="F", help=_help("margin_fraction"))
    run.add_argument("--margin-min-m", type=float, metavar="M", help=_help("margin_min_m"))
    run.add_argument(
        "--implausible-speed-mps", type=float, metavar="V", help=_help("implausible_speed_mps")
    )
    run.add_argument("--confirm-s", type=float, metavar="S", help=_help("confirm_s"))
    run.add_argument("--dwell-s", type=float, metavar="S", help=_help("dwell_s"))
    run.add_argument("--renotify-s", type=float, metavar="S", help=_help("renotify_s"))
    run.add_argument("--time-scale", type=float, metavar="X", help=_help("time_scale"))
    run.add_argument("--time-epoch", type=float, metavar="T", help=_help("time_epoch"))
    run.add_argument("--log-level", metavar="LEVEL", help=_help("log_level"))

    cases = sub.add_parser("cases", help="import and list cases in the registry")
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
        description="List the cases in the registry: devices, order and warning distances.",
    )
    _add_db(lst)
    _add_config(lst)
    lst.add_argument("--json", action="store_true", help="print the cases as JSON")

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
        "  proximity evaluate none --replay his.gpx:her.csv --speed 10\n"
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
        default=60.0,
        metavar="X",
        help="scenario seconds per wall second (default: 60; 1 is real time)",
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
        help="faster reporting while an alarm of the device's case is open (default: none)",
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
        help="replay recorded tracks (GPX or CSV) as a case: his, and hers moved in time and"
        " place so that they meet; without hers she stands on his route (repeatable)",
    )
    ev.add_argument(
        "--meet",
        type=float,
        default=0.5,
        metavar="F",
        help="where replayed tracks meet, as a fraction of his recording (default: 0.5)",
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
    evidence = sub.add_parser(
        "evidence",
        help="export and verify a case's tamper-evident evidence record",
        description=_para(
            "The engine records, per case, the fixes it used and every alarm message it sent,"
            " in a hash-chained log. 'export' writes a case's record as JSON Lines for a court;"
            " 'verify' checks that an export is complete and unaltered: any edited, removed or"
            " reordered entry breaks the chain."
        ),
    )
    ev_sub = evidence.add_subparsers(dest="evidence_command", required=True, metavar="ACTION")
    exp = ev_sub.add_parser(
        "export",
        help="write a case's evidence record as JSON Lines",
        epilog="Example:\n  proximity evidence export BE-2026-0001 --db cases.sqlite"
        " --out BE-2026-0001.jsonl\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    exp.add_argument("case", metavar="CASE", help="case id")
    exp.add_argument("--out", type=Path, metavar="FILE", help="output file (default: stdout)")
    exp.add_argument("--evidence", type=Path, metavar="PATH", help=_help("evidence"))
    _add_db(exp)
    _add_config(exp)
    ver = ev_sub.add_parser(
        "verify",
        help="check an exported evidence record (exit 0: intact, 1: altered)",
        epilog="Example:\n  proximity evidence verify BE-2026-0001.jsonl\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ver.add_argument("file", type=Path, metavar="FILE", help="an export (JSON Lines)")
    return parser


def _settings(args: argparse.Namespace, **flags: object) -> Settings:
    return load_settings(getattr(args, "config", None), db=getattr(args, "db", None), **flags)


def _cmd_run(args: argparse.Namespace) -> int:
    from proximity.service import EngineService

    settings = _settings(
        args,
        broker=args.broker,
        client_id=args.client_id,
        http_listen=args.http,
        alarm_topic=args.alarm_topic,
        rejected_topic=args.rejected_topic,
        status_topic=args.status_topic,
        status_interval_s=args.status_interval_s,
        margin_fraction=args.margin_fraction,
        margin_min_m=args.margin_min_m,
        implausible_speed_mps=args.implausible_speed_mps,
        confirm_s=args.confirm_s,
        dwell_s=args.dwell_s,
        renotify_s=args.renotify_s,
        time_scale=args.time_scale,
        time_epoch=args.time_epoch,
        log_level=args.log_level,
    )
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


def _cmd_cases_import(args: argparse.Namespace) -> int:
    settings = _settings(args)
    try:
        doc = json.loads(args.file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        print(f"error: case file {args.file} does not exist", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        print(f"error: {args.file} is not valid JSON: {exc}; nothing was imported", file=sys.stderr)
        return EXIT_BAD_INPUT
    case_file = parse_case_file(doc, str(args.file))
    for warning in case_file.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    with Registry(settings.db) as registry:
        report = registry.import_file(case_file)
    print(
        f"imported {len(case_file.cases)} case(s) into {settings.db}:"
        f" {len(report.created)} new, {len(report.updated)} replaced"
        + (f"; {report.devices} device description(s)" if report.devices else "")
    )
    return EXIT_OK


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
    rows = [("CASE", "OFFENDERS", "PROTECTED", "ORDER_M", "WARNING_M", "ZONES")]
    for c in cases:
        rows.append(
            (
                c.id,
                ",".join(c.offenders),
                ",".join(c.protected),
                f"{c.order_distance_m:g}",
                f"{c.warning_distance_m:g}",
                str(len(c.zones.get("features", []))),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    print(f"{len(cases)} case(s)")
    return EXIT_OK


def _cmd_evidence(args: argparse.Namespace) -> int:
    from proximity.evidence import EvidenceLog, verify_lines

    if args.evidence_command == "verify":
        try:
            data = args.file.read_bytes()
        except OSError as exc:
            print(f"error: cannot read {args.file}: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        n, head, problems = verify_lines(data.splitlines())
        for p in problems:
            print(f"{args.file}:{p.line}: {p.what}")
        if problems:
            print(f"ALTERED: {len(problems)} problem(s) in {n} entries", file=sys.stderr)
            return EXIT_FAILURE
        print(f"intact: {n} entries, head {head}")
        return EXIT_OK
    settings = _settings(args, evidence=args.evidence)
    path = settings.evidence or settings.db.with_suffix(".evidence.sqlite")
    if not path.exists():
        print(f"error: no evidence record at {path} (is --db the engine's?)", file=sys.stderr)
        return EXIT_BAD_INPUT
    log = EvidenceLog(path)
    try:
        if args.case not in log.cases():
            print(f"error: no evidence for case {args.case!r} in {path}", file=sys.stderr)
            return EXIT_BAD_INPUT
        lines = list(log.export(args.case))
    finally:
        log.close()
    if args.out is None:
        sys.stdout.buffer.write(b"".join(lines))
    else:
        args.out.write_bytes(b"".join(lines))
        print(f"exported {len(lines) - 1} entries of case {args.case} to {args.out}")
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from proximity.demo import DemoOptions, run_demo

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
        if args.command == "cases":
            if args.cases_command == "import":
                return _cmd_cases_import(args)
            return _cmd_cases_list(args)
        if args.command == "evidence":
            return _cmd_evidence(args)
        if args.command == "evaluate":
            return _cmd_evaluate(args)
        return _cmd_demo(args)
    except CaseFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ProximityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE
