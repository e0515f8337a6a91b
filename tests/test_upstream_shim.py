"""The aiohttp shim in kiro_fast.upstream (``install_resume_shim``).

Three kinds of checks:

* the aiohttp behaviour the shim exists for: unpatched aiohttp resumes reading once per
  HTTP chunk it hands out, paused or not. When a release stops doing that, the first test
  fails: the shim can go;
* the guard: the shim is installed on the aiohttp versions it was checked against, and
  only there. An upgrade fails the second test until someone re-checks the read path and
  adds the version (or removes the shim);
* what it must not break: a paused connection is still resumed (and the parser fed what
  it held back), and a body far above the read buffer, read by a slow reader, arrives
  whole.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.streams import StreamReader

from kiro_fast import upstream
from kiro_fast.upstream import RESUME_SHIM, RESUME_SHIM_VERSIONS, install_resume_shim

WAIT_LIMIT = 10.0


class CountingProtocol:
    """What StreamReader calls on its protocol, counted; never paused."""

    def __init__(self) -> None:
        self._reading_paused = False
        self._buffer_paused = False
        self.resumes = 0
        self.pauses = 0

    def resume_reading(self, resume_parser: bool = True) -> None:
        self.resumes += 1

    def pause_reading(self) -> None:
        self.pauses += 1


def test_aiohttp_still_resumes_reading_for_every_chunk_it_hands_out() -> None:
    async def main() -> None:
        protocol = CountingProtocol()
        reader = StreamReader(protocol, 2**16, loop=asyncio.get_running_loop())  # type: ignore[arg-type]
        reader.begin_http_chunk_receiving()
        for chunk in (b"one", b"two", b"three"):
            reader.feed_data(chunk)
            reader.end_http_chunk_receiving()
        assert await reader.readany() == b"onetwothree"
        assert protocol.pauses == 0
        # Three chunks handed out, never paused: three resume calls. Fewer means aiohttp
        # fixed this, and install_resume_shim is no longer needed.
        assert protocol.resumes == 3

    asyncio.run(main())


def test_the_shim_is_installed_exactly_on_checked_aiohttp_versions() -> None:
    assert aiohttp.__version__ in RESUME_SHIM_VERSIONS, (
        f"aiohttp {aiohttp.__version__} is not a version install_resume_shim was checked "
        "against: re-check StreamReader._read_nowait_chunk and ResponseHandler."
        "resume_reading, then add it to RESUME_SHIM_VERSIONS or remove the shim"
    )
    assert RESUME_SHIM is True
    assert getattr(ResponseHandler.resume_reading, "_kiro_fast_resume_shim", False)
    assert install_resume_shim() is True  # idempotent: not wrapped twice
    assert not getattr(
        ResponseHandler.resume_reading.__wrapped__,  # type: ignore[attr-defined]
        "_kiro_fast_resume_shim",
        False,
    )


def test_unchecked_versions_run_unpatched(monkeypatch: Any) -> None:
    monkeypatch.setattr(upstream.aiohttp, "__version__", "0.0.0-unchecked")
    before = ResponseHandler.resume_reading
    assert install_resume_shim() is False
    assert ResponseHandler.resume_reading is before


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.resumed = 0
        self.paused = 0

    def pause_reading(self) -> None:
        self.paused += 1

    def resume_reading(self) -> None:
        self.resumed += 1

    def is_closing(self) -> bool:
        return False


class RecordingParser:
    def __init__(self) -> None:
        self.fed: list[bytes] = []
        self.paused = 0

    def feed_data(self, data: bytes) -> tuple[list[Any], bool, bytes]:
        self.fed.append(data)
        return [], False, b""

    def pause_reading(self) -> None:
        self.paused += 1


def make_handler() -> tuple[ResponseHandler, RecordingTransport, RecordingParser]:
    handler = ResponseHandler(asyncio.get_running_loop())
    transport = RecordingTransport()
    handler.connection_made(transport)
    parser = RecordingParser()
    handler._parser = parser
    return handler, transport, parser


def test_an_unpaused_connection_is_left_alone() -> None:
    async def main() -> None:
        handler, transport, parser = make_handler()
        handler.resume_reading()
        assert parser.fed == []
        assert transport.resumed == 0

    asyncio.run(main())


def test_a_paused_connection_is_resumed_and_its_parser_fed() -> None:
    async def main() -> None:
        handler, transport, parser = make_handler()
        handler._payload = object()  # type: ignore[assignment]
        handler.pause_reading()
        assert handler._reading_paused and transport.paused == 1 and parser.paused == 1
        handler.resume_reading()
        assert not handler._reading_paused
        assert parser.fed == [b""]  # what the parser held back is processed
        assert transport.resumed == 1

    asyncio.run(main())


CHUNK = b"%x\r\n%s\r\n" % (1024, b"z" * 1024)
CHUNKS = 2048  # 2 MiB: 32 times the 64 KiB read buffer


class ChunkedServer(asyncio.Protocol):
    """Answers any request with CHUNKS chunks of 1 KiB, as fast as the socket takes them."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.sent = False

    def data_received(self, data: bytes) -> None:
        if self.sent or b"\r\n\r\n" not in data:
            return
        self.sent = True
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        head += b"Transfer-Encoding: chunked\r\n\r\n"
        self.transport.write(head + CHUNK * CHUNKS + b"0\r\n\r\n")  # type: ignore[attr-defined]


def test_a_slow_reader_of_a_long_body_gets_it_whole() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(ChunkedServer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        session = aiohttp.ClientSession(read_bufsize=upstream.READ_BUFSIZE, auto_decompress=False)
        try:
            async with asyncio.timeout(WAIT_LIMIT):
                response = await session.get(f"http://127.0.0.1:{port}/")
                protocol = response.connection.protocol  # type: ignore[union-attr]
                # Read nothing until aiohttp paused the socket: the buffer is full.
                while not protocol._reading_paused:
                    await asyncio.sleep(0.001)
                received = bytearray()
                while chunk := await response.content.readany():
                    received += chunk
                    await asyncio.sleep(0)  # a reader slower than the socket
            response.release()
            assert bytes(received) == b"z" * (1024 * CHUNKS)
        finally:
            await session.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())
