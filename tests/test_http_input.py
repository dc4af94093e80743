"""The HTTP input (OsmAnd / Traccar Client) under hostile requests, served for real and called
over sockets: the secret is checked before anything is parsed, bodies are bounded before they
are read, numbers are strict, and no request gets a 5xx.

The memory test runs the server in a process of its own and measures it from /proc: a 400 MB
body, streamed in chunks, with a wrong secret and with a right one.
"""

from __future__ import annotations

import logging
import random
import select
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest

from benchmarks.fuzz import QUERY_TOKENS, mutate, targets
from ingest.codec import MAX_PAYLOAD_BYTES
from ingest.http_server import HttpServer
from ingest.model import Fix, Rejection, RejectReason
from ingest.osmand import make_app
from tests.conftest import now

SECRET = "k7Qx-2vLm-long-random"
OTHER_SECRET = "s3cret-tag-17"
DEVICES = [
    ("phone-42", {"osmand": {"id": "48241179", "secret": SECRET}}),
    ("tag-17", {"osmand": {"secret": OTHER_SECRET}}),
]
TIMEOUT_S = 10.0
MALFORMED_REQUESTS = 5000
BIG_BODY_BYTES = 400 * 1024 * 1024
CHUNK_BYTES = 1024 * 1024
#: What a 400 MB body may cost the server, in VmRSS and in its peak VmHWM.
MEMORY_BUDGET_BYTES = 10 * 1024 * 1024

Served = tuple[int, list[Fix | Rejection]]


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    received: list[Fix | Rejection] = []
    server = HttpServer(make_app(DEVICES, received.append, now), "127.0.0.1", 0)
    server.start()
    yield server.port, received
    server.stop()


def status_of(response: bytes) -> int | None:
    """The status code of a raw HTTP response, None if there was none."""
    if not response.startswith(b"HTTP/"):
        return None
    try:
        return int(response.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


def exchange(port: int, request: bytes, *, half_close: bool = False) -> int | None:
    """Send one raw request on a new connection; the response's status, None if the server
    closed without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        try:
            sock.sendall(request)
            if half_close:  # the body announced is not coming: the client is gone
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        response = b""
        try:
            while b"\r\n" not in response:
                data = sock.recv(65536)
                if not data:
                    break
                response += data
        except OSError:
            pass
    return status_of(response)


def http(
    method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body and "Transfer-Encoding" not in (headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def query(**params: str) -> str:
    base = {"id": "48241179", "timestamp": str(int(now())), "lat": "50.85", "lon": "4.35"}
    return urlencode({**base, **params})


def reasons_since(received: list[Fix | Rejection], n: int) -> list[str]:
    return [r.reason.value if isinstance(r, Rejection) else "fix" for r in received[n:]]


# Strict numbers.


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"lat": "1_0"}, "bad_type"),
        ({"lat": "１０"}, "bad_type"),  # fullwidth digits
        ({"lat": "+10"}, "bad_type"),
        ({"lat": " 10"}, "bad_type"),
        ({"lat": "10\n"}, "bad_type"),
        ({"lat": "inf"}, "bad_type"),
        ({"lat": "nan"}, "bad_type"),
        ({"lat": "0x10"}, "bad_type"),
        ({"lat": "1e999"}, "out_of_range"),
        ({"accuracy": "٣"}, "bad_type"),  # Arabic-Indic three
        ({"timestamp": "²"}, "bad_timestamp"),
        ({"timestamp": "①"}, "bad_timestamp"),
        ({"timestamp": "1_796_000_000"}, "bad_timestamp"),
        ({"timestamp": "２０２６-11-23T10:00:00Z"}, "bad_timestamp"),
    ],
)
def test_numbers_are_plain_ascii_decimals(
    served: Served, params: dict[str, str], reason: str
) -> None:
    port, received = served
    n = len(received)
    assert exchange(port, http("GET", f"/osmand/{SECRET}?{query(**params)}")) == 400
    assert reasons_since(received, n) == [reason]


def test_java_small_numbers_are_numbers(served: Served) -> None:
    port, received = served
    assert exchange(port, http("GET", f"/osmand/{SECRET}?{query(lat='1.0E-4')}")) == 200
    fix = received[-1]
    assert isinstance(fix, Fix) and fix.lat == 1e-4


# The secret first, then a bounded body.


@pytest.mark.parametrize(
    "request_",
    [
        http("GET", f"/osmand/wrong-secret?{query(lat='abc')}"),
        http("GET", "/osmand/wrong-secret?%zz&&==&timestamp=%C2%B2"),
        http("POST", "/osmand/wrong-secret", b"{not json", {"Content-Type": "application/json"}),
        http("POST", f"/osmand/{SECRET}x", b"[" * 5000, {"Content-Type": "application/json"}),
        # Announces a body far over the limit: refused for the secret, not for the size.
        http("POST", "/osmand/wrong-secret", headers={"Content-Length": str(10**12)}),
    ],
)
def test_a_wrong_secret_is_refused_before_anything_is_parsed(
    served: Served, request_: bytes
) -> None:
    port, received = served
    n = len(received)
    assert exchange(port, request_) == 403
    [rejection] = received[n:]
    assert isinstance(rejection, Rejection) and rejection.reason == RejectReason.UNKNOWN_DEVICE


def test_another_devices_secret_is_refused(served: Served) -> None:
    port, received = served
    n = len(received)
    assert exchange(port, http("GET", f"/osmand/{OTHER_SECRET}?{query()}")) == 403
    assert reasons_since(received, n) == ["unknown_device"]


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_over_the_limit_is_413(served: Served, chunked: bool) -> None:
    port, received = served
    body = b"lat=" + b"1" * MAX_PAYLOAD_BYTES
    if chunked:
        half = len(body) // 2
        framed = b"".join(
            f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in (body[:half], body[half:])
        )
        request_ = http(
            "POST", f"/osmand/{SECRET}", framed + b"0\r\n\r\n", {"Transfer-Encoding": "chunked"}
        )
    else:
        request_ = http("POST", f"/osmand/{SECRET}", body)
    n = len(received)
    assert exchange(port, request_) == 413
    assert reasons_since(received, n) == ["too_large"]


def test_a_body_at_the_limit_is_read(served: Served) -> None:
    port, received = served
    form = query().encode() + b"&pad="
    body = form + b"x" * (MAX_PAYLOAD_BYTES - len(form))
    n = len(received)
    assert exchange(port, http("POST", f"/osmand/{SECRET}", body)) == 200
    assert reasons_since(received, n) == ["fix"]


# 5,000 malformed requests.

PATHS = [
    "/",
    "/osmand",
    "/osmand/",
    "/osmand/{s}/extra",
    "/osmand/{s}%2Fx",
    "/OSMAND/{s}",
    "//osmand/{s}",
    "/osmand/../osmand/{s}",
    "/osmand/%2e%2e/{s}",
    "/osmand/%00",
    "/osmand/%ff%fe",
    "/osmand/%ED%A0%80",
    "/osmand/" + "a" * 8000,
    "/osmand/{s}#frag",
    "*",
    "http://127.0.0.1/osmand/{s}",
]
SECRETS = [
    SECRET,
    SECRET,
    SECRET,
    OTHER_SECRET,
    "",
    SECRET + "x",
    SECRET.upper(),
    "x" * 3000,
    quote("sécret①"),
    "%ED%A0%80",
    "%00",
    "%",
]
METHODS = [
    "GET",
    "GET",
    "POST",
    "POST",
    "POST",
    "PUT",
    "DELETE",
    "HEAD",
    "OPTIONS",
    "PATCH",
    "TRACE",
    "get",
    "FOO",
    "G\x01T",
    "GET /x",
    "",
]
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-16",
    "APPLICATION/JSON",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "text/plain",
    "",
    "\x7f",
    "é",
]
VERSIONS = ["HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/9.9", "HTTP/1", ""]
HEADERS = [
    "X-Big: " + "v" * 20000,
    "X-Many: 1\r\n" * 200,
    "No-Colon",
    "Content-Length: -1",
    "Content-Length: abc",
    "Content-Length: 5\r\nContent-Length: 6",
    "Transfer-Encoding: gzip",
    "Transfer-Encoding: chunked\r\nContent-Length: 3",
    "X-Latin: caf\xe9",
    " Leading: space",
    "Expect: 100-continue",
]


def malformed_requests(seed: int, count: int) -> Iterator[tuple[bytes, bool]]:
    """Requests, each (bytes, whether the client then half-closes: a body announced and not
    sent). Every part may be wrong: path, secret, method, version, query, headers, body."""
    rng = random.Random(seed)
    t_recv = now()
    fuzz = {t.name: t for t in targets(t_recv)}
    query_target, json_target = fuzz["osmand_query"], fuzz["traccar_json"]
    for _ in range(count):
        # Each part is right more often than not, so that most requests reach the decoder.
        secret = SECRET if rng.random() < 0.6 else rng.choice(SECRETS)
        path = "/osmand/{s}" if rng.random() < 0.7 else rng.choice(PATHS)
        path = path.replace("{s}", secret)
        r = rng.random()
        if r < 0.5:
            sample = rng.choice(query_target.samples)
            q = mutate(rng, sample, query_target.samples, "query").decode("latin-1")
        elif r < 0.7:
            q = "&".join(
                f"{rng.choice(['lat', 'lon', 'id', 'timestamp', 'x'])}={rng.choice(QUERY_TOKENS)}"
                for _ in range(rng.randint(1, 6))
            )
        elif r < 0.8:  # huge and unicode values, escaped
            text = "".join(
                chr(rng.choice([0x31, 0xB2, 0x2460, 0x661, 0xFF11, 0x1F600, 0xE9]))
                for _ in range(rng.randint(1, 3000))
            )
            q = query(**{rng.choice(["lat", "timestamp", "id", "x"]): text})
            q = q if rng.random() < 0.8 else q.replace("%", "")
        else:
            q = ""
        target = path + ("?" + q if q else "")
        method = rng.choice(["GET", "POST"]) if rng.random() < 0.85 else rng.choice(METHODS)
        version = "HTTP/1.1" if rng.random() < 0.9 else rng.choice(VERSIONS)
        headers = ["Host: 127.0.0.1", "Connection: close"]
        if rng.random() < 0.1:
            headers.remove("Host: 127.0.0.1")
        body = b""
        half_close = False
        if rng.random() < 0.1:
            extra = rng.choice(HEADERS)
            headers.append(extra)
            # One that announces a body may leave the server waiting for it: the client goes.
            half_close = "Content-Length" in extra or "Transfer-Encoding" in extra
        r = rng.random()
        if r < 0.3:
            body = mutate(rng, rng.choice(json_target.samples), json_target.samples, "json")
        elif r < 0.45:
            sample = rng.choice(query_target.samples)
            body = mutate(rng, sample, query_target.samples, "query")
        elif r < 0.55:
            body = rng.randbytes(rng.randint(1, 2000))
        if body or rng.random() < 0.1:
            headers.append(f"Content-Type: {rng.choice(CONTENT_TYPES)}")
        framing = rng.random()
        if body and framing < 0.1:
            headers.append("Transfer-Encoding: chunked")
            cut = rng.randrange(len(body) + 1)
            body = (
                b"".join(
                    f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in (body[:cut], body[cut:]) if p
                )
                + b"0\r\n\r\n"
            )
            if rng.random() < 0.2:  # a wrong chunk size
                body = b"zz\r\n" + body
        elif body and framing < 0.15:  # announces more than it sends
            headers.append(f"Content-Length: {len(body) + rng.randint(1, 100)}")
            half_close = True
        elif body and framing < 0.2:  # announces a huge body
            headers.append(f"Content-Length: {rng.choice([10**6, 10**9, 10**12, 2**64])}")
            half_close = True
        elif body:
            headers.append(f"Content-Length: {len(body)}")
        head = f"{method} {target} {version}\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n"
        yield head.encode("utf-8", "surrogateescape") + body, half_close


class Errors(logging.Handler):
    """The server's log records at ERROR and above (an exception in the app, a 500)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_5000_malformed_requests_never_get_a_5xx(served: Served) -> None:
    port, received = served
    n = len(received)
    statuses: Counter[int | None] = Counter()
    errors = Errors()
    server_log = logging.getLogger("uvicorn.error")
    server_log.addHandler(errors)
    try:
        for request_, half_close in malformed_requests(17, MALFORMED_REQUESTS):
            statuses[exchange(port, request_, half_close=half_close)] += 1
        time.sleep(0.2)  # the last request's log, if any
    finally:
        server_log.removeHandler(errors)
    print("status codes of", MALFORMED_REQUESTS, "malformed requests:", dict(statuses))
    # Nothing in the app raised, not even while the server closed a connection under it.
    assert [r.getMessage() for r in errors.records] == []
    assert sum(statuses.values()) == MALFORMED_REQUESTS
    assert not [s for s in statuses if s is not None and s >= 500], statuses
    # The generator reaches every answer of the input, fixes included.
    assert {200, 400, 403, 404, 405, 413} <= set(statuses), statuses
    # What reached the decoder was rejected with a specific reason, never internal_error.
    reasons = Counter(reasons_since(received, n))
    print("fixes and rejections:", dict(reasons))
    assert reasons["internal_error"] == 0, reasons


# A 400 MB body, against a server process of its own.

SERVE = """
import sys, time
from ingest.http_server import HttpServer
from ingest.osmand import make_app
devices = [("phone-42", {"osmand": {"id": "48241179", "secret": sys.argv[1]}})]
server = HttpServer(make_app(devices, lambda item: None, time.time), "127.0.0.1", 0)
server.start()
print(server.port, flush=True)
sys.stdin.read()
server.stop()
"""


def memory_of(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (its peak) of a process, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def stream_body(port: int, head: bytes, chunked: bool) -> tuple[int | None, int]:
    """Send ``head``, then up to 400 MB of body in 1 MiB chunks until the server answers or
    closes; return the status and how many body bytes went out."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
    response = bytearray()

    def read() -> None:
        try:
            while b"\r\n" not in response:
                data = sock.recv(65536)
                if not data:
                    return
                response.extend(data)
        except OSError:
            return

    reader = threading.Thread(target=read)
    reader.start()
    sent = 0
    chunk = b"1" * CHUNK_BYTES
    framed = f"{CHUNK_BYTES:x}\r\n".encode() + chunk + b"\r\n" if chunked else chunk
    try:
        sock.sendall(head)
        while sent < BIG_BODY_BYTES and reader.is_alive():
            select.select([], [sock], [], TIMEOUT_S)
            sock.sendall(framed)
            sent += CHUNK_BYTES
    except OSError:  # the server closed the connection: what it should do
        pass
    finally:
        reader.join(TIMEOUT_S)
        sock.close()
    return status_of(bytes(response)), sent


def test_a_400_mb_body_costs_the_server_under_10_mb() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, SECRET],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        # Warm up: the first requests import and allocate what every request needs.
        for _ in range(20):
            assert exchange(port, http("GET", f"/osmand/{SECRET}?{query()}")) == 200
            assert exchange(port, http("POST", f"/osmand/{SECRET}", b"x=" + b"1" * 1000)) == 400
        time.sleep(0.5)
        before = memory_of(proc.pid)
        results = {}
        for name, secret, chunked in (
            ("wrong secret, Content-Length", "wrong-secret", False),
            ("wrong secret, chunked", "wrong-secret", True),
            ("right secret, Content-Length", SECRET, False),
            ("right secret, chunked", SECRET, True),
        ):
            framing = (
                "Transfer-Encoding: chunked" if chunked else f"Content-Length: {BIG_BODY_BYTES}"
            )
            head = (
                f"POST /osmand/{secret} HTTP/1.1\r\nHost: 127.0.0.1\r\n{framing}\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n\r\n"
            ).encode()
            results[name] = stream_body(port, head, chunked)
        time.sleep(0.5)
        after = memory_of(proc.pid)
        # The server is still there and still answers.
        assert exchange(port, http("GET", f"/osmand/{SECRET}?{query()}")) == 200
    finally:
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()
        proc.wait(TIMEOUT_S)
    print("400 MB bodies (status, body bytes sent):", results)
    print(
        "server memory before/after: VmRSS {:.1f}/{:.1f} MB, VmHWM {:.1f}/{:.1f} MB".format(
            before["VmRSS"] / 2**20,
            after["VmRSS"] / 2**20,
            before["VmHWM"] / 2**20,
            after["VmHWM"] / 2**20,
        )
    )
    assert {name: status for name, (status, _) in results.items()} == {
        "wrong secret, Content-Length": 403,
        "wrong secret, chunked": 403,
        "right secret, Content-Length": 413,
        "right secret, chunked": 413,
    }
    assert after["VmRSS"] - before["VmRSS"] < MEMORY_BUDGET_BYTES
    assert after["VmHWM"] - before["VmHWM"] < MEMORY_BUDGET_BYTES


def test_anything_unexpected_is_a_400_and_an_internal_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The catch-all: here the queue behind the input fails on a fix (a bug, not the
    request's fault); the request is answered 400, and the rejection names the digest."""
    received: list[Fix | Rejection] = []

    def sink(item: Fix | Rejection) -> None:
        if isinstance(item, Fix):
            raise RuntimeError("the queue is broken")
        received.append(item)

    server = HttpServer(make_app(DEVICES, sink, now), "127.0.0.1", 0)
    server.start()
    try:
        with caplog.at_level(logging.WARNING, logger="ingest.rejections"):
            status = exchange(server.port, http("GET", f"/osmand/{SECRET}?{query()}"))
    finally:
        server.stop()
    assert status == 400
    [rejection] = received
    assert isinstance(rejection, Rejection) and rejection.reason == RejectReason.INTERNAL_ERROR
    assert "sha256" in rejection.detail
    [record] = [r for r in caplog.records if r.name == "ingest.rejections"]
    assert "RuntimeError" in record.getMessage() and "50.85" not in record.getMessage()
