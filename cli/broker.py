"""``proximity broker config``: the broker's TLS listener, accounts and ACL, from the registry
(:mod:`service.broker`)."""

from __future__ import annotations

import argparse
import ssl
from collections.abc import Callable
from pathlib import Path

from proximity.errors import ConfigError
from service.broker import (
    DEFAULT_HOSTS,
    DEFAULT_PORT,
    Tls,
    Topics,
    default_broker_user,
    write_config,
)
from service.settings import OUT_SUFFIX, Settings
from storage.registry import Registry
from storage.users import Users, users_path

#: The engine's account when the settings name none.
ENGINE_ACCOUNT = "proximity-engine"

EPILOG = """\
Examples:
  proximity broker config --db registry.sqlite --out /etc/mosquitto/proximity \\
      --host broker.example.org --cic desk-1 --cic desk-2
  mosquitto -c /etc/mosquitto/proximity/mosquitto.conf
  # after 'proximity cases import' or 'cases remove': the same command again (host
  # names, port, address and desks are kept), then reload the broker:
  kill -HUP "$(cat /etc/mosquitto/proximity/data/mosquitto.pid)"
"""


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], wrap: Callable[[str], str]
) -> argparse.ArgumentParser:
    """The ``broker`` command; returns its ``config`` action's parser, for the setting flags
    (``wrap`` wraps a description)."""
    broker = sub.add_parser(
        "broker",
        help="make the MQTT broker's security (TLS, accounts, ACL) from the registry",
        description=wrap(
            "Mosquitto's own password file and ACL, with a TLS listener, made from the cases"
            " in the registry: one account per device, per CIC desk and for the engine; a"
            " device may publish only its own fixes and events and read only its own notices"
            " and commands; a desk reads the alarms and acknowledges them only on"
            " cic/acks/<desk>, so the engine records the account the broker authenticated."
        ),
    )
    b_sub = broker.add_subparsers(dest="broker_command", required=True, metavar="ACTION")
    conf = b_sub.add_parser(
        "config",
        help="write mosquitto.conf, certificates, passwd, acl and the accounts into DIR",
        description=wrap(
            "Writes DIR/mosquitto.conf (TLS listener, no anonymous access), a private CA and"
            " the broker's certificate (kept on later runs; or --server-cert/--server-key/--ca"
            " for your own), DIR/passwd and DIR/acl (Mosquitto's formats), DIR/accounts.json"
            " (every account's password, readable by its owner only: hand each to its device,"
            " desk or engine) and DIR/engine.password. Run it again whenever the cases change:"
            " passwords of accounts that remain are kept, new devices get accounts, removed"
            " ones lose theirs; desks are kept until --drop-cic."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    conf.add_argument("--out", type=Path, required=True, metavar="DIR", help="where to write")
    conf.add_argument(
        "--cic",
        action="append",
        default=[],
        metavar="DESK",
        help="a CIC operator desk's account (repeat for each; kept on later runs)",
    )
    conf.add_argument(
        "--drop-cic", action="append", default=[], metavar="DESK", help="remove a desk's account"
    )
    conf.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name or address clients use for the broker, for its certificate (repeat;"
        f" {', '.join(DEFAULT_HOSTS)} are always included; default: the earlier run's)",
    )
    conf.add_argument(
        "--port",
        type=int,
        metavar="N",
        help=f"TLS port (default: the earlier run's, else {DEFAULT_PORT})",
    )
    conf.add_argument(
        "--bind",
        metavar="ADDRESS",
        help="listen on this address only (default: the earlier run's, else all)",
    )
    conf.add_argument(
        "--persistence",
        type=Path,
        metavar="DIR",
        help="where Mosquitto keeps sessions and queued messages (default: DIR/data)",
    )
    conf.add_argument(
        "--server-cert", type=Path, metavar="FILE", help="your own broker certificate"
    )
    conf.add_argument("--server-key", type=Path, metavar="FILE", help="its private key")
    conf.add_argument("--ca", type=Path, metavar="FILE", help="the CA that signed it")
    conf.add_argument(
        "--client-certs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mutual TLS: give every account a client certificate signed by the private CA"
        " (DIR/certs/ACCOUNT.crt and .key; the engine's serves both its accounts) and make the"
        " broker require one besides the password (kept on later runs until --no-client-certs)",
    )
    conf.add_argument(
        "--mosquitto-user",
        metavar="USER",
        help="the user Mosquitto runs as (it drops to it when started as root): the files it"
        " reads are made readable by that user's group, the persistence folder its own"
        " (default: mosquitto when this command runs as root and that user exists; none"
        " otherwise)",
    )
    return conf


def run(args: argparse.Namespace, settings: Settings) -> int:
    """``proximity broker config``: write the files, say what changed and what to run."""
    own = (args.server_cert, args.server_key, args.ca)
    if any(own) and not all(own):
        raise ConfigError("--server-cert, --server-key and --ca go together: give all three")
    own_tls = None
    if all(own):
        for p in own:
            if not p.is_file():
                raise ConfigError(f"{p} is not a file")
        try:
            ssl.create_default_context().load_cert_chain(args.server_cert, args.server_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"--server-key {args.server_key} is not the key of --server-cert"
                f" {args.server_cert} (or cannot be read): {exc}"
            ) from exc
        own_tls = Tls(
            args.ca.resolve(), args.server_cert.resolve(), args.server_key.resolve(), False
        )
    if not settings.db.exists():
        raise ConfigError(
            f"no registry at {settings.db}: import cases with 'proximity cases import'"
        )
    with Registry(settings.db) as registry:
        cases, devices = registry.cases(), registry.devices()
    # The operator service's operators are CIC desks too: one identity at the broker and in
    # the API (a revoked one is not added; its desk goes with --drop-cic).
    operators: list[str] = []
    revoked: list[str] = []
    if users_path(settings.db).exists():
        with Users(users_path(settings.db)) as users:
            for u in users.users():
                if u.role == "operator":
                    (revoked if u.revoked_at else operators).append(u.name)
    engine = settings.broker_username or ENGINE_ACCOUNT
    made = write_config(
        args.out,
        cases,
        devices,
        desks=[*args.cic, *(o for o in operators if o not in args.drop_cic)],
        drop_desks=args.drop_cic,
        engine=engine,
        topics=Topics(
            settings.alarm_topic,
            settings.cap_topic,
            settings.anchor_topic,
            settings.status_topic,
            settings.rejected_topic,
        ),
        hosts=args.host or None,
        port=args.port,
        bind=args.bind,
        persistence=args.persistence,
        own_tls=own_tls,
        source=str(settings.db),
        broker_user=args.mosquitto_user if args.mosquitto_user else default_broker_user(),
        with_client_certs=args.client_certs,
    )
    out = args.out.resolve()
    for note in made.notes:
        print(note)
    if operators:
        print(f"CIC desks of the operator service's operators: {', '.join(operators)}")
    if revoked:
        print(
            f"revoked operators {', '.join(revoked)}: if they have desk accounts, remove them"
            f" with --drop-cic {' --drop-cic '.join(revoked)}"
        )
    roles = [a.role for a in made.accounts]
    print(
        f"wrote {out}/mosquitto.conf, passwd, acl and accounts.json: {len(made.accounts)}"
        f" accounts ({roles.count('device')} devices, {roles.count('cic')} CIC desk(s) with a"
        f" -watch account each, the"
        f" engine's {engine} and {engine}{OUT_SUFFIX})"
    )
    if made.added:
        print(f"new accounts: {', '.join(made.added)}")
    if made.removed:
        print(f"removed accounts: {', '.join(made.removed)}")
    ca = own_tls.ca if own_tls is not None else out / "ca.crt"
    host, port = made.listener.hosts[0], made.listener.port
    certs = out / "certs"
    print(
        f"broker: mosquitto -c {out}/mosquitto.conf (running: kill -HUP"
        f' "$(cat {made.pid_file})" reloads the accounts and the ACL)\n'
        f"engine: proximity run --broker mqtts://{host}:{port} --broker-ca {ca}"
        f" --broker-username {engine} --broker-password-file {out}/engine.password"
        + (
            f" --broker-cert {certs}/{engine}.crt --broker-key {certs}/{engine}.key"
            if made.listener.client_certs
            else ""
        )
        + f" --db {settings.db}"
    )
    return 0
