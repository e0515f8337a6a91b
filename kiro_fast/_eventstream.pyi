"""Types of the compiled event-stream decoder; the behaviour is ``_eventstream_py``'s."""

from typing import Any, ClassVar, Final

from ._eventstream_py import DEFAULT_MAX_MESSAGE_SIZE as DEFAULT_MAX_MESSAGE_SIZE
from ._eventstream_py import HeaderValue
from ._eventstream_py import encode_message as encode_message
from .errors import EventStreamError as EventStreamError

#: "pclmul" or "slice-by-8": the CRC-32 code chosen at import.
CRC32_METHOD: Final[str]

class Message:
    """One decoded event-stream message (attributes are read-only)."""

    @property
    def headers(self) -> dict[str, HeaderValue]: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def event_type(self) -> Any: ...
    @property
    def message_type(self) -> Any: ...
    @property
    def exception_type(self) -> Any: ...
    def __init__(self, headers: dict[str, HeaderValue], payload: bytes) -> None: ...
    def __eq__(self, other: object) -> bool: ...
    __hash__: ClassVar[None]  # type: ignore[assignment]

class EventStreamDecoder:
    def __init__(self, max_message_size: int = ...) -> None: ...
    @property
    def buffered(self) -> int: ...
    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]: ...
    def feed_eof(self) -> None: ...

def crc32(data: bytes | bytearray | memoryview, value: int = 0) -> int: ...
def _crc32_tables(data: bytes | bytearray | memoryview, value: int = 0) -> int: ...
def decode_headers(block: bytes | bytearray | memoryview) -> dict[str, HeaderValue]: ...

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "EventStreamDecoder",
    "EventStreamError",
    "Message",
    "crc32",
    "decode_headers",
    "encode_message",
]
