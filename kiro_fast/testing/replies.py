"""What a route decides to answer, before any byte is written.

Owns the small vocabulary between the routes (which decide) and the server (which
writes): a JSON reply, an event-stream reply with its delivery plan, a closed
connection, a delayed reply. Also the HTTP chunk framing of event-stream bodies, kept
here so a body can be framed once and reused (the benchmark answer).

Must not know about sockets, the event loop, accounts or the request rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

JSON_CONTENT_TYPE: Final = "application/json"


@dataclass(frozen=True, slots=True)
class JsonReply:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    #: the fake's reason code for a refusal (sent as ``x-fake-rule``), e.g. a validation rule
    rule: str | None = None

    @classmethod
    def of(
        cls,
        status: int,
        value: Any,
        *,
        error_type: str | None = None,
        rule: str | None = None,
    ) -> JsonReply:
        headers: tuple[tuple[str, str], ...] = ()
        if error_type:
            headers = (("x-amzn-errortype", error_type),)
        if rule:
            headers += (("x-fake-rule", rule),)
        return cls(status, orjson.dumps(value), headers, rule)


class FramedBody:
    """Event-stream frames, each framed as one HTTP chunk, built once."""

    __slots__ = ("frames", "pieces", "joined")

    def __init__(self, frames: Sequence[bytes]) -> None:
        self.frames = tuple(frames)
        self.pieces = tuple(chunk(f) for f in self.frames)
        self.joined = b"".join(self.pieces)


def chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK: Final = b"0\r\n\r\n"


@dataclass(frozen=True, slots=True)
class Delivery:
    """How the frames of a stream reach the client.

    With nothing set, the whole body goes out in one write.
    """

    #: one piece every N ms (a slow trickle); 0 = no pause between pieces
    interval_ms: float = 0.0
    #: one piece per tick of the server's global ticker
    paced: bool = False
    #: send this many pieces, then wait for ``FakeUpstream.release()`` or the client to leave
    stall_after: int | None = None
    #: send this many pieces, then close the connection without ending the HTTP body
    disconnect_after: int | None = None
    #: byte offsets into the concatenated frames where the body is cut into separate
    #: HTTP chunks and writes (random TCP chunking); ``None`` = one chunk per frame
    cuts: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class StreamReply:
    body: FramedBody
    delivery: Delivery = field(default_factory=Delivery)
    #: credits reported by the stream's meteringEvent (0 when it has none)
    metered: float = 0.0

    def pieces(self) -> tuple[bytes, ...]:
        """The HTTP chunks to write, in order."""
        cuts = self.delivery.cuts
        if cuts is None:
            return self.body.pieces
        data = b"".join(self.body.frames)
        bounds = [0, *cuts, len(data)]
        return tuple(chunk(data[a:b]) for a, b in zip(bounds, bounds[1:], strict=False) if b > a)


@dataclass(frozen=True, slots=True)
class CloseReply:
    """Close the connection without answering; ``reset`` sends a TCP RST instead of a FIN."""

    reset: bool = True


@dataclass(frozen=True, slots=True)
class DelayedReply:
    delay_ms: float
    then: Reply


Reply = JsonReply | StreamReply | CloseReply | DelayedReply
