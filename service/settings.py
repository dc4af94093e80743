"""Settings shared by the CLI and the service: flags > environment (PROXIMITY_*) > config file
(TOML, ``--config FILE`` or ``PROXIMITY_CONFIG``) > defaults.

:func:`resolve_settings` also says where each value came from (:class:`Origin`), for
``proximity config show``; every problem (an unknown key in the config file, a bad value from
any source) is a :class:`~proximity.errors.ConfigError` that names the setting and its source.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from ingest.model import IngestError
from ingest.transport import PASSWORD_ENV, Access, masked_url, parse_broker_url
from numerics.uncertainty import DEFAULT_MOBILITY, UNKNOWN_ACCURACY_M
from proximity.errors import ConfigError
from proximity.rules import RuleConfig, rule_settings

ENV_PREFIX = "PROXIMITY_"
#: The environment variable naming the config file (not a setting itself).
CONFIG_ENV = ENV_PREFIX + "CONFIG"
#: Command-line flags whose name is not the setting's name with dashes (kept for
#: compatibility: ``--http`` predates ``http_listen``).
FLAG_NAMES = {"http_listen": "--http"}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
#: The engine's publishing client: its client id, and its account at a secured broker, are
#: the intake's with this appended.
OUT_SUFFIX = "-out"


class Settings(BaseSettings):
    """Every setting of the engine. Environment variables are ``PROXIMITY_`` + the upper-case
    name (``PROXIMITY_BROKER``, ``PROXIMITY_DB``, ...); a TOML config file uses the names."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    broker: str = Field(
        "mqtt://127.0.0.1:1883",
        description="MQTT broker URL: mqtt://HOST:PORT, or mqtt://HOST for port 1883;"
        " mqtts://HOST[:PORT] for TLS (port 8883)",
    )
    broker_username: str = Field(
        "",
        description="the engine's account at the broker (empty: connect without one); its"
        " publishing client uses the account of this name with -out appended (proximity"
        " broker config makes both, named proximity-engine when this is empty)",
    )
    broker_password_file: Path | None = Field(
        None,
        description="file whose first line is the broker password; when not set, the"
        f" environment variable {PASSWORD_ENV} is read (a password is never a flag, and"
        " never logged)",
    )
    broker_ca: Path | None = Field(
        None,
        description="mqtts:// only: the CA certificate (PEM) that signed the broker's"
        " certificate (default: the system's CAs)",
    )
    broker_cert: Path | None = Field(
        None,
        description="mqtts:// only: the engine's client certificate (PEM), if the broker"
        " asks for one",
    )
    broker_key: Path | None = Field(
        None, description="mqtts:// only: the private key (PEM) of broker_cert"
    )
    db: Path = Field(Path("proximity.sqlite"), description="SQLite registry file")
    evidence: Path | None = Field(
        None,
        description="SQLite evidence record, hash-chained per case (default: next to the"
        " registry, DB with the suffix .evidence.sqlite)",
    )
    evidence_key: Path | None = Field(
        None,
        description="the Ed25519 key that signs the evidence record (created at the first"
        " start, readable by the engine only; default: next to the record, EVIDENCE with the"
        " suffix .key); its public half verifies exports",
    )
    anchor_topic: str = Field(
        "cic/evidence",
        description="topic of the evidence anchors: each case's signed head hash, published"
        " and journalled every anchor_interval_s, so that an edited or cut record shows",
    )
    anchor_interval_s: float = Field(
        300.0, gt=0, description="seconds between evidence anchors of a case whose record grew"
    )
    retention_days: float = Field(
        30.0,
        gt=0,
        description="location history (fixes in the evidence record) older than this is"
        " purged, except for cases with an open alarm; the purge is recorded",
    )
    journal: Path | None = Field(
        None,
        description="SQLite outbox journal of the messages to the CIC, and the engine's saved state"
        " (default: next to the"
        " registry, DB with the suffix .journal.sqlite)",
    )
    client_id: str = Field(
        "proximity-engine",
        description="MQTT client id of the fix subscription (a persistent session is kept"
        " under this id, so fixes queue at the broker while the engine restarts)",
    )
    session_expiry_s: int = Field(
        3600, ge=0, description="how long the broker keeps the session while the engine is away"
    )
    http_listen: str = Field(
        "",
        description="HOST:PORT to serve the operator service (HTTP API, console, /health,"
        " /ready, /metrics) and the OsmAnd / Traccar Client HTTP input on; empty: not served",
    )
    research_grid_m: float = Field(
        1000.0,
        ge=100.0,
        le=100_000.0,
        description="the grid cell (metres) to which positions are coarsened for the"
        " researcher role of the HTTP API",
    )
    alarm_topic: str = Field("cic/alarms", description="topic of the alarms to the CIC")
    incident_topic: str = Field(
        "cic/alarms/incidents",
        description="topic of the incidents: the alarms of one situation grouped, with a"
        " priority (each change of an incident, JSON)",
    )
    cap_topic: str = Field(
        "cic/alarms/cap",
        description="topic of the same alarms as OASIS CAP 1.2 XML (empty: not published)",
    )
    rejected_topic: str = Field("proximity/rejected", description="topic of rejected input")
    status_topic: str = Field("proximity/status", description="retained engine status and counters")
    status_interval_s: float = Field(5.0, gt=0, description="seconds between status messages")
    # The rules' settings, one per RuleConfig field, described there alone (their flags,
    # environment variables and config keys are their names, as for every setting).
    locals().update(
        {n: Field(default, **spec) for n, (_, default, spec) in rule_settings().items()}
    )
    __annotations__.update({n: kind for n, (kind, _, _) in rule_settings().items()})
    if TYPE_CHECKING:  # the type checker cannot see those: settings.confirm_s and the like

        def __getattr__(self, name: str) -> Any: ...

    default_mobility: Literal["walking", "cycling", "driving"] = Field(
        DEFAULT_MOBILITY,
        description="top-speed profile of a device that neither its case nor its own entry"
        " describes (an old fix's uncertainty grows by its age times this speed)",
    )
    unknown_accuracy_m: float = Field(
        UNKNOWN_ACCURACY_M,
        gt=0,
        description="68 % radius assumed for a fix whose accuracy is 0 or missing, metres",
    )
    sweep_interval_s: float = Field(
        1.0,
        gt=0,
        description="seconds between sweeps of every pair for what time alone changes"
        " (an old fix's growing uncertainty)",
    )
    time_scale: float = Field(
        1.0,
        gt=0,
        description="evaluation runs only: the engine's clock stands at time_epoch until the"
        " wall clock reaches it, then runs this many times faster (fix times, ages and every"
        " rule timer follow it), so that hours of simulated or recorded fixes replay in"
        " minutes",
    )
    time_epoch: float | None = Field(
        None,
        description="evaluation runs only: the epoch second (UTC) from which the scaled clock"
        " runs (default: the engine's start)",
    )
    watchdog_s: float = Field(
        30.0,
        ge=0,
        description="seconds the decision loop may go without a round (or the MQTT client's"
        " network thread be dead) before the engine counts as stalled: it sends an"
        " engine_fault alarm for every case and exits with status 3, for its supervisor to"
        " restart it; 0: no watchdog",
    )
    clock_offset_s: float = Field(
        0.0,
        description="seconds added to the wall clock for the engine's clock (drills and the"
        " test suite's year-ahead run; 0 in service)",
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        try:
            parse_broker_url(value)
        except IngestError as exc:
            raise ValueError(str(exc)) from exc
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
        return value.upper()


def flag_name(name: str) -> str:
    """The command-line flag of setting ``name``: ``--name-with-dashes`` (or FLAG_NAMES)."""
    return FLAG_NAMES.get(name, "--" + name.replace("_", "-"))


def env_name(name: str) -> str:
    """The environment variable of setting ``name``: ``PROXIMITY_NAME``."""
    return ENV_PREFIX + name.upper()


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a setting's value came from: ``kind`` and the flag, variable or file (``where``;
    None for a default)."""

    kind: Literal["flag", "environment", "file", "default"]
    where: str | None = None

    def __str__(self) -> str:
        return self.kind if self.where is None else f"{self.kind} {self.where}"


@dataclass(frozen=True, slots=True)
class ResolvedSettings:
    """The settings, where each came from, and the config file read (if any)."""

    settings: Settings
    origins: Mapping[str, Origin]
    config: Path | None
    #: Things that are not errors but may be mistakes (an environment variable that looks
    #: like a misspelt setting).
    warnings: tuple[str, ...] = ()


def _masked(value: Any) -> Any:
    """``value`` as an error may show it: a URL's password (refused, but given) as ``***``."""
    return masked_url(value) if isinstance(value, str) else value


def _listed(head: str, problems: list[str], tail: str = "") -> str:
    """One problem on the line of ``head``; several on lines of their own."""
    if len(problems) == 1:
        return f"{head}: {problems[0]}{tail}"
    lines = "".join(f"\n  - {p}" for p in problems)
    return f"{head}: {len(problems)} problems:{lines}" + (f"\n{tail.strip()}" if tail else "")


def _did_you_mean(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"config file {path} is a directory; give a TOML file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    # Either top-level keys or a [proximity] table.
    table = data.get("proximity", data)
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [proximity] must be a table")
    known = list(Settings.model_fields)
    problems = []
    if table is not data:
        outside = sorted(set(data) - {"proximity"})
        if outside:
            problems.append(
                f"{', '.join(outside)} outside the [proximity] table would be ignored;"
                " put every setting in the table (or use no table)"
            )
    for key in table:
        if key not in Settings.model_fields:
            problems.append(f"unknown setting {key!r}{_did_you_mean(key, known)}")
    if problems:
        raise ConfigError(
            _listed(
                f"config file {path}",
                problems,
                " (every setting is listed by 'proximity config show')",
            )
        )
    return table


def _environment() -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """Settings from PROXIMITY_* variables, the variable of each, and warnings about
    PROXIMITY_* variables that look like misspelt settings."""
    values = EnvSettingsSource(Settings)()
    by_lower = {k.lower(): k for k in os.environ}
    names = {f: by_lower.get(env_name(f).lower(), env_name(f)) for f in values}
    known = list(Settings.model_fields)
    warnings = []
    for var in sorted(os.environ):
        name = var[len(ENV_PREFIX) :].lower()
        if (
            var.upper().startswith(ENV_PREFIX)
            and name not in known
            and var.upper() not in (CONFIG_ENV, PASSWORD_ENV)
        ):
            # Only near misses: other PROXIMITY_* variables (PROXIMITY_NUMBA_CACHE) are fine.
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
            if close:
                warnings.append(
                    f"environment variable {var} is not a setting;"
                    f" did you mean {env_name(close[0])}?"
                )
    return values, names, warnings


class _Given(Settings):
    """Settings validated from exactly the values given (the sources are merged by
    :func:`resolve_settings`, which knows where each value came from)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def resolve_settings(
    config: Path | None = None, flags: Mapping[str, Any] | None = None
) -> ResolvedSettings:
    """Build :class:`Settings` from ``flags`` (command-line values; None: not given), the
    environment, the config file (``config``, else ``PROXIMITY_CONFIG``) and the defaults, in
    that order of precedence, and say where each value came from."""
    if config is None and os.environ.get(CONFIG_ENV):
        config = Path(os.environ[CONFIG_ENV])
    file_values = _read_toml(config) if config is not None else {}
    env_values, env_vars, warnings = _environment()
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    unknown = sorted(set(given) - set(Settings.model_fields))
    if unknown:  # a programming error of the caller, not the user's
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}")
    origins: dict[str, Origin] = {}
    merged: dict[str, Any] = {}
    for name in Settings.model_fields:
        if name in given:
            flag = flag_name(name)
            if given[name] is False:  # a switch given as --no-...
                flag = "--no-" + flag.removeprefix("--")
            merged[name], origins[name] = given[name], Origin("flag", flag)
        elif name in env_values:
            merged[name], origins[name] = env_values[name], Origin("environment", env_vars[name])
        elif name in file_values:
            merged[name], origins[name] = file_values[name], Origin("file", str(config))
        else:
            origins[name] = Origin("default")
    try:
        settings: Settings = _Given(**merged)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            name = str(e["loc"][0]) if e["loc"] else "?"
            msg = e["msg"]
            if e["type"] == "value_error":
                msg = str(e["ctx"]["error"]) if "ctx" in e else msg.removeprefix("Value error, ")
            field = Settings.model_fields.get(name)
            about = f" ({field.description})" if field is not None and field.description else ""
            problems.append(
                f"{name} = {_masked(merged.get(name))!r} from"
                f" {origins.get(name, Origin('default'))}: {msg}{about}"
            )
        raise ConfigError(_listed("invalid settings", problems)) from exc
    return ResolvedSettings(settings, origins, config, tuple(warnings))


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Build :class:`Settings`; ``overrides`` (command-line flags) that are None are ignored."""
    return resolve_settings(config, overrides).settings


def broker_access(settings: Settings) -> Access:
    """The engine's account and TLS files at the broker: the password from
    ``broker_password_file`` (its first line) or else the environment
    (``PROXIMITY_BROKER_PASSWORD``); ConfigError when a file cannot be read or the settings
    do not fit together."""
    password = ""
    if settings.broker_password_file is not None:
        path = settings.broker_password_file
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"broker_password_file {path} cannot be read: {exc}") from exc
        password = lines[0].strip() if lines else ""
        if not password:
            raise ConfigError(
                f"broker_password_file {path} is empty: its first line is the password"
            )
    else:
        password = os.environ.get(PASSWORD_ENV, "")
    if password and not settings.broker_username:
        raise ConfigError(
            "a broker password is given (broker_password_file or"
            f" {PASSWORD_ENV}) but no broker_username"
        )
    if settings.broker_key is not None and settings.broker_cert is None:
        raise ConfigError("broker_key is set but broker_cert is not: give the certificate too")
    for name in ("broker_ca", "broker_cert", "broker_key"):
        path = getattr(settings, name)
        if path is not None and not path.is_file():
            raise ConfigError(f"{name} {path} is not a file")
    return Access(
        settings.broker_username,
        password,
        settings.broker_ca,
        settings.broker_cert,
        settings.broker_key,
    )


def rule_config(settings: Settings) -> RuleConfig:
    """The rule thresholds of ``settings`` (every RuleConfig field is a setting of that name)."""
    return RuleConfig(**{f: getattr(settings, f) for f in RuleConfig.__dataclass_fields__})
