from __future__ import annotations

import doctest

import pytest

import ingest.transport
from cli.main import main
from ingest.model import IngestError
from ingest.transport import BrokerAddress, parse_broker_url


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("mqtt://127.0.0.1:1883", BrokerAddress("127.0.0.1", 1883)),
        ("mqtt://broker.example:8883/", BrokerAddress("broker.example", 8883)),
        ("mqtt://localhost", BrokerAddress("localhost", 1883)),
        ("MQTT://Localhost:1884", BrokerAddress("localhost", 1884)),
        ("tcp://10.0.0.5:1883", BrokerAddress("10.0.0.5", 1883)),
        ("  mqtt://[::1]:1883 ", BrokerAddress("::1", 1883)),
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
        ("mqtts://example:8883", "scheme 'mqtts' is not supported"),
        ("mqtt://user:secret@example", "a user name or password in the URL is not supported"),
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
