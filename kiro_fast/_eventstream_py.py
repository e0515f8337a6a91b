"""AWS event-stream codec, pure Python: the specification the Cython decoder follows.

Wire format (``application/vnd.amazon.eventstream``; spec kiro-api.md §6.2)::

    offset  size  field
    0       4     total_length    uint32 BE, the whole message including both CRCs
    4       4     headers_length  uint32 BE
    8       4     prelude_crc     CRC-32 of bytes [0, 8)
    12      H     headers         repeated: u8 name_len, name, u8 type, value
    12+H    P     payload         P = total_length - H - 16
    T-4     4     message_crc     CRC-32 of bytes [0, T-4)

The CRC is the IEEE CRC-32 that :func:`zlib.crc32` computes. Header value types:
0 true, 1 false, 2 int8, 3 int16, 4 int32, 5 int64, 6 bytes (u16 length),
7 string (u16 length, UTF-8), 8 timestamp (int64 ms), 9 uuid (16 bytes).

Strategy, shared with ``_eventstream.pyx``:

* Only the bytes of the next, incomplete message are kept between feeds. A feed
  arriving with nothing pending is parsed in place, without a copy; otherwise it is
  appended to the pending bytes, and parsed only once they reach the ``total_length``
  of the message they start. Every byte is thus copied a bounded number of times and
  feeding is amortised O(n) however the bytes are split (h11's ``_receivebuffer``
  explains why that matters).
* The prelude is checked as soon as its 12 bytes are in: a corrupt length raises at
  once instead of waiting for bytes that will never come. Prelude checks run in the
  order CRC, too short, too large, headers length; the message CRC is checked before
  the header block is parsed.
* Upstream frames of one stream carry byte-identical header blocks, so the last
  parsed block is kept and reused when the next one matches, together with its
  ``:event-type``/``:message-type``/``:exception-type`` values. Messages built from
  the same block share one ``headers`` dict: treat it as read-only.
* Errors are terminal: once a feed raised, the decoder holds no bytes and raises the
  same error again from ``feed`` and ``feed_eof``.

Python-specific: the pending bytes are a ``bytearray`` that is copied into ``bytes``
once per parse, because slicing ``bytes`` (for CRCs and payloads) is cheaper than
slicing a ``bytearray`` or a ``memoryview``; per-message work avoids method lookups
and ``Message.__init__`` (see ``_parse``).

This module must not import asyncio or anything that does I/O.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from typing import Any, Final

from .errors import (
    DuplicateHeader,
    EventStreamError,
    InvalidHeader,
    InvalidHeadersLength,
    MessageChecksumMismatch,
    MessageTooLarge,
    MessageTooShort,
    PreludeChecksumMismatch,
    TruncatedStream,
)

#: prelude (12) + message CRC (4): an empty message.
MIN_MESSAGE_SIZE: Final = 16
#: AWS's own cap on a frame (kiro.rs uses the same); a bigger length is corrupt.
DEFAULT_MAX_MESSAGE_SIZE: Final = 16 * 1024 * 1024
#: AWS caps the header block at 128 KiB (botocore's limit too).
MAX_HEADERS_LENGTH: Final = 128 * 1024

HeaderValue = bool | int | bytes | str | uuid.UUID

_PRELUDE: Final = struct.Struct("!III")
_U32: Final = struct.Struct("!I")
_I8: Final = struct.Struct("!b")
_I16: Final = struct.Struct("!h")
_I32: Final = struct.Struct("!i")
_I64: Final = struct.Struct("!q")
_U16: Final = struct.Struct("!H")
_unpack_prelude: Final = _PRELUDE.unpack_from
_unpack_u32: Final = _U32.unpack_from
_crc32: Final = zlib.crc32
_new: Final = object.__new__


class Message:
    """One decoded event-stream message.

    ``event_type``, ``message_type`` and ``exception_type`` are the values of the
    ``:event-type``, ``:message-type`` and ``:exception-type`` headers (``None``
    when absent), looked up once.
    """

    __slots__ = ("headers", "payload", "event_type", "message_type", "exception_type")

    def __init__(self, headers: dict[str, HeaderValue], payload: bytes) -> None:
        self.headers = headers
        self.payload = payload
        self.event_type: Any
        self.message_type: Any
        self.exception_type: Any
        self.event_type, self.message_type, self.exception_type = _lookup_types(headers)

    def __eq__(self, other: object) -> bool:
        if not hasattr(other, "headers") or not hasattr(other, "payload"):
            return NotImplemented
        return bool(self.headers == other.headers and self.payload == other.payload)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Message(headers={self.headers!r}, payload={self.payload!r})"


def decode_headers(block: bytes) -> dict[str, HeaderValue]:
    """Parse one header block; raise :class:`InvalidHeader` on any malformation."""
    headers: dict[str, HeaderValue] = {}
    pos = 0
    end = len(block)
    while pos < end:
        name_len = block[pos]
        pos += 1
        if name_len == 0:
            raise InvalidHeader("header name is empty")
        if pos + name_len + 1 > end:
            raise InvalidHeader("header name runs past the header block")
        try:
            name = block[pos : pos + name_len].decode()
        except UnicodeDecodeError:
            raise InvalidHeader("header name is not valid utf-8") from None
        pos += name_len
        kind = block[pos]
        pos += 1
        value: HeaderValue
        if kind == 7 or kind == 6:
            if pos + 2 > end:
                raise InvalidHeader(f"header {name!r}: length runs past the header block")
            (size,) = _U16.unpack_from(block, pos)
            pos += 2
            if pos + size > end:
                raise InvalidHeader(f"header {name!r}: value runs past the header block")
            raw = block[pos : pos + size]
            pos += size
            if kind == 7:
                try:
                    value = raw.decode()
                except UnicodeDecodeError:
                    raise InvalidHeader(f"header {name!r}: value is not valid utf-8") from None
            else:
                value = raw
        elif kind == 0:
            value = True
        elif kind == 1:
            value = False
        else:
            width, unpacker = _FIXED.get(kind, (0, None))
            if unpacker is None:
                raise InvalidHeader(f"header {name!r}: unknown value type {kind}")
            if pos + width > end:
                raise InvalidHeader(f"header {name!r}: value runs past the header block")
            if kind == 9:
                value = uuid.UUID(bytes=block[pos : pos + 16])
            else:
                value = unpacker.unpack_from(block, pos)[0]
            pos += width
        if name in headers:
            raise DuplicateHeader(name)
        headers[name] = value
    return headers


_FIXED: Final[dict[int, tuple[int, Any]]] = {
    2: (1, _I8),
    3: (2, _I16),
    4: (4, _I32),
    5: (8, _I64),
    8: (8, _I64),
    9: (16, True),
}


def _lookup_types(headers: dict[str, HeaderValue]) -> tuple[Any, Any, Any]:
    """The values a Message exposes as event_type, message_type, exception_type."""
    get = headers.get
    return get(":event-type"), get(":message-type"), get(":exception-type")


class EventStreamDecoder:
    """Incremental decoder: ``feed()`` bytes as they arrive, get complete messages.

    Args:
        max_message_size: frames whose ``total_length`` exceeds this raise
            :class:`MessageTooLarge` as soon as their prelude arrives.
    """

    __slots__ = ("_buf", "_max", "_need", "_error", "_last_block", "_last_headers", "_last_types")

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        if max_message_size < MIN_MESSAGE_SIZE:
            raise ValueError(f"max_message_size must be at least {MIN_MESSAGE_SIZE}")
        #: the bytes of the next, incomplete message
        self._buf = bytearray()
        self._max = max_message_size
        #: total_length of the message whose prelude was checked, 0 if none yet
        self._need = 0
        self._error: EventStreamError | None = None
        self._last_block = b""
        self._last_headers: dict[str, HeaderValue] = {}
        #: its :event-type, :message-type and :exception-type values
        self._last_types: tuple[Any, Any, Any] = (None, None, None)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as part of a message."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Add bytes; return every message they complete (possibly none).

        Raises:
            EventStreamError: a subclass naming the fault. Its ``messages`` holds
                the messages completed by this call before the fault.
        """
        if self._error is not None:
            raise self._error
        buf = self._buf
        out: list[Message] = []
        if buf or type(data) is not bytes:
            buf += data
            if len(buf) < self._need:
                return out
            # One copy per parse (see the module docstring); a message still short of its
            # total_length is neither parsed nor copied again, so feeding stays O(n).
            data = bytes(buf)
            buf.clear()
        # else nothing is pending: parse the caller's bytes where they are.
        try:
            used = self._parse(data, out)
        except EventStreamError as exc:
            exc.messages = list(out)
            self._error = exc
            raise
        if used < len(data):
            buf += memoryview(data)[used:]
        return out

    def feed_eof(self) -> None:
        """Declare the end of the stream.

        Raises:
            TruncatedStream: part of a message is still buffered.
        """
        if self._error is not None:
            raise self._error
        if self.buffered:
            raise TruncatedStream(f"stream ended inside a message ({self.buffered} bytes buffered)")

    def _parse(self, buf: bytes, out: list[Message]) -> int:
        """Append the messages complete in ``buf`` to ``out``; return the bytes used."""
        # Module-level aliases and unpacked state: in the one-message-per-feed case,
        # binding methods to locals would cost more than it saves.
        max_size = self._max
        need = self._need
        block = self._last_block
        headers = self._last_headers
        event_type, message_type, exception_type = self._last_types
        pos = 0
        end = len(buf)
        while end - pos >= 12:
            total, headers_len, prelude_crc = _unpack_prelude(buf, pos)
            if not need:
                if (
                    _crc32(buf[pos : pos + 8]) != prelude_crc
                    or total < MIN_MESSAGE_SIZE
                    or total > max_size
                    or headers_len > total - MIN_MESSAGE_SIZE
                    or headers_len > MAX_HEADERS_LENGTH
                ):
                    self._check_prelude(buf, pos, total, headers_len, prelude_crc)
                need = total
            if end - pos < total:
                break
            stop = pos + total - 4
            computed = _crc32(buf[pos + 8 : stop], prelude_crc)
            (expected,) = _unpack_u32(buf, stop)
            if computed != expected:
                raise MessageChecksumMismatch(expected, computed)
            body = pos + 12
            if headers_len != len(block) or not buf.startswith(block, body):
                block = buf[body : body + headers_len]
                headers = decode_headers(block)
                self._last_block = block
                self._last_headers = headers
                self._last_types = _lookup_types(headers)
                event_type, message_type, exception_type = self._last_types
            # Message(headers, payload) without the call to __init__ and its three
            # lookups: the values are the same for every message of one header block.
            message = _new(Message)
            message.headers = headers
            message.payload = buf[body + headers_len : stop]
            message.event_type = event_type
            message.message_type = message_type
            message.exception_type = exception_type
            out.append(message)
            pos += total
            need = 0
        self._need = need
        return pos

    def _check_prelude(
        self, buf: bytes, pos: int, total: int, headers_len: int, prelude_crc: int
    ) -> None:
        """Raise the first fault of a prelude known to be faulty, in the spec's order."""
        computed = zlib.crc32(buf[pos : pos + 8])
        if computed != prelude_crc:
            raise PreludeChecksumMismatch(prelude_crc, computed)
        if total < MIN_MESSAGE_SIZE:
            raise MessageTooShort("total_length", total, MIN_MESSAGE_SIZE, "<")
        if total > self._max:
            raise MessageTooLarge("total_length", total, self._max, ">")
        if headers_len > total - MIN_MESSAGE_SIZE:
            raise InvalidHeadersLength("headers_length", headers_len, total - MIN_MESSAGE_SIZE, ">")
        if headers_len > MAX_HEADERS_LENGTH:
            raise InvalidHeadersLength("headers_length", headers_len, MAX_HEADERS_LENGTH, ">")


# --------------------------------------------------------------------------- encoder


def _encode_header(name: str, value: HeaderValue | tuple[str, Any]) -> bytes:
    raw_name = name.encode()
    if not 0 < len(raw_name) < 256:
        raise ValueError(f"header name must be 1-255 bytes of utf-8: {name!r}")
    head = bytes((len(raw_name),)) + raw_name
    kind: str | None = None
    if isinstance(value, tuple):
        kind, value = value
    if isinstance(value, bool):
        return head + (b"\x00" if value else b"\x01")
    if isinstance(value, uuid.UUID):
        return head + b"\x09" + value.bytes
    if isinstance(value, str):
        data = value.encode()
        return head + b"\x07" + _U16.pack(len(data)) + data
    if isinstance(value, bytes | bytearray):
        return head + b"\x06" + _U16.pack(len(value)) + bytes(value)
    if isinstance(value, int):
        code, packer = _INT_KINDS[kind or "int32"]
        return head + bytes((code,)) + packer.pack(value)
    raise TypeError(f"unsupported header value for {name!r}: {type(value).__name__}")


_INT_KINDS: Final = {
    "byte": (2, _I8),
    "int8": (2, _I8),
    "int16": (3, _I16),
    "short": (3, _I16),
    "int32": (4, _I32),
    "integer": (4, _I32),
    "int64": (5, _I64),
    "long": (5, _I64),
    "timestamp": (8, _I64),
}


def encode_headers(headers: dict[str, Any]) -> bytes:
    """Encode a header block. Values: bool, int (int32 unless given as
    ``("int8"|"int16"|"int64"|"timestamp", n)``), bytes, str, ``uuid.UUID``."""
    return b"".join(_encode_header(name, value) for name, value in headers.items())


def encode_message(headers: dict[str, Any], payload: bytes = b"") -> bytes:
    """Build one complete event-stream message with both CRCs."""
    block = encode_headers(headers)
    total = len(block) + len(payload) + MIN_MESSAGE_SIZE
    prelude = struct.pack("!II", total, len(block))
    prelude += _U32.pack(zlib.crc32(prelude))
    body = prelude + block + payload
    return body + _U32.pack(zlib.crc32(body))


def crc32(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """IEEE CRC-32 (the one :func:`zlib.crc32` computes)."""
    return zlib.crc32(data, value)


__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "EventStreamDecoder",
    "EventStreamError",
    "Message",
    "crc32",
    "decode_headers",
    "encode_message",
]
