"""Event-stream frames as the upstream builds them (kiro-api.md §6).

Owns the byte form of every event the fake sends: header order ``:event-type``,
``:content-type``, ``:message-type`` (exceptions: ``:exception-type``, ``:content-type``,
``:message-type``), payloads as compact JSON with alphabetically sorted keys (§6.3), and
the way the upstream cuts text and tool input into small fragments on code-point
boundaries (§6.5, §11). Also the canned benchmark answer, encoded once.

Must not know about HTTP, requests or accounts: callers hand in text, tool calls and
numbers and get ``bytes`` back.
"""

from __future__ import annotations

import base64
import functools
import random
from collections.abc import Iterable
from typing import Any, Final

import orjson

from ..eventstream import encode_message

_SORTED: Final = orjson.OPT_SORT_KEYS

#: Where a frame's header block starts (after total_length, headers_length, prelude CRC).
PRELUDE_SIZE: Final = 12
#: Frames in the canned benchmark answer, each one short word (performance-notes.md).
BENCH_WORDS: Final = 50
#: contextUsagePercentage of the benchmark answer: a 2,048-byte request to a 200k model
#: under the fake's counter ((2048 / 4 + 2000) / 200000 × 100); bodies are not read.
BENCH_CONTEXT_PERCENT: Final = 1.256
BENCH_METERING: Final = 0.0123


def event(event_type: str, payload: dict[str, Any]) -> bytes:
    """One ``event`` frame."""
    headers = {
        ":event-type": event_type,
        ":content-type": "application/json",
        ":message-type": "event",
    }
    return encode_message(headers, orjson.dumps(payload, option=_SORTED))


def exception(exception_type: str, message: str) -> bytes:
    """One ``exception`` frame, as sent mid-stream (§6.3, §9.3)."""
    headers = {
        ":exception-type": exception_type,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return encode_message(headers, orjson.dumps({"message": message}, option=_SORTED))


def error(code: str, message: str) -> bytes:
    """One ``error`` frame: the code and message travel in headers, the payload is empty."""
    headers = {":error-code": code, ":error-message": message, ":message-type": "error"}
    return encode_message(headers, b"")


def text(fragment: str) -> bytes:
    return event("assistantResponseEvent", {"content": fragment})


def reasoning(fragment: str) -> bytes:
    return event("reasoningContentEvent", {"text": fragment})


def reasoning_signature(signature: str) -> bytes:
    return event("reasoningContentEvent", {"signature": signature})


def tool_use(tool_use_id: str, name: str, input_fragments: Iterable[str]) -> list[bytes]:
    """Start frame without input, one frame per input fragment, then the stop frame (§6.5)."""
    base = {"name": name, "toolUseId": tool_use_id}
    out = [event("toolUseEvent", base)]
    out.extend(event("toolUseEvent", {**base, "input": part}) for part in input_fragments)
    out.append(event("toolUseEvent", {**base, "stop": True}))
    return out


def metering(usage: float) -> bytes:
    return event("meteringEvent", {"unit": "credit", "unitPlural": "credits", "usage": usage})


def context_usage(percentage: float) -> bytes:
    return event("contextUsageEvent", {"contextUsagePercentage": percentage})


def metadata(input_tokens: int, output_tokens: int, percentage: float) -> bytes:
    usage = {
        "contextUsagePercentage": percentage,
        "outputTokens": output_tokens,
        "totalTokens": input_tokens + output_tokens,
        "uncachedInputTokens": input_tokens,
    }
    return event("metadataEvent", {"tokenUsage": usage})


def corrupt_crc(frame: bytes) -> bytes:
    """The same frame with its message CRC flipped in the last byte."""
    return frame[:-1] + bytes((frame[-1] ^ 0xFF,))


def payload_span(frame: bytes) -> tuple[int, int]:
    """(start, end) of a frame's payload inside the frame."""
    headers_length = int.from_bytes(frame[4:8], "big")
    return PRELUDE_SIZE + headers_length, len(frame) - 4


def tool_use_id(rng: random.Random) -> str:
    """``tooluse_`` + 22 url-safe base64 characters (16 random bytes), like the upstream's."""
    raw = rng.getrandbits(128).to_bytes(16, "big")
    return "tooluse_" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def split_text(
    value: str, rng: random.Random, shortest: int, longest: int, cuts: Iterable[int] = ()
) -> list[str]:
    """Cut ``value`` into fragments of ``shortest``..``longest`` code points.

    Every index in ``cuts`` is also a fragment boundary, so tests can force a tag or a
    ``\\n\\n`` to straddle two frames.
    """
    forced = sorted(c for c in set(cuts) if 0 < c < len(value))
    out: list[str] = []
    pos = 0
    for cut in [*forced, len(value)]:
        while pos < cut:
            end = min(cut, pos + rng.randint(shortest, longest))
            out.append(value[pos:end])
            pos = end
    return out


@functools.cache
def bench_frames() -> tuple[bytes, ...]:
    """The canned benchmark answer: 50 one-word text frames, metering, context usage."""
    words = [text(f"w{i:04d} ") for i in range(BENCH_WORDS)]
    return (*words, metering(BENCH_METERING), context_usage(BENCH_CONTEXT_PERCENT))
