"""The operator service's commands: ``proximity users add|list|revoke``, ``proximity audit
export`` and ``proximity alarms watch|ack|close|suspend`` (over the HTTP API of a running
engine)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from ingest.model import RESOLUTIONS, IngestError
from ingest.transport import connect, disconnect, make_client, parse_broker_url
from service.settings import Settings, broker_access
from storage.users import ROLES, Users, users_path

#: The environment variable holding the token for 'proximity alarms'.
TOKEN_ENV = "PROXIMITY_API_TOKEN"
API_ENV = "PROXIMITY_API"
EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2
#: How long 'alarms watch' waits before reconnecting a stream that broke.
RECONNECT_S = 1.0


#: The settings 'alarms watch' takes to follow the alarms over MQTT.
WATCH_SETTINGS = [
    "broker",
    "broker_username",
    "broker_password_file",
    "broker_ca",
    "broker_cert",
    "broker_key",
    "alarm_topic",
]


def add_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    wrap: Callable[[str], str],
    with_db: Callable[[argparse.ArgumentParser], None],
    with_settings: Callable[[argparse.ArgumentParser, list[str]], None],
) -> None:
    """The ``users``, ``audit`` and ``alarms`` commands (``with_db`` adds --db and --config,
    ``with_settings`` the flags of the settings named)."""
    raw = argparse.RawDescriptionHelpFormatter
    users = sub.add_parser("users", help="issue and revoke the operator service's tokens")
    u_sub = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    add = u_sub.add_parser(
        "add",
        help="add a user with a role and print its bearer token (shown once)",
        description=wrap(
            "Issues a bearer token for the HTTP API of the engine running on this registry."
            " The token is printed once, on standard output, and stored only as its hash."
            " Roles: operator (alarms, positions of cases in alarm), case_manager (cases,"
            " zones, devices), researcher (pseudonymised history only), admin (everything and"
            " the audit log). An operator's name is the operator the CIC's messages name."
        ),
        epilog="Example:\n  proximity users add desk-1 --role operator --db registry.sqlite"
        " > desk-1.token\n",
        formatter_class=raw,
    )
    add.add_argument("name", metavar="NAME", help="letters, digits, '-', '_', '.'")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument(
        "--replace",
        action="store_true",
        help="an existing user gets a new token (the old one stops working) and the role given",
    )
    with_db(add)
    lst = u_sub.add_parser("list", help="list the users, their roles and whether revoked")
    with_db(lst)
    rev = u_sub.add_parser("revoke", help="stop a user's token working")
    rev.add_argument("name", metavar="NAME")
    with_db(rev)

    audit = sub.add_parser("audit", help="the audit log of position reads")
    a_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    exp = a_sub.add_parser(
        "export",
        help="write the audit log as JSON Lines",
        description=wrap(
            "Every read of a protected person's position through the HTTP API: who (user and"
            " role), when, which case, why (the alarm id) and through which request."
        ),
        epilog="Example:\n  proximity audit export --db registry.sqlite --out audit.jsonl\n",
        formatter_class=raw,
    )
    exp.add_argument("--out", type=Path, metavar="FILE", help="output file (default: stdout)")
    exp.add_argument("--case", metavar="ID", help="only this case")
    exp.add_argument("--user", metavar="NAME", help="only this user")
    with_db(exp)

    alarms = sub.add_parser(
        "alarms",
        help="watch, acknowledge and close alarms through the operator service",
        description=wrap(
            f"Talks to the HTTP API of a running engine ('proximity run --http'): --api URL"
            f" or {API_ENV}, with an operator's token in {TOKEN_ENV} or --token-file."
        ),
    )
    al_sub = alarms.add_subparsers(dest="alarms_command", required=True, metavar="ACTION")
    watch = al_sub.add_parser(
        "watch",
        help="print every alarm message as a readable line, live",
        description=wrap(
            "With --api (or PROXIMITY_API): follows the operator service's live stream"
            " (Server-Sent Events) and prints one line per alarm message; reconnects by itself"
            " and resumes where it stopped, so no message is missed; --queue prints the open"
            " queue first. Without: subscribes to the alarm topic at the broker (--broker; on a"
            " secured broker the --broker-* flags name a desk's -watch account, not the"
            " engine's). Ends with Ctrl-C."
        ),
        epilog="Examples:\n  PROXIMITY_API_TOKEN=$(cat desk-1.token) proximity alarms watch"
        " --api http://127.0.0.1:8080 --queue\n"
        "  proximity alarms watch --broker mqtt://127.0.0.1:1883\n",
        formatter_class=raw,
    )
    watch.add_argument("--queue", action="store_true", help="print the open queue first")
    watch.add_argument("--json", action="store_true", help="print each message as JSON")
    with_settings(watch, WATCH_SETTINGS)
    ack = al_sub.add_parser("ack", help="acknowledge an alarm")
    ack.add_argument("alarm_id", metavar="ID")
    ack.add_argument("--note", default="", help="what you did or saw")
    close = al_sub.add_parser(
        "close",
        help="close an alarm with a resolution code",
        epilog="Example:\n  proximity alarms close 5f0c... --resolution intervention_sent"
        ' --note "team on site"\n',
        formatter_class=raw,
    )
    close.add_argument("alarm_id", metavar="ID")
    close.add_argument("--resolution", choices=RESOLUTIONS, help="'other' needs --note")
    close.add_argument("--note", default="", help="why (needed without --resolution)")
    suspend = al_sub.add_parser(
        "suspend",
        help="suspend an alarm's source for 15 min to 2 h, saying why",
        description=wrap(
            "Holds back the messages of the alarm's source (its pair's, zone's or device's"
            " rule) until then: ends and escalations still come, and the alarm is announced"
            " again, as it stands, when the suspension is over. A panic or an escalation is"
            " never suspended."
        ),
        epilog="Example:\n  proximity alarms suspend 5f0c... --for 30"
        ' --note "her phone indoors, checked by phone call"\n',
        formatter_class=raw,
    )
    suspend.add_argument("alarm_id", metavar="ID")
    suspend.add_argument(
        "--for",
        dest="minutes",
        type=float,
        required=True,
        metavar="MINUTES",
        help="how long: 15 to 120 minutes",
    )
    suspend.add_argument("--note", required=True, help="why (required)")
    for p in (watch, ack, close, suspend):
        p.add_argument(
            "--api", default=os.environ.get(API_ENV), help=f"the service's URL ({API_ENV})"
        )
        p.add_argument("--token-file", type=Path, help=f"a file holding the token ({TOKEN_ENV})")


def run(args: argparse.Namespace, settings: Callable[[], Settings]) -> int:
    if args.command == "users":
        return _users(args, settings())
    if args.command == "audit":
        return _audit(args, settings())
    if args.alarms_command == "watch" and not args.api:
        return _watch_mqtt(args, settings())
    return _alarms(args)


def _no_registry(settings: Settings) -> bool:
    """Say so when ``settings.db`` is no registry (a mistyped --db would otherwise make an
    empty users file beside nothing)."""
    if settings.db.exists():
        return False
    print(
        f"error: no registry at {settings.db} (the users file lives beside the engine's"
        " registry: give its --db)",
        file=sys.stderr,
    )
    return True


def _users(args: argparse.Namespace, settings: Settings) -> int:
    if _no_registry(settings):
        return EXIT_BAD_INPUT
    path = users_path(settings.db)
    with Users(path) as users:
        if args.users_command == "add":
            token = users.add(args.name, args.role, replace=args.replace)
            print(token)
            print(
                f"user {args.name} ({args.role}) in {path}: keep the token above, it is not"
                " shown again",
                file=sys.stderr,
            )
        elif args.users_command == "revoke":
            if not users.revoke(args.name):
                print(f"error: no user {args.name!r} with a working token", file=sys.stderr)
                return EXIT_BAD_INPUT
            print(f"revoked the token of {args.name}")
        else:
            rows = [
                (
                    u.name,
                    u.role,
                    u.created_at[:19],
                    f"revoked {u.revoked_at[:19]}" if u.revoked_at else "active",
                )
                for u in users.users()
            ]
            widths = [max((len(r[i]) for r in rows), default=0) for i in range(4)]
            for r in rows:
                print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    return EXIT_OK


def _revoked(at: str | None) -> str:
    return f"revoked {at[:19]}" if at else "active"


def _audit(args: argparse.Namespace, settings: Settings) -> int:
    if _no_registry(settings):
        return EXIT_BAD_INPUT
    with Users(users_path(settings.db)) as users:
        rows = users.audit_log(case_id=args.case, user=args.user)
    text = "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in rows)
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {len(rows)} audit row(s) to {args.out}", file=sys.stderr)
    return EXIT_OK


class ApiError(Exception):
    pass


def _token(args: argparse.Namespace) -> str:
    if args.token_file is not None:
        try:
            return args.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ApiError(f"cannot read the token file {args.token_file}: {exc}") from exc
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise ApiError(f"no token: set {TOKEN_ENV} or give --token-file")
    return token


def _request(
    args: argparse.Namespace, method: str, path: str, body: object = None, timeout: float = 30.0
) -> Any:
    if not args.api:
        raise ApiError(f"no service: give --api URL or set {API_ENV}")
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        args.api.rstrip("/") + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {_token(args)}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("detail")
        except (ValueError, AttributeError):
            detail = exc.reason
        if isinstance(detail, list):
            detail = "; ".join(str(d.get("msg", d)) for d in detail if isinstance(d, dict))
        raise ApiError(f"the service answered {exc.code}: {detail}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise ApiError(f"cannot reach the service at {args.api}: {exc}") from exc


def watch_line(m: dict[str, Any]) -> str:
    """One readable line for an alarm message (every type)."""
    decided = str((m.get("times") or {}).get("decided") or "")[11:19]
    kind = str(m.get("type", "?")).upper()
    what = f"{kind:13s} {str(m.get('state', '?')).upper():12s} {m.get('level', '?'):10s}"
    off, vic = m.get("offender") or {}, m.get("victim") or {}
    where = ""
    if m.get("zone"):
        inside = m.get("zone_inside_m")
        side = (
            ""
            if inside is None
            else f" {abs(inside):.0f} m {'inside' if inside >= 0 else 'outside'}"
        )
        where = f'{off.get("device")}{side} zone "{m["zone"]}"'
    elif m.get("distance_m") is not None:
        where = (
            f"{off.get('device')} -> {vic.get('device')} {m['distance_m']:.0f} m"
            f" (order {m.get('order_distance_m') or 0:.0f} m)"
        )
    who = f" by {m['operator']}" if m.get("operator") else ""
    return (f"{decided}  {what} {m.get('case_id')}  {m.get('alarm_id')}  {where}{who}").rstrip()


def _events(args: argparse.Namespace, after: int) -> Iterator[tuple[int, dict[str, Any]]]:
    url = args.api.rstrip("/") + f"/api/stream?after={after}"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {_token(args)}"})
    try:
        resp = urllib.request.urlopen(req, timeout=60.0)
    except urllib.error.HTTPError as exc:
        raise ApiError(f"the service answered {exc.code}: {exc.reason}") from exc
    with resp:
        seq, data = after, b""
        for line in resp:
            line = line.rstrip(b"\r\n")
            if line.startswith(b"id:"):
                seq = int(line[3:].strip())
            elif line.startswith(b"data:"):
                data = line[5:].strip()
            elif not line and data:
                yield seq, json.loads(data)
                data = b""


def _alarms(args: argparse.Namespace) -> int:
    try:
        if args.alarms_command == "ack":
            got = _request(
                args, "POST", f"/api/alarms/{args.alarm_id}/acknowledge", {"note": args.note}
            )
            print(_said(got))
        elif args.alarms_command == "close":
            body: dict[str, Any] = {"note": args.note}
            if args.resolution:
                body["resolution"] = args.resolution
            got = _request(args, "POST", f"/api/alarms/{args.alarm_id}/close", body)
            print(_said(got))
        elif args.alarms_command == "suspend":
            # For so many minutes by the engine's clock (not this terminal's).
            body = {"minutes": args.minutes, "note": args.note}
            got = _request(args, "POST", f"/api/alarms/{args.alarm_id}/suspend", body)
            print(_said(got))
        else:
            return _watch(args)
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _watch_mqtt(args: argparse.Namespace, settings: Settings) -> int:
    """Print the alarm topic's messages as lines, from the broker."""
    broker = parse_broker_url(settings.broker)
    client = make_client("")

    def on_message(c: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            m = json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(m, dict) and "alarm_id" in m:
            print(json.dumps(m) if args.json else watch_line(m), flush=True)

    client.on_message = on_message
    try:
        connect(client, broker, access=broker_access(settings))
    except IngestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    client.subscribe(settings.alarm_topic, qos=1)
    print(f"watching {settings.alarm_topic} at {broker}", file=sys.stderr)
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        disconnect(client)


def _said(got: dict[str, Any]) -> str:
    if "message" in got:
        return watch_line(got["message"])
    return "queued: the engine has not answered yet (see 'proximity alarms watch')"


def _watch(args: argparse.Namespace) -> int:
    queue = _request(args, "GET", "/api/alarms")
    seq = int(queue.get("seq", 0))
    print(
        f"{queue.get('open', 0)} open alarm(s), {queue.get('awaiting_operator', 0)} not"
        " acknowledged",
        file=sys.stderr,
    )
    if args.queue:
        for a in queue.get("alarms", []):
            print(f"[{a['priority']:6s}] " + watch_line(a["last"]), flush=True)
    while True:
        try:
            for got, m in _events(args, seq):
                seq = got
                print(json.dumps(m) if args.json else watch_line(m), flush=True)
        except (urllib.error.URLError, OSError, ApiError, ValueError) as exc:
            print(f"stream interrupted ({exc}); reconnecting after message {seq}", file=sys.stderr)
            time.sleep(RECONNECT_S)
        except KeyboardInterrupt:
            return EXIT_OK
