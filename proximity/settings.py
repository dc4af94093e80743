"""Settings shared by the CLI and the service: flags > environment (PROXIMITY_*) > config file
(TOML, ``--config FILE`` or ``PROXIMITY_CONFIG``) > defaults."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from proximity.errors import ConfigError
from proximity.rules import RuleConfig
from proximity.uncertainty import DEFAULT_MOBILITY, UNKNOWN_ACCURACY_M

#: Defaults of the rule settings live in RuleConfig alone.
RULES = RuleConfig()


class Settings(BaseSettings):
    """Every setting of the engine. Environment variables are ``PROXIMITY_`` + the upper-case
    name (``PROXIMITY_BROKER``, ``PROXIMITY_DB``, ...); a TOML config file uses the names."""

    model_config = SettingsConfigDict(env_prefix="PROXIMITY_", extra="forbid")

    broker: str = Field("mqtt://127.0.0.1:1883", description="MQTT broker URL, mqtt://HOST:PORT")
    db: Path = Field(Path("proximity.sqlite"), description="SQLite registry file")
    evidence: Path | None = Field(
        None,
        description="SQLite evidence record, hash-chained per case (default: next to the"
        " registry, DB with the suffix .evidence.sqlite)",
    )
    retention_days: float = Field(
        30.0,
        gt=0,
        description="location history (fixes in the evidence record) older than this is"
        " purged, except for cases with an open alarm; the purge is recorded",
    )
    journal: Path | None = Field(
        None,
        description="SQLite outbox journal of the messages to the CIC (default: next to the"
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
        description="HOST:PORT to serve the OsmAnd / Traccar Client HTTP input on (devices"
        " with an osmand secret in the case file); empty: not served",
    )
    alarm_topic: str = Field("cic/alarms", description="topic of the alarms to the CIC")
    cap_topic: str = Field(
        "cic/alarms/cap",
        description="topic of the same alarms as OASIS CAP 1.2 XML (empty: not published)",
    )
    rejected_topic: str = Field("proximity/rejected", description="topic of rejected input")
    status_topic: str = Field("proximity/status", description="retained engine status and counters")
    status_interval_s: float = Field(5.0, gt=0, description="seconds between status messages")
    margin_fraction: float = Field(
        RULES.margin_fraction,
        ge=0,
        le=1,
        description="hysteresis margin as a fraction of the order distance",
    )
    margin_min_m: float = Field(
        RULES.margin_min_m, ge=0, description="smallest hysteresis margin, metres"
    )
    implausible_speed_mps: float = Field(
        RULES.implausible_speed_mps,
        gt=0,
        description="a fix implying a faster move from the last accepted one (plus both"
        " accuracies and jump_slack_m) is set aside as a multipath jump",
    )
    motion_accel_psd: float = Field(
        RULES.motion_accel_psd,
        gt=0,
        description="white-acceleration spectral density (m^2/s^3) of the per-device motion"
        " filter: larger follows manoeuvres faster, smaller averages more GPS jitter",
    )
    jump_slack_m: float = Field(
        RULES.jump_slack_m, ge=0, description="metres added to the implausible-jump allowance"
    )
    reporting_interval_s: float = Field(
        RULES.reporting_interval_s,
        gt=0,
        description="expected seconds between fixes of a device that the case file's devices"
        " list does not describe (silence beyond it plus the grace is signal lost)",
    )
    signal_grace_s: float = Field(
        RULES.signal_grace_s,
        ge=0,
        description="seconds of grace after a missed report before a device counts as silent",
    )
    max_rejected: int = Field(
        RULES.max_rejected,
        ge=0,
        description="after this many fixes set aside in a row, the next fix is used whatever"
        " it says (a device is never frozen at an old position)",
    )
    confirm_s: float = Field(
        RULES.confirm_s,
        ge=0,
        description="seconds a likely (best estimate inside, not certain) breach must hold"
        " before it raises the alarm; a certain breach raises it at once",
    )
    dwell_s: float = Field(
        RULES.dwell_s,
        ge=0,
        description="seconds a level's leave condition (beyond its distance plus the margin)"
        " must hold before the level is left",
    )
    escalation_fraction: float = Field(
        RULES.escalation_fraction,
        gt=0,
        le=1,
        description="escalation distance as a fraction of the order distance, for cases that"
        " do not set order.escalation_distance_m",
    )
    escalate_after_s: float = Field(
        RULES.escalate_after_s, gt=0, description="an alarm lasting this long escalates"
    )
    renotify_s: float = Field(
        RULES.renotify_s,
        gt=0,
        description="an unchanged alarm is announced again this often until acknowledged",
    )
    approach_horizon_s: float = Field(
        RULES.approach_horizon_s,
        gt=0,
        description="approach alarm when the order distance is predicted within this time",
    )
    approach_hold_s: float = Field(
        RULES.approach_hold_s,
        ge=0,
        description="an approach must be predicted this long before it is an alarm",
    )
    approach_min_speed_mps: float = Field(
        RULES.approach_min_speed_mps, gt=0, description="smallest closing speed of an approach"
    )
    approach_min_m: float = Field(
        RULES.approach_min_m,
        ge=0,
        description="metres an approach must already have closed before it alarms",
    )
    parallel_min_speed_mps: float = Field(
        RULES.parallel_min_speed_mps,
        gt=0,
        description="a pair alarm is labelled parallel travel when both move at least this"
        " fast, the same way (perhaps a coincidental encounter)",
    )
    parallel_max_angle_deg: float = Field(
        RULES.parallel_max_angle_deg,
        gt=0,
        le=90,
        description="largest heading difference of parallel travel, degrees",
    )
    probe_entries: int = Field(
        RULES.probe_entries,
        ge=2,
        description="entries into the warning band within probe_window_s that make a probing alarm",
    )
    probe_window_s: float = Field(
        RULES.probe_window_s, gt=0, description="window of the boundary-probing count, seconds"
    )
    probe_min_gap_s: float = Field(
        RULES.probe_min_gap_s,
        ge=0,
        description="entries closer together than this (seconds) count as one visit for"
        " boundary probing (uncertainty flickering at the band's edge is not a probe)",
    )
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
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    # Either top-level keys or a [proximity] table.
    table = data.get("proximity", data)
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [proximity] must be a table")
    return table


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Build :class:`Settings`; ``overrides`` (command-line flags) that are None are ignored."""
    if config is None and os.environ.get("PROXIMITY_CONFIG"):
        config = Path(os.environ["PROXIMITY_CONFIG"])
    file_values = _read_toml(config) if config is not None else {}
    flags = {k: v for k, v in overrides.items() if v is not None}

    class _Loaded(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, _DictSource(settings_cls, file_values))

    try:
        return _Loaded(**flags)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        where = f" (config file {config})" if config else ""
        raise ConfigError(f"invalid settings{where}: {problems}") from exc


class _DictSource(PydanticBaseSettingsSource):
    """Values of a config file, below flags and environment variables."""

    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._values = values

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


def rule_config(settings: Settings) -> RuleConfig:
    """The rule thresholds of ``settings`` (every RuleConfig field is a setting of that name)."""
    return RuleConfig(**{f: getattr(settings, f) for f in RuleConfig.__dataclass_fields__})
