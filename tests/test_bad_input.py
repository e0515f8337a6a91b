"""Bad client input against a running kiro_fast: the answers ``docs/errors.md`` promises.

Every row of the table in ``docs/errors.md`` is checked here through real sockets (the
end-to-end harness): status, error shape (Anthropic's on ``/v1/messages``, OpenAI's on
``/v1/chat/completions`` where the HTTP layer answers), error type, message, and whether
the connection stays open. The expected values are read from that table, so the document
and the behaviour cannot drift apart; a row without a test fails
:func:`test_every_row_is_tested`.

Memory is checked where input is large: the harness runs in this process, so its resident
set (``VmRSS`` in ``/proc/self/status``) is the server's. Slow clients (slowloris, a header
flood) are checked to hold only their own connection: a normal request on another one
succeeds while they are in progress.

``/v1/chat/completions`` is not routed yet (issue 7); only the answers the HTTP layer gives
before routing (413, 431 with a parsed head) are checked in OpenAI's shape.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from e2e_harness import API_KEY, Harness, directive
from fake_transport import MockTransport

from kiro_fast.app import error_body
from kiro_fast.protocol import HttpProtocol, Request, ServerOptions, ServerState

TABLE = Path(__file__).parent.parent / "docs" / "errors.md"
MODEL = "claude-sonnet-4-5"
#: The harness's head timeout: short, so the slowloris test is quick (the default is 15 s),
#: long enough for a normal request to finish while slow clients are connected.
HEADER_TIMEOUT = 3.0
#: Generous bound on anything the server must do "at once".
IO_TIMEOUT = 20.0
MIB = 1024 * 1024


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Row:
    id: str
    status: int | None
    error_type: str
    message: str
    connection: str

    def message_regex(self) -> re.Pattern[str]:
        return re.compile(".+".join(re.escape(part) for part in self.message.split("…")))


def load_table() -> dict[str, Row]:
    rows = {}
    for line in TABLE.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 6 or not cells[0].startswith("`"):
            continue
        row_id, _, status, error_type, message, connection = cells
        rows[row_id.strip("`")] = Row(
            id=row_id.strip("`"),
            status=int(status) if status.isdigit() else None,
            error_type=error_type.strip("`"),
            message=message.strip("`"),
            connection=connection,
        )
    return rows


ROWS = load_table()


def row(row_id: str) -> Row:
    return ROWS[row_id]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    with Harness(config={"headerTimeout": HEADER_TIMEOUT}) as running:
        yield running


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    #: the server closed the connection after this answer (else it answered a probe on it)
    closed: bool

    def json(self) -> Any:
        return json.loads(self.body)


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class Client:
    """One raw connection; responses are read from one buffered reader, so bytes of the
    next response read ahead are not lost between responses."""

    def __init__(self, harness: Harness) -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", harness.runtime.port), timeout=IO_TIMEOUT
        )
        self.reader = self.sock.makefile("rb")

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.reader.close()
        self.sock.close()

    def makefile(self, mode: str) -> Any:  # what http.client.HTTPResponse reads from
        return _Unclosable(self.reader)

    def send(self, raw: bytes) -> int:
        """Send ``raw``; returns how much went out before the server stopped reading."""
        try:
            self.sock.sendall(raw)
        except OSError:
            return 0  # refused before it was all sent; the answer is still there to read
        return len(raw)

    def response(self, method: str = "POST") -> tuple[int, dict[str, str], bytes]:
        response = http.client.HTTPResponse(self, method=method)  # type: ignore[arg-type]
        response.begin()
        content = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, content

    def answer(self, method: str = "POST") -> Answer:
        """The next response, then whether the connection is still usable."""
        status, headers, content = self.response(method)
        return Answer(status, headers, content, self.closed_after(headers))

    def closed_after(self, headers: dict[str, str]) -> bool:
        if headers.get("connection") == "close":
            try:
                return self.reader.read(1) == b""
            except ConnectionResetError:
                return True
        self.send(b"GET /health HTTP/1.1\r\nHost: kiro\r\n\r\n")
        status, _, _ = self.response("GET")
        return status != 200


class _Unclosable:
    """The shared reader, minus ``close()``: HTTPResponse closes its file after a body."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)

    def close(self) -> None:
        pass


def connect(harness: Harness) -> socket.socket:
    return socket.create_connection(("127.0.0.1", harness.runtime.port), timeout=IO_TIMEOUT)


def send(harness: Harness, raw: bytes) -> Answer:
    with Client(harness) as client:
        client.send(raw)
        return client.answer()


def head(path: str, body_length: int | None, extra: str = "", key: bool = True) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: kiro", "Content-Type: application/json"]
    if key:
        lines.append(f"x-api-key: {API_KEY}")
    if body_length is not None:
        lines.append(f"Content-Length: {body_length}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def post(harness: Harness, body: bytes, path: str = "/v1/messages", **kwargs: Any) -> Answer:
    return send(harness, head(path, len(body), **kwargs) + body)


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def user(text: str = "hi") -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def assert_row(answer: Answer, expected: Row, shape: str = "anthropic") -> None:
    assert answer.status == expected.status, answer.body[:300]
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["x-request-id"]
    data = answer.json()
    if shape == "anthropic":
        assert data["type"] == "error"
        assert set(data) == {"type", "error"}
        error = data["error"]
        assert error["type"] == expected.error_type
    else:
        assert set(data) == {"error"}
        error = data["error"]
        openai_type = {"request_too_large": "invalid_request_error"}.get(
            expected.error_type, expected.error_type
        )
        assert error["type"] == openai_type
        assert error["param"] is None and error["code"] is None
    assert expected.message_regex().fullmatch(error["message"]), error["message"]
    if expected.connection.startswith("closed"):
        assert answer.headers.get("connection") == "close"
        assert answer.closed
    else:
        assert expected.connection == "kept"
        assert not answer.closed


# --------------------------------------------------------------------------- request bodies

BODY_CASES = {
    "malformed-json": b'{"model": ',
    "empty-body": b"",
    "not-an-object": b'["model"]',
    "invalid-utf8": b'{"model":"%s","messages":[{"role":"user","content":"\xff\xfe"}]}'
    % MODEL.encode(),
    "lone-surrogate": b'{"model":"%s","messages":[{"role":"user","content":"\\ud800"}]}'
    % MODEL.encode(),
    "missing-model": body(messages=user()),
    "wrong-type-model": body(model=5, messages=user()),
    "unknown-model": body(model="gpt-banana", messages=user()),
    "missing-messages": body(model=MODEL, max_tokens=5),
    "wrong-type-messages": body(model=MODEL, messages="hi"),
    "missing-role": body(model=MODEL, messages=[{"content": "hi"}]),
    "wrong-type-content": body(model=MODEL, messages=[{"role": "user", "content": 5}]),
    "no-user-message": body(model=MODEL, messages=[{"role": "assistant", "content": "hi"}]),
    "wrong-type-tools": body(model=MODEL, tools={}, messages=user()),
    "wrong-type-thinking": body(model=MODEL, thinking="on", messages=user()),
    "too-long": body(model=MODEL, messages=user("a" * 3_000_000)),
}


@pytest.mark.parametrize("case", sorted(BODY_CASES))
def test_bad_body_gets_the_documented_answer(harness: Harness, case: str) -> None:
    assert_row(post(harness, BODY_CASES[case]), row(case))


@pytest.mark.parametrize("payload", [b'"x"', b"null", b"42"])
def test_every_non_object_json_gets_the_same_answer(harness: Harness, payload: bytes) -> None:
    assert_row(post(harness, payload), row("not-an-object"))


def test_deep_nesting_is_refused_by_the_parser_without_recursion(harness: Harness) -> None:
    levels = 100_000
    nested = b"[" * levels + b"]" * levels
    before = rss_bytes()
    assert_row(
        post(harness, b'{"model":"%s","messages":%s}' % (MODEL.encode(), nested)),
        row("deep-nesting"),
    )
    assert_row(post(harness, nested), row("deep-nesting"))
    assert rss_bytes() - before < 16 * MIB


def test_a_deep_value_inside_the_request_is_a_400(harness: Harness) -> None:
    deep = json.loads("[" * 500 + "]" * 500)
    messages = [
        *user(),
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "x", "input": {"a": deep}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}],
        },
    ]
    raw = json.dumps({"model": MODEL, "messages": messages}).encode()
    assert_row(post(harness, raw), row("deep-value"))


def test_ignored_fields_of_any_type_are_accepted(harness: Harness) -> None:
    raw = body(
        model=MODEL,
        max_tokens="lots",
        temperature=[1],
        stop_sequences=5,
        surprise={"a": 1},
        messages=user(directive({"text": "fine"})),
    )
    answer = post(harness, raw, extra="Content-Type: text/plain\r\n")
    assert answer.status == 200
    assert answer.json()["content"] == [{"type": "text", "text": "fine"}]


# --------------------------------------------------------------------------- routing and keys


def test_missing_api_key(harness: Harness) -> None:
    assert_row(post(harness, body(model=MODEL, messages=user()), key=False), row("missing-api-key"))


@pytest.mark.parametrize("key", [b"wrong", b"\xff\xfe\xc3(k"], ids=["ascii", "non-ascii"])
def test_wrong_api_key(harness: Harness, key: bytes) -> None:
    raw = body(model=MODEL, messages=user())
    answer = send(
        harness,
        head("/v1/messages", len(raw), key=False).replace(
            b"\r\n\r\n", b"\r\nx-api-key: " + key + b"\r\n\r\n"
        )
        + raw,
    )
    assert_row(answer, row("wrong-api-key"))


def test_unknown_path(harness: Harness) -> None:
    assert_row(post(harness, b"{}", path="/v1/nothing"), row("unknown-path"))


def test_wrong_method(harness: Harness) -> None:
    raw = f"GET /v1/messages HTTP/1.1\r\nHost: kiro\r\nx-api-key: {API_KEY}\r\n\r\n".encode()
    with Client(harness) as client:
        client.send(raw)
        assert_row(client.answer("GET"), row("wrong-method"))


# --------------------------------------------------------------------------- size limits


def offer(client: Client, total: int, piece: bytes = b"x" * MIB) -> int:
    """Send ``piece`` until ``total`` bytes went out or the server stopped reading."""
    sent = 0
    while sent < total:
        if not client.send(piece):
            break
        sent += len(piece)
    return sent


def test_declared_oversized_body_is_refused_from_its_head(harness: Harness) -> None:
    total = 100 * 1000 * 1000
    before = rss_bytes()
    with Client(harness) as client:
        client.send(head("/v1/messages", total))
        sent = offer(client, total)
        answer = client.answer()
    assert_row(answer, row("body-too-large"))
    assert sent < total  # the server stopped reading, the client could not send it all
    assert rss_bytes() - before < 8 * MIB


def test_declared_oversized_body_in_openai_shape(harness: Harness) -> None:
    with Client(harness) as client:
        client.send(head("/v1/chat/completions", 100 * 1000 * 1000))
        answer = client.answer()
    assert_row(answer, row("body-too-large"), shape="openai")


def test_chunked_body_is_refused_once_past_the_cap(harness: Harness) -> None:
    cap = harness.config.max_body_size
    before = rss_bytes()
    with Client(harness) as client:
        client.send(head("/v1/messages", None, "Transfer-Encoding: chunked\r\n"))
        offer(client, cap + 8 * MIB, b"%x\r\n%s\r\n" % (MIB, b"y" * MIB))
        answer = client.answer()
    assert_row(answer, row("body-too-large-chunked"))
    assert rss_bytes() - before < cap + 16 * MIB


def test_oversized_head_is_refused_after_64_kib(harness: Harness) -> None:
    before = rss_bytes()
    with Client(harness) as client:
        client.send(b"POST /v1/messages HTTP/1.1\r\nHost: kiro\r\nX-Big: ")
        sent = offer(client, 100 * MIB)
        answer = client.answer()
    assert_row(answer, row("head-too-large"))
    assert sent < 100 * MIB
    assert rss_bytes() - before < 8 * MIB


def flood_head(path: str, fields: int) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: kiro", "Content-Length: 2"]
    lines += [f"X-Flood-{i}: {i}" for i in range(fields)]
    return ("\r\n".join(lines) + "\r\n\r\n{}").encode()


@pytest.mark.parametrize(
    ("path", "shape"), [("/v1/messages", "anthropic"), ("/v1/chat/completions", "openai")]
)
def test_header_flood_is_refused(harness: Harness, path: str, shape: str) -> None:
    assert_row(send(harness, flood_head(path, 500)), row("header-flood"), shape)


# --------------------------------------------------------------------------- framing


def test_bytes_that_are_not_http(harness: Harness) -> None:
    assert_row(
        send(harness, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64),
        row("malformed-http"),
    )


def test_pipelined_garbage_after_a_valid_request(harness: Harness) -> None:
    raw = body(model=MODEL, messages=user(directive({"text": "first"})))
    with Client(harness) as client:
        client.send(head("/v1/messages", len(raw)) + raw + b"\x00\x01 not http\r\n\r\n")
        status, _, content = client.response()
        assert status == 200
        assert json.loads(content)["content"][0]["text"] == "first"
        assert_row(client.answer(), row("pipelined-garbage"))


def test_unsupported_transfer_coding(harness: Harness) -> None:
    assert_row(
        send(harness, head("/v1/messages", None, "Transfer-Encoding: gzip\r\n")),
        row("bad-transfer-coding"),
    )


def test_connect_is_refused(harness: Harness) -> None:
    assert_row(
        send(
            harness,
            b"CONNECT api.anthropic.com:443 HTTP/1.1\r\nHost: api.anthropic.com:443\r\n\r\n",
        ),
        row("connect"),
    )


def test_stalled_body_gets_408() -> None:
    """The body timeout is not configurable (60 s), so this one runs the HTTP layer on a
    mock transport with a short timeout, and kiro_fast's own error renderer."""

    async def never_called(request: Request, exchange: Any) -> None:
        raise AssertionError("a request without its body reached the app")

    async def main() -> bytes:
        options = ServerOptions(body_timeout=0.05, access_log=False, error_body=error_body)
        proto = HttpProtocol(never_called, options, ServerState())
        transport = MockTransport().connect(proto)
        transport.feed(head("/v1/messages", 100) + b'{"model":')
        await transport.wait_closed()
        return bytes(transport.buffer)

    raw = asyncio.run(main())
    status_line, _, rest = raw.partition(b"\r\n")
    headers, _, payload = rest.partition(b"\r\n\r\n")
    expected = row("stalled-body")
    fields = dict(line.split(b": ", 1) for line in headers.split(b"\r\n"))
    answer = Answer(
        int(status_line.split()[1]),
        {k.decode().lower(): v.decode() for k, v in fields.items()},
        payload,
        True,
    )
    assert_row(answer, expected)


# --------------------------------------------------------------------------- slow clients


def normal_request(harness: Harness, text: str) -> str:
    raw = body(model=MODEL, messages=user(directive({"text": text})))
    answer = post(harness, raw)
    assert answer.status == 200
    return str(answer.json()["content"][0]["text"])


def open_connections(harness: Harness) -> int:
    return int(harness.call(lambda: len(harness.runtime.server.state.connections)))


def test_slowloris_is_dropped_and_others_are_served_meanwhile(harness: Harness) -> None:
    expected = row("slowloris")
    assert expected.status is None
    clients = [connect(harness) for _ in range(50)]
    try:
        for sock in clients:
            sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: kiro\r\nX-Slow: ")
        harness.wait_for(lambda: len(harness.runtime.server.state.connections) >= 50)
        assert normal_request(harness, "served") == "served"
        assert open_connections(harness) >= 50  # the slow ones were still there meanwhile
        for sock in clients:
            sock.settimeout(HEADER_TIMEOUT + IO_TIMEOUT)
            try:
                data = sock.recv(4096)
            except ConnectionResetError:
                data = b""
            assert data == b"", "a slowloris client got an answer"
    finally:
        for sock in clients:
            sock.close()


def test_header_flood_in_progress_does_not_block_others(harness: Harness) -> None:
    """Half a head's worth of header lines, a normal request, then the rest of the flood."""
    expected = row("head-too-large")
    with Client(harness) as flooder:
        flooder.send(b"POST /v1/messages HTTP/1.1\r\nHost: kiro\r\n")
        lines = b"".join(b"X-Flood-%d: %s\r\n" % (i, b"v" * 40) for i in range(5000))
        flooder.send(lines[: 32 * 1024])
        assert normal_request(harness, "still here") == "still here"
        flooder.send(lines[32 * 1024 :])
        assert_row(flooder.answer(), expected)


def test_server_is_idle_after_the_bad_input(harness: Harness) -> None:
    harness.wait_for(lambda: not harness.runtime.server.state.tasks)
    assert normal_request(harness, "fine") == "fine"


def test_every_row_is_tested() -> None:
    source = Path(__file__).read_text()
    checked = set(re.findall(r'row\("([a-z0-9-]+)"\)', source)) | set(BODY_CASES)
    assert checked == set(ROWS)
