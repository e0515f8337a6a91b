"""A socket-free transport for protocol tests.

:class:`MockTransport` records what a protocol writes and whether it paused reading,
changed its write limits or closed. Like real transports it reports ``connection_lost``
from the loop (``call_soon``), not from inside ``close()``. Tests wait on conditions
(``wait_for``, ``wait_closed``) with a bound, never on sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

WAIT_LIMIT = 5.0


class MockTransport(asyncio.Transport):
    def __init__(self, peername: Any = ("127.0.0.1", 50123), *, stall_close: bool = False) -> None:
        super().__init__()
        self.protocol: asyncio.Protocol | None = None
        self.peername = peername
        #: a client that reads nothing: close() waits for a flush that never comes, and
        #: only abort() ends the connection
        self.stall_close = stall_close
        self.lost = False
        self.buffer = bytearray()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False
        self.reading = True
        self.write_limits: tuple[int | None, int | None] | None = None
        self._changed = asyncio.Event()
        self._closed_event = asyncio.Event()

    # -- driving the protocol, as the loop would

    def connect(self, protocol: asyncio.Protocol) -> MockTransport:
        self.protocol = protocol
        protocol.connection_made(self)
        return self

    def feed(self, data: bytes) -> None:
        assert self.protocol is not None
        assert self.reading, "the protocol paused reading; a real transport would not deliver"
        self.protocol.data_received(data)

    def client_disconnect(self) -> None:
        """The peer reset the connection."""
        self._lose(ConnectionResetError("connection reset by peer"))

    def take(self) -> bytes:
        """Everything written so far, clearing the buffer."""
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    async def wait_for(
        self, predicate: Callable[[MockTransport], bool], timeout: float = WAIT_LIMIT
    ) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()

    async def wait_bytes(self, marker: bytes, timeout: float = WAIT_LIMIT) -> None:
        await self.wait_for(lambda t: marker in t.buffer, timeout)

    async def wait_closed(self, timeout: float = WAIT_LIMIT) -> None:
        async with asyncio.timeout(timeout):
            await self._closed_event.wait()

    # -- the transport API

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "write after close"
        self.buffer += data
        self.writes.append(bytes(data))
        self._changed.set()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def close(self) -> None:
        if self.stall_close:
            self.closed = True
            self._changed.set()
        else:
            self._lose(None)

    def abort(self) -> None:
        self.aborted = True
        self._lose(None)

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False
        self._changed.set()

    def resume_reading(self) -> None:
        self.reading = True
        self._changed.set()

    def is_reading(self) -> bool:
        return self.reading

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.write_limits = (high, low)

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self.peername}.get(name, default)

    def _lose(self, exc: Exception | None) -> None:
        if self.lost:
            return
        self.lost = True
        self.closed = True
        self._changed.set()
        self._closed_event.set()
        if self.protocol is not None:
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, exc)
