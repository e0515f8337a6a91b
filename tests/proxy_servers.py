"""Two tiny outbound proxies on loopback, so tests can prove traffic went through them.

* :class:`HttpProxy` — an HTTP proxy: ``CONNECT host:port`` tunnels, and absolute-form
  requests (``POST http://host:port/path``, what clients send for plain ``http://``
  targets) forwarded to their origin. Optional Basic ``Proxy-Authorization``; a wrong or
  missing one gets ``407``.
* :class:`Socks5Proxy` — SOCKS5 (RFC 1928) ``CONNECT`` with optional username/password
  authentication (RFC 1929); IPv4, IPv6 and domain-name targets.

Both count the connections they relayed and keep every byte the client sent through
them (``client_bytes``), so a test can check that the refresh, usage and chat requests
really crossed the proxy. Nothing here knows about Kiro.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import struct
from types import TracebackType


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bytearray | None
) -> None:
    try:
        while data := await reader.read(65536):
            if record is not None:
                record += data
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            writer.close()


class _Proxy:
    def __init__(self, username: str | None = None, password: str | None = None) -> None:
        self.username = username
        self.password = password
        #: connections relayed to a target (after authentication)
        self.connections = 0
        #: attempts refused for bad or missing credentials
        self.auth_failures = 0
        #: (host, port) of every relayed connection
        self.targets: list[tuple[str, int]] = []
        #: every byte clients sent towards their targets
        self.client_bytes = bytearray()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> _Proxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError):
            pass
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _relay(
        self,
        host: str,
        port: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        first: bytes = b"",
    ) -> None:
        target_reader, target_writer = await asyncio.open_connection(host, port)
        self.connections += 1
        self.targets.append((host, port))
        if first:
            self.client_bytes += first
            target_writer.write(first)
        await asyncio.gather(
            _pipe(reader, target_writer, self.client_bytes),
            _pipe(target_reader, writer, None),
        )


class HttpProxy(_Proxy):
    """An HTTP proxy (CONNECT tunnels and absolute-form forwarding), Basic auth optional."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _authorized(self, headers: dict[str, str]) -> bool:
        if self.username is None:
            return True
        expected = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return headers.get("proxy-authorization", "") == f"Basic {expected}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        if not self._authorized(headers):
            self.auth_failures += 1
            writer.write(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                b'Proxy-Authenticate: Basic realm="test"\r\ncontent-length: 0\r\n'
                b"connection: close\r\n\r\n"
            )
            await writer.drain()
            return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await self._relay(host.strip("[]"), int(port), reader, writer)
            return
        await self._forward(method, target, version, lines[1:], reader, writer)

    async def _forward(
        self,
        method: str,
        target: str,
        version: str,
        header_lines: list[str],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        if not target.startswith("http://"):
            raise ValueError("only absolute http:// targets are forwarded")
        authority, _, path = target[len("http://") :].partition("/")
        host, _, port = authority.rpartition(":") if ":" in authority else (authority, "", "80")
        kept = [h for h in header_lines if h and not h.lower().startswith("proxy-")]
        first = "\r\n".join([f"{method} /{path} {version}", *kept, "", ""]).encode("latin-1")
        # Later requests on this connection stay in absolute form; origins accept it.
        await self._relay(host, int(port), reader, writer, first)


class Socks5Proxy(_Proxy):
    """A SOCKS5 proxy (CONNECT only), username/password authentication optional."""

    @property
    def url(self) -> str:
        return f"socks5://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        version, count = await reader.readexactly(2)
        methods = await reader.readexactly(count)
        if version != 5:
            return
        wanted = 0x02 if self.username is not None else 0x00
        if wanted not in methods:
            self.auth_failures += 1
            writer.write(b"\x05\xff")
            await writer.drain()
            return
        writer.write(bytes([5, wanted]))
        await writer.drain()
        if wanted == 0x02 and not await self._authenticate(reader, writer):
            return
        host, port = await self._request(reader)
        writer.write(b"\x05\x00\x00\x01" + b"\x00" * 6)
        await writer.drain()
        await self._relay(host, port, reader, writer)

    async def _authenticate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        _version, user_length = await reader.readexactly(2)
        user = (await reader.readexactly(user_length)).decode()
        (password_length,) = await reader.readexactly(1)
        password = (await reader.readexactly(password_length)).decode()
        ok = user == self.username and password == self.password
        writer.write(b"\x01\x00" if ok else b"\x01\x01")
        await writer.drain()
        if not ok:
            self.auth_failures += 1
        return ok

    @staticmethod
    async def _request(reader: asyncio.StreamReader) -> tuple[str, int]:
        _version, command, _reserved, address_type = await reader.readexactly(4)
        if command != 1:
            raise ValueError("only CONNECT is supported")
        if address_type == 1:
            host = str(ipaddress.IPv4Address(await reader.readexactly(4)))
        elif address_type == 4:
            host = str(ipaddress.IPv6Address(await reader.readexactly(16)))
        elif address_type == 3:
            (length,) = await reader.readexactly(1)
            host = (await reader.readexactly(length)).decode()
        else:
            raise ValueError(f"unknown address type {address_type}")
        (port,) = struct.unpack("!H", await reader.readexactly(2))
        return host, port
