from __future__ import annotations

import doctest
from pathlib import Path

import pytest

import ingest.transport
from cli.main import main
from ingest.model import IngestError
from ingest.transport import BrokerAddress, parse_broker_url
from proximity.errors import ConfigError
from service.settings import broker_access, load_settings


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("mqtt://127.0.0.1:1883", BrokerAddress("127.0.0.1", 1883)),
        ("mqtt://broker.example:8883/", BrokerAddress("broker.example", 8883)),
        ("mqtt://localhost", BrokerAddress("localhost", 1883)),
        ("MQTT://Localhost:1884", BrokerAddress("localhost", 1884)),
        ("tcp://10.0.0.5:1883", BrokerAddress("10.0.0.5", 1883)),
        ("  mqtt://[::1]:1883 ", BrokerAddress("::1", 1883)),
        ("mqtts://broker.example", BrokerAddress("broker.example", 8883, tls=True)),
        ("ssl://10.0.0.5:18883", BrokerAddress("10.0.0.5", 18883, tls=True)),
    ],
)
def test_broker_urls_with_a_scheme_are_accepted(url: str, address: BrokerAddress) -> None:
    assert parse_broker_url(url) == address


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("127.0.0.1:1883", "has no scheme"),
        ("localhost", "has no scheme"),
        ("localhost:1883", "has no scheme"),
        ("http://example", "scheme 'http' is not supported"),
        ("wss://example:8883", "scheme 'wss' is not supported"),
        ("mqtt://example:1883/fixes", "has a path or query"),
        ("mqtt://example:99999", "the port must be a number 1-65535"),
        ("mqtt://:1883", "names no host"),
    ],
)
def test_other_broker_urls_are_refused_showing_the_accepted_forms(url: str, problem: str) -> None:
    with pytest.raises(IngestError) as info:
        parse_broker_url(url)
    message = str(info.value)
    assert message.startswith(f"broker URL {url!r}")
    assert problem in message
    assert "mqtt://HOST:PORT or mqtt://HOST (port 1883), e.g. mqtt://127.0.0.1:1883" in message


def test_credentials_in_a_broker_url_are_refused_without_showing_the_password() -> None:
    # A URL is shown on command lines and in logs: the secret goes in a file or the
    # environment, the user name in its own setting.
    with pytest.raises(IngestError) as info:
        parse_broker_url("mqtts://engine:s3cret@broker.example")
    message = str(info.value)
    assert "s3cret" not in message and "engine:***@broker.example" in message
    assert "broker_username" in message and "PROXIMITY_BROKER_PASSWORD" in message
    # Whatever the password holds.
    with pytest.raises(IngestError) as odd:
        parse_broker_url("mqtts://engine:pa/ss#w@rd@broker.example")
    assert "pa/ss" not in str(odd.value) and "engine:***@broker.example" in str(odd.value)
    # Nor does the settings' error, which shows the value it refuses.
    with pytest.raises(ConfigError) as refused:
        load_settings(None, broker="mqtts://engine:s3cret@broker.example")
    assert "s3cret" not in str(refused.value) and "engine:***@" in str(refused.value)


def test_the_engines_password_comes_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROXIMITY_BROKER_PASSWORD", raising=False)
    secret = tmp_path / "engine.password"
    secret.write_text("from-the-file\n")
    settings = load_settings(None, broker_username="proximity-engine", broker_password_file=secret)
    access = broker_access(settings)
    assert (access.username, access.password) == ("proximity-engine", "from-the-file")
    assert "from-the-file" not in repr(access) and "from-the-file" not in str(access)
    monkeypatch.setenv("PROXIMITY_BROKER_PASSWORD", "from-the-environment")
    assert (
        broker_access(load_settings(None, broker_username="e")).password == "from-the-environment"
    )
    with pytest.raises(ConfigError, match="no broker_username"):
        broker_access(load_settings(None))
    secret.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        broker_access(load_settings(None, broker_username="e", broker_password_file=secret))
    with pytest.raises(ConfigError, match=r"broker_ca .* is not a file"):
        broker_access(load_settings(None, broker_username="e", broker_ca=tmp_path / "missing.crt"))


def test_a_flag_is_taken_only_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    # --broker-password is no abbreviation of --broker-password-file: a secret typed there
    # would be taken as a file name and shown in the error.
    with pytest.raises(SystemExit):
        main(["run", "--broker-password", "s3cret"])
    err = capsys.readouterr().err
    assert "unrecognized arguments: --broker-password ***" in err and "s3cret" not in err


def test_the_docstring_examples_hold() -> None:
    result = doctest.testmod(ingest.transport)
    assert result.attempted >= 4 and result.failed == 0


def test_run_refuses_a_broker_without_scheme_before_connecting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # No broker listens here: the refusal comes from the setting, not from a failed connect.
    assert main(["run", "--broker", "127.0.0.1:1883", "--db", "/nonexistent/r.sqlite"]) == 1
    err = capsys.readouterr().err
    assert "broker URL '127.0.0.1:1883' has no scheme" in err
    assert "mqtt://127.0.0.1:1883" in err


def test_evaluate_refuses_a_broker_without_scheme_before_starting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["evaluate", "stationary", "--broker", "localhost:1883"]) == 1
    assert capsys.readouterr().err.startswith(
        "error: --broker: broker URL 'localhost:1883' has no scheme; use mqtt://HOST:PORT"
    )
