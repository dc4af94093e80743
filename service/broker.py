"""Broker security made from the registry: ``proximity broker config --db PATH --out DIR``.

Mosquitto is the mechanism (its own password file and ACL file); this module only writes
them, with a TLS listener, from the cases the registry holds, and is run again whenever the
cases change (the broker then reloads them on SIGHUP). What it writes in ``DIR``:

- ``mosquitto.conf``: a TLS listener, no anonymous access, ``use_username_as_clientid`` (no
  client can take another's client id, so none can push the engine's session off the
  broker), the password and ACL files, persistence as in ``deploy/mosquitto.conf``;
- ``ca.crt`` / ``ca.key`` and ``server.crt`` / ``server.key``: a private CA made for the
  deployment and the broker's certificate signed by it, for the host names given (or the
  operator's own certificate files, named with ``--server-cert``/``--server-key``/``--ca``);
- ``passwd``: Mosquitto's password file (PBKDF2-SHA512, ``$7$``, as ``mosquitto_passwd``
  writes it), ``acl``: Mosquitto's ACL file;
- ``accounts.json`` (mode 0600): every account's name, role and password, for handing to the
  device, desk or engine it belongs to, and the listener (host names, port, address);
  ``engine.password``: the engine's, for its ``broker_password_file``; with client
  certificates, ``certs/ACCOUNT.crt`` and ``.key``.

Accounts (:func:`plan_accounts`): one per device (its device id), two per CIC operator desk
(``--cic NAME``: the desk, and ``NAME-watch`` that only reads, for a listener beside the
program that acknowledges: an account has one connection at a time), and two for the
engine: its intake (``broker_username``, reading) and its publishing client (the same name
with ``-out``, writing). What each may do:

- a device publishes only its own fixes and events (``devices/<id>/fix``, ``.../event``, and
  its acknowledgements of commands, ``.../cmd/ack``, and its OwnTracks topics) and reads
  only its own notices and commands;
- the engine's intake reads the device topics and ``cic/acks/+``; its publishing client
  writes the alarms (``cic/alarms/#``), the evidence anchors, ``proximity/#`` and the
  devices' notices and commands;
- a desk reads the alarms, the anchors and the engine's status, and writes acknowledgements
  only on ``cic/acks/<desk>``: the engine records that account as the operator.

A rerun keeps what it can: the CA and the server certificate (re-issued only when the host
names change), the passwords of the accounts that remain, the desks, and the listener's
host names, port, address and client certificates where it is not given them; new accounts
get new passwords, and the accounts of devices no longer in any case are gone.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import os
import pwd
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from proximity.cases import Case, Device
from proximity.errors import ConfigError
from service.settings import OUT_SUFFIX
from storage.store import write_whole

#: Mosquitto's password hash: PBKDF2 with SHA-512, its default iteration count and salt size.
PBKDF2_ITERATIONS = 101
SALT_BYTES = 12
PASSWORD_BYTES = 24
DEFAULT_PORT = 8883
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
CA_DAYS = 3650
SERVER_DAYS = 825
ROLES = ("engine", "engine_out", "cic", "cic_watch", "device")
#: A desk's second account, which only reads (its own connection: a desk's listener and its
#: acknowledgements may be two programs, and an account has one connection at a time).
WATCH_SUFFIX = "-watch"


@dataclass(frozen=True, slots=True)
class Topics:
    """The topics the engine uses (its settings), for the ACL."""

    alarms: str = "cic/alarms"
    cap: str = "cic/alarms/cap"
    anchors: str = "cic/evidence"
    status: str = "proximity/status"
    rejected: str = "proximity/rejected"


@dataclass(frozen=True, slots=True)
class Account:
    """One broker account: its name, role, and what it may read and write."""

    name: str
    role: str
    read: tuple[str, ...]
    write: tuple[str, ...]


def _account_problem(name: str) -> str | None:
    if not name or name != name.strip():
        return "is empty or has spaces around it"
    if any(c in name for c in "/+#:") or any(c.isspace() or ord(c) < 32 for c in name):
        return "holds a character a broker account cannot have (/, +, #, :, a space)"
    return None


def _tree(topic: str) -> str:
    """``topic`` and everything under it (``#`` also matches its parent level)."""
    return topic.rstrip("/") + "/#"


def plan_accounts(
    cases: Sequence[Case],
    devices: Iterable[Device],
    desks: Iterable[str],
    engine: str = "proximity-engine",
    topics: Topics = Topics(),
) -> list[Account]:
    """Every account and its rights, from the registry's cases and device descriptions, the
    CIC desks and the engine's account name; ConfigError names what cannot be an account."""
    for name, topic in (("alarm_topic", topics.alarms), ("cap_topic", topics.cap),
                        ("anchor_topic", topics.anchors), ("status_topic", topics.status),
                        ("rejected_topic", topics.rejected)):  # fmt: skip
        if topic and (any(c in topic for c in "+#") or not _line_safe(topic)):
            raise ConfigError(f"{name} {topic!r} is no topic to publish on (a wildcard or a space)")
    info = {d.id: d.info for d in devices}
    device_ids = sorted({d for c in cases for d in (*c.offenders, *c.protected)})
    desks = sorted(set(desks))
    engine_out = engine + OUT_SUFFIX
    problems = []
    names: dict[str, str] = {}
    for name, what in (
        (engine, "the engine's account"),
        (engine_out, "the engine's publishing account"),
        *((d, f"CIC desk {d!r}") for d in desks),
        *((d + WATCH_SUFFIX, f"the watching account of CIC desk {d!r}") for d in desks),
        *((d, f"device {d!r}") for d in device_ids),
    ):
        problem = _account_problem(name)
        if problem is not None:
            problems.append(f"{what} {problem}")
        elif name in names:
            problems.append(f"{what} has the name of {names[name]}: rename one")
        else:
            names[name] = what
    if problems:
        raise ConfigError(
            "cannot make the broker accounts: " + "; ".join(problems),
        )
    owntracks: dict[str, str] = {}
    accounts = []
    for dev in device_ids:
        read = [f"devices/{dev}/notice", f"devices/{dev}/cmd"]
        write = [f"devices/{dev}/fix", f"devices/{dev}/event", f"devices/{dev}/cmd/ack"]
        ot = info.get(dev, {}).get("owntracks")
        if isinstance(ot, dict) and isinstance(ot.get("user"), str):
            base = f"owntracks/{ot['user']}/{ot['device']}"
            if base in owntracks:  # two accounts may not speak on one app's topic
                raise ConfigError(
                    f"devices {owntracks[base]!r} and {dev!r} both name the OwnTracks app"
                    f" {base}: give each device its own app"
                )
            owntracks[base] = dev
            # The app also publishes its info, waypoints and status under its topic; a refused
            # publish would end its connection. It reads its commands there.
            write += [base, f"{base}/#"]
            read.append(f"{base}/cmd")
        accounts.append(Account(dev, "device", tuple(read), tuple(write)))
    engine_reads = (
        "devices/+/fix",
        "devices/+/event",
        "devices/+/cmd/ack",
        "owntracks/+/+",
        "owntracks/+/+/event",
    )
    head = [
        Account(engine, "engine", (*engine_reads, "cic/acks/+"), ()),
        Account(
            engine_out,
            "engine_out",
            (),
            (
                _tree(topics.alarms),
                *((_tree(topics.cap),) if topics.cap else ()),
                topics.anchors,
                topics.status,
                topics.rejected,
                "proximity/#",
                "devices/+/notice",
                "devices/+/cmd",
                "owntracks/+/+/cmd",
            ),
        ),
    ]
    for desk in desks:
        reads = [_tree(topics.alarms), topics.anchors, topics.status]
        if topics.cap:
            reads.insert(1, _tree(topics.cap))
        head.append(Account(desk, "cic", tuple(reads), (f"cic/acks/{desk}",)))
        head.append(Account(desk + WATCH_SUFFIX, "cic_watch", tuple(reads), ()))
    return head + accounts


def _line_safe(text: str) -> bool:
    """Whether ``text`` can stand in a line of Mosquitto's files as one word: no space, no
    control character (a line break would start a rule of its own)."""
    return bool(text) and text.isprintable() and not any(c.isspace() for c in text)


def acl_text(accounts: Sequence[Account], source: str) -> str:
    """Mosquitto's ACL file for ``accounts`` (nothing is allowed that is not listed);
    ConfigError for a name or topic that could not stand in it as one word."""
    for a in accounts:
        bad = [t for t in (a.name, *a.read, *a.write) if not _line_safe(t)]
        if bad:
            raise ConfigError(
                f"account {a.name!r}: {', '.join(map(repr, bad))} cannot be written into the"
                " ACL (a space or a control character)"
            )
    lines = [
        f"# Mosquitto ACL made by 'proximity broker config' from {source!r}.",
        "# Made again whenever the cases change; edits here are lost.",
        "",
    ]
    for a in accounts:
        lines.append(f"# {a.role}")
        lines.append(f"user {a.name}")
        lines += [f"topic read {t}" for t in dict.fromkeys(a.read)]
        lines += [f"topic write {t}" for t in dict.fromkeys(a.write)]
        lines.append("")
    return "\n".join(lines)


def password_hash(password: str, salt: bytes | None = None) -> str:
    """``password`` as Mosquitto's password file holds it: ``$7$ITERATIONS$SALT$HASH``
    (PBKDF2-HMAC-SHA512, base64), the form ``mosquitto_passwd`` writes."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    b64 = base64.b64encode
    return f"$7${PBKDF2_ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}"


def default_broker_user() -> str | None:
    """``mosquitto`` when running as root and that user exists (Debian's package makes it)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("mosquitto")
    except KeyError:
        return None
    return "mosquitto"


def broker_ids(user: str | None) -> tuple[int, int]:
    """The user and group ids of ``user``, the account Mosquitto drops to when started as root
    (``mosquitto`` on Debian); ``(-1, -1)`` for None. ConfigError if there is no such user."""
    if user is None:
        return -1, -1
    try:
        entry = pwd.getpwnam(user)
    except KeyError as exc:
        raise ConfigError(f"there is no user {user!r} for the broker to run as") from exc
    return entry.pw_uid, entry.pw_gid


@dataclass(frozen=True, slots=True)
class Tls:
    """The TLS files of the listener: made here, or the operator's own."""

    ca: Path
    cert: Path
    key: Path
    made: bool


def _name(common: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "proximity-engine deployment"),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )


def _alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return names


def _cert_hosts(path: Path) -> set[str]:
    """The host names and addresses a certificate names (empty when unreadable)."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return set()
    return {str(v) for v in san.get_values_for_type(x509.DNSName)} | {
        str(v) for v in san.get_values_for_type(x509.IPAddress)
    }


def make_tls(
    out: Path, hosts: Sequence[str], now: dt.datetime, group: int = -1
) -> tuple[Tls, list[str]]:
    """The deployment's private CA (kept once made) and the broker's certificate for
    ``hosts`` (re-issued when they change), in ``out``; what was made, in words. The
    server's key is readable by ``group`` too (the broker's), the CA's key by no one else."""
    ca_crt, ca_key, crt, key = (out / n for n in ("ca.crt", "ca.key", "server.crt", "server.key"))
    done = []
    pem = serialization.Encoding.PEM
    key_bytes = _key_bytes

    ca_private: ec.EllipticCurvePrivateKey | None
    if ca_crt.exists():  # kept, with or without its key (which may be kept elsewhere)
        ca_cert = x509.load_pem_x509_certificate(ca_crt.read_bytes())
        ca_private = _ca_key(ca_key) if ca_key.exists() else None
    else:
        ca_private = ec.generate_private_key(ec.SECP256R1())
        subject = _name("proximity-engine private CA")
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(ca_private.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(ca_private, hashes.SHA256())
        )
        write_whole(ca_key, key_bytes(ca_private), private=True)
        write_whole(ca_crt, ca_cert.public_bytes(pem))
        done.append(f"made a private CA: {ca_crt} (give it to every client; keep {ca_key} safe)")
    why = (
        "there is none"
        if not (crt.exists() and key.exists())
        else "the host names changed"
        if _cert_hosts(crt) != set(_canonical(hosts))
        else "another CA signed it"
        if not _issued_by(crt, ca_cert)
        else ""
    )
    if why:
        if ca_private is None:
            raise ConfigError(
                f"the broker's certificate must be made ({why}), and only the CA's key can"
                f" sign it: put {ca_key} back for this run"
            )
        server_private, cert = _leaf(
            ca_cert, ca_private, hosts[0], now, ExtendedKeyUsageOID.SERVER_AUTH, hosts
        )
        write_whole(key, key_bytes(server_private), private=True, group=group)
        write_whole(crt, cert.public_bytes(pem))
        done.append(f"made the broker's certificate {crt} for {', '.join(hosts)}")
    elif group >= 0:  # kept: readable by the broker as the files made with it
        os.chmod(key, 0o640)
        os.chown(key, -1, group)
    return Tls(ca_crt, crt, key, made=True), done


def _key_bytes(k: ec.EllipticCurvePrivateKey) -> bytes:
    return k.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _leaf(
    ca_cert: x509.Certificate,
    ca_private: ec.EllipticCurvePrivateKey,
    common: str,
    now: dt.datetime,
    usage: x509.ObjectIdentifier,
    hosts: Sequence[str] = (),
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new key and its certificate signed by the CA: a server's (``hosts`` its names) or a
    client's (``common`` its account)."""
    private = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(ca_cert.subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if hosts:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(_alt_names(hosts)), critical=False
        )
    return private, builder.sign(ca_private, hashes.SHA256())


def _ca_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path} is not the EC key this command makes")
    return key


def _issued_by(path: Path, ca: x509.Certificate) -> bool:
    """Whether the certificate in ``path`` was signed by ``ca``."""
    try:
        x509.load_pem_x509_certificate(path.read_bytes()).verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature, OSError):
        return False
    return True


def client_certs(out: Path, names: Sequence[str], now: dt.datetime) -> list[str]:
    """A client certificate and key for each of ``names``, signed by the deployment's CA, in
    ``out/certs`` (``NAME.crt``, ``NAME.key`` readable by its owner only; kept once made);
    the names of those made now."""
    ca_key = out / "ca.key"
    ca_cert = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    folder = out / "certs"
    folder.mkdir(exist_ok=True)
    made = []
    for name in names:
        crt, key = folder / f"{name}.crt", folder / f"{name}.key"
        if crt.exists() and key.exists():
            continue
        if not ca_key.exists():
            raise ConfigError(
                f"{name} needs a client certificate, and only the CA's key can sign it: put"
                f" {ca_key} back for this run"
            )
        ca_private = _ca_key(ca_key)
        private, cert = _leaf(ca_cert, ca_private, name, now, ExtendedKeyUsageOID.CLIENT_AUTH)
        write_whole(key, _key_bytes(private), private=True)
        write_whole(crt, cert.public_bytes(serialization.Encoding.PEM))
        made.append(name)
    return made


def _canonical(hosts: Sequence[str]) -> list[str]:
    """Host names as a certificate lists them (addresses in their compressed form)."""
    out = []
    for h in hosts:
        try:
            out.append(str(ipaddress.ip_address(h)))
        except ValueError:
            out.append(h)
    return out


def conf_text(
    port: int,
    bind: str,
    tls: Tls,
    out: Path,
    persistence: Path,
    source: str,
    require_certificate: bool = False,
) -> str:
    """Mosquitto's configuration for the deployment (``require_certificate``: every client
    also presents a certificate signed by the CA)."""
    mutual = [
        "# Every client presents a certificate signed by the CA, besides its password.",
        "require_certificate true",
    ]
    return "\n".join(
        [
            "# Mosquitto for a proximity-engine deployment, made by 'proximity broker config'",
            f"# from {source!r}. Made again whenever the cases change (then: kill -HUP the",
            "# broker); edits here are lost. What each setting is for: docs/security.md.",
            "per_listener_settings false",
            f"listener {port}" + (f" {bind}" if bind else ""),
            f"cafile {tls.ca}",
            f"certfile {tls.cert}",
            f"keyfile {tls.key}",
            *(mutual if require_certificate else []),
            "# Every client has an account; none connects without one.",
            "allow_anonymous false",
            f"password_file {out / 'passwd'}",
            f"acl_file {out / 'acl'}",
            "# The client id is the account: no client can take another's (and its session).",
            "use_username_as_clientid true",
            "# Sessions and queued QoS 1 messages survive a broker crash (deploy/mosquitto.conf).",
            "persistence true",
            f"persistence_location {persistence}/",
            '# Its process id, for a reload after a rerun: kill -HUP "$(cat FILE)".',
            f"pid_file {persistence}/mosquitto.pid",
            "autosave_on_changes true",
            "autosave_interval 1",
            "max_queued_messages 0",
            "max_inflight_messages 1000",
            "set_tcp_nodelay true",
            "",
        ]
    )


def _previous(path: Path) -> tuple[dict[str, dict[str, str]], dict[str, object]]:
    """The accounts of an earlier run (name -> its entry), to keep their passwords, and its
    listener (host names, port, address, client certificates), to keep what is not given."""
    if not path.exists():
        return {}, {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        accounts = {a["account"]: a for a in doc["accounts"] if isinstance(a.get("password"), str)}
        listener = doc.get("listener", {})
        if not isinstance(listener, dict):
            raise TypeError("'listener' is not an object")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"{path} (the accounts of an earlier run) cannot be read: {exc}; move it away to"
            " make every account anew (every device then needs its new password)"
        ) from exc
    return accounts, listener


@dataclass(frozen=True, slots=True)
class Listener:
    """The broker's TLS listener: the names its certificate holds, its port and address, and
    whether clients present certificates."""

    hosts: tuple[str, ...] = DEFAULT_HOSTS
    port: int = DEFAULT_PORT
    bind: str = ""
    client_certs: bool = False

    def check(self) -> None:
        """ConfigError naming what cannot be a listener's."""
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port must be 1-65535, got {self.port}")
        for what, name in [*(("--host", h) for h in self.hosts), ("--bind", self.bind)]:
            if name and not _host_like(name):
                raise ConfigError(f"{what} {name!r} is neither a host name nor an address")


def _host_like(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        labels = name.split(".")
        return all(
            0 < len(label) < 64 and label.replace("-", "").isalnum() and label.isascii()
            for label in labels
        )
    return True


def plan_listener(
    before: dict[str, object],
    hosts: Sequence[str] | None,
    port: int | None,
    bind: str | None,
    client_certs: bool | None,
) -> tuple[Listener, list[str]]:
    """The listener of this run: what is given, else what the earlier run had, else the
    defaults (a rerun that leaves a flag out does not silently change the deployment); and
    what was kept, in words."""
    kept = []
    old_hosts = before.get("hosts")
    if hosts is None and isinstance(old_hosts, list) and old_hosts:
        hosts = [str(h) for h in old_hosts]
        own = [h for h in hosts if h not in DEFAULT_HOSTS]
        if own:
            kept.append(f"hosts {', '.join(own)}")
    old_port = before.get("port")
    if port is None and isinstance(old_port, int):
        port = old_port
        if old_port != DEFAULT_PORT:
            kept.append(f"port {old_port}")
    old_bind = before.get("bind")
    if bind is None and isinstance(old_bind, str) and old_bind:
        bind = old_bind
        kept.append(f"address {old_bind}")
    if client_certs is None and before.get("client_certs") is True:
        client_certs = True
        kept.append("client certificates")
    names = tuple(dict.fromkeys([*(hosts or ()), *DEFAULT_HOSTS]))
    plan = Listener(names, DEFAULT_PORT if port is None else port, bind or "", bool(client_certs))
    plan.check()
    return plan, [f"kept from the earlier run: {', '.join(kept)}"] if kept else []


@dataclass(frozen=True, slots=True)
class Made:
    """What :func:`write_config` made: the accounts, the listener, and what changed, in
    words."""

    accounts: list[Account]
    added: list[str]
    removed: list[str]
    notes: list[str]
    listener: Listener = Listener()
    #: Where the broker writes its process id (for the reload after a rerun).
    pid_file: Path = Path("mosquitto.pid")


def write_config(
    out: Path,
    cases: Sequence[Case],
    devices: Iterable[Device],
    *,
    desks: Iterable[str] = (),
    drop_desks: Iterable[str] = (),
    engine: str = "proximity-engine",
    topics: Topics = Topics(),
    hosts: Sequence[str] | None = None,
    port: int | None = None,
    bind: str | None = None,
    persistence: Path | None = None,
    own_tls: Tls | None = None,
    source: str = "the registry",
    now: dt.datetime | None = None,
    broker_user: str | None = None,
    with_client_certs: bool | None = None,
) -> Made:
    """Write the broker's configuration, certificates, password and ACL files into ``out``
    (see the module's docstring); desks of an earlier run are kept unless in ``drop_desks``,
    and so are its host names, port, address and client certificates where None is given.
    ``broker_user``: the user Mosquitto runs as (it drops to it when started as root): the
    files it reads are made readable by its group, its persistence folder its own.
    ``with_client_certs``: every account also gets a client certificate (``out/certs``; one
    for the engine's two accounts), and the broker requires one (mutual TLS)."""
    try:
        return _write_config(
            out, cases, devices, desks, drop_desks, engine, topics, hosts, port, bind,
            persistence, own_tls, source, now, broker_user, with_client_certs,
        )  # fmt: skip
    except OSError as exc:
        raise ConfigError(f"cannot write the broker's configuration into {out}: {exc}") from exc


def _write_config(
    out: Path,
    cases: Sequence[Case],
    devices: Iterable[Device],
    desks: Iterable[str],
    drop_desks: Iterable[str],
    engine: str,
    topics: Topics,
    hosts: Sequence[str] | None,
    port: int | None,
    bind: str | None,
    persistence: Path | None,
    own_tls: Tls | None,
    source: str,
    now: dt.datetime | None,
    broker_user: str | None,
    with_client_certs: bool | None,
) -> Made:
    uid, gid = broker_ids(broker_user)
    out = out.resolve()
    accounts_file = out / "accounts.json"
    before, listened = _previous(accounts_file)
    listener, notes = plan_listener(listened, hosts, port, bind, with_client_certs)
    # The operator's own certificate and the persistence folder, as the earlier run had them.
    own = listened.get("own_tls")
    if (
        own_tls is None
        and isinstance(own, dict)
        and all(isinstance(own.get(k), str) for k in ("ca", "cert", "key"))
    ):
        own_tls = Tls(Path(own["ca"]), Path(own["cert"]), Path(own["key"]), made=False)
        notes.append(f"kept from the earlier run: your own certificate {own_tls.cert}")
    kept_store = listened.get("persistence")
    if persistence is None and isinstance(kept_store, str) and kept_store:
        persistence = Path(kept_store)
        if persistence != out.resolve() / "data":
            notes.append(f"kept from the earlier run: the persistence folder {persistence}")
    desks, dropped = set(desks), set(drop_desks)
    earlier = {n for n, a in before.items() if a.get("role") == "cic"}
    if desks & dropped:
        raise ConfigError(f"--cic and --drop-cic both name {', '.join(sorted(desks & dropped))}")
    unknown = sorted(dropped - earlier)
    if unknown:
        raise ConfigError(
            f"--drop-cic {', '.join(unknown)}: no such desk (the desks are:"
            f" {', '.join(sorted(earlier)) or 'none'})"
        )
    accounts = plan_accounts(cases, devices, (earlier - dropped) | desks, engine, topics)
    acl = acl_text(accounts, source)  # refused, if it is, before anything is written
    out.mkdir(parents=True, exist_ok=True)
    if own_tls is None:
        tls, made = make_tls(out, list(listener.hosts), now or dt.datetime.now(dt.UTC), gid)
        notes += made
    else:
        tls = own_tls

    def kept(name: str, role: str) -> str | None:
        """An account's password from the earlier run, if it had the same role (a name that
        changes role gets a new one: its earlier holder must not get the new rights)."""
        entry = before.get(name, {})
        return entry.get("password") if entry.get("role") == role else None

    engine_password = kept(engine, "engine") or secrets.token_urlsafe(PASSWORD_BYTES)
    passwords = {}
    for a in accounts:
        if a.role in ("engine", "engine_out"):
            passwords[a.name] = engine_password  # one secret for the engine's two clients
        elif a.role == "cic_watch":
            pass  # the desk's own, below
        else:
            passwords[a.name] = kept(a.name, a.role) or secrets.token_urlsafe(PASSWORD_BYTES)
    for a in accounts:
        if a.role == "cic_watch":  # one secret for the desk's two accounts
            passwords[a.name] = passwords[a.name.removesuffix(WATCH_SUFFIX)]
    names = [a.name for a in accounts]
    added = [n for n in names if n not in before]
    removed = sorted(set(before) - set(names))
    write_whole(
        out / "passwd",
        "".join(f"{a.name}:{password_hash(passwords[a.name])}\n" for a in accounts),
        private=True,
        group=gid,
    )
    write_whole(out / "acl", acl, private=True, group=gid)
    doc = {
        "note": "broker accounts of the deployment: hand each password to its device, desk or"
        " engine only",
        "listener": {
            "hosts": list(listener.hosts),
            "port": listener.port,
            "bind": listener.bind,
            "client_certs": listener.client_certs,
            "own_tls": None
            if own_tls is None
            else {"ca": str(own_tls.ca), "cert": str(own_tls.cert), "key": str(own_tls.key)},
            "persistence": str((persistence or out / "data").resolve()),
        },
        "accounts": [
            {"account": a.name, "role": a.role, "password": passwords[a.name]} for a in accounts
        ],
    }
    write_whole(accounts_file, json.dumps(doc, indent=1) + "\n", private=True)
    write_whole(out / "engine.password", engine_password + "\n", private=True)
    store = persistence if persistence is not None else out / "data"
    store.mkdir(parents=True, exist_ok=True)
    if uid >= 0:
        os.chown(store, uid, gid)
    if listener.client_certs:
        if own_tls is not None:
            raise ConfigError(
                "client certificates are signed by the private CA this command makes; with"
                " your own certificate (--server-cert), issue them with your own CA"
            )
        names = [a.name for a in accounts if a.role != "engine_out"]
        made_certs = client_certs(out, names, now or dt.datetime.now(dt.UTC))
        if made_certs:
            notes.append(f"made client certificates in {out / 'certs'}: {', '.join(made_certs)}")
    conf = conf_text(
        listener.port, listener.bind, tls, out, store.resolve(), source, listener.client_certs
    )
    write_whole(out / "mosquitto.conf", conf)
    return Made(accounts, added, removed, notes, listener, store.resolve() / "mosquitto.pid")
