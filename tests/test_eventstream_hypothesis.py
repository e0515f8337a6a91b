"""Property tests: random streams through both decoders and botocore's as an oracle.

Hypothesis builds streams of random messages (every header type, edge values included),
encodes them with the pure-Python ``encode_message`` (the compiled one must produce the
same bytes), optionally corrupts them, and feeds them in random chunks. The
implementation under test, the pure-Python specification and
``botocore.eventstream.EventStreamBuffer`` must agree:

* intact streams decode to exactly the generated headers and payloads, everywhere;
* a corrupted stream makes both of our decoders raise the same class, one the spec
  (kiro-api.md §6.2) allows for that corruption, after the same messages; botocore
  raises too, except where it is known to differ (see ``botocore_must_raise``).

Examples are derandomized so CI runs the same cases every time;
``KIRO_FAST_HYPOTHESIS_EXAMPLES`` raises the count for a deeper local run.
"""

from __future__ import annotations

import os
import struct
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any

from botocore.eventstream import EventStreamBuffer, ParserError
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kiro_fast import _eventstream_py as spec
from kiro_fast import errors

MAX_MESSAGE_SIZE = 16 * 1024 * 1024
MAX_HEADERS_LENGTH = 128 * 1024
#: botocore rejects a payload over 24 MiB at the prelude; below that it waits for the bytes
BOTOCORE_MAX_PAYLOAD = 24 * 1024 * 1024

CODEC_SETTINGS = settings(
    max_examples=int(os.environ.get("KIRO_FAST_HYPOTHESIS_EXAMPLES", "500")),
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ------------------------------------------------------------------------ generation

INT_BITS = {"int8": 8, "int16": 16, "int32": 32, "int64": 64, "timestamp": 64}
PY_TYPES = {"bool": bool, "bytes": bytes, "string": str, "uuid": uuid.UUID}


def signed(bits: int) -> st.SearchStrategy[int]:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return st.sampled_from([low, high, 0, -1, 1]) | st.integers(low, high)


def utf8_at_most(limit: int) -> Any:
    return lambda text: len(text.encode()) <= limit


HEADER_NAMES = st.one_of(
    st.sampled_from([":event-type", ":content-type", ":message-type", ":exception-type"]),
    st.text(min_size=1, max_size=24).filter(utf8_at_most(255)),
    st.just("n" * 255),
    st.just("\u00e9" * 127),  # 254 bytes of two-byte characters
)

HEADER_VALUES = st.one_of(
    st.tuples(st.just("bool"), st.booleans()),
    *[st.tuples(st.just(kind), signed(bits)) for kind, bits in INT_BITS.items()],
    st.tuples(st.just("bytes"), st.binary(max_size=48) | st.just(b"\xff" * 65535)),
    st.tuples(st.just("string"), st.text(max_size=32) | st.just("\U0001f600" * 16383)),
    st.tuples(st.just("uuid"), st.uuids() | st.just(uuid.UUID(int=0))),
)

#: name -> (kind, value)
Headers = dict[str, tuple[str, Any]]

FIXED_WIDTH = {"bool": 0, "int8": 1, "int16": 2, "int32": 4, "int64": 8, "timestamp": 8, "uuid": 16}


def block_size(headers: Headers) -> int:
    """Encoded header block length, by the §6.2 layout."""
    size = 0
    for name, (kind, value) in headers.items():
        size += 2 + len(name.encode())
        if kind in FIXED_WIDTH:
            size += FIXED_WIDTH[kind]
        else:
            size += 2 + len(value.encode() if kind == "string" else value)
    return size


#: header sets a valid frame can carry (the block is capped at 128 KiB)
HEADER_SETS = st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=6).filter(
    lambda headers: block_size(headers) <= MAX_HEADERS_LENGTH
)


@dataclass
class Generated:
    headers: Headers
    payload: bytes
    frame: bytes = field(init=False)

    def __post_init__(self) -> None:
        self.frame = spec.encode_message(encoder_input(self.headers), self.payload)


@st.composite
def messages(draw: st.DrawFn) -> list[Generated]:
    out: list[Generated] = []
    for _ in range(draw(st.integers(1, 5))):
        reuse = draw(st.booleans())
        if out and reuse:
            headers = out[-1].headers  # upstream frames repeat their header block
        else:
            headers = draw(HEADER_SETS)
        out.append(Generated(headers, draw(st.binary(max_size=300))))
    return out


def encoder_input(headers: Headers) -> dict[str, Any]:
    return {
        name: (kind, value) if kind in INT_BITS else value
        for name, (kind, value) in headers.items()
    }


def typed(headers: Headers) -> dict[str, tuple[type, Any]]:
    return {name: (PY_TYPES.get(kind, int), value) for name, (kind, value) in headers.items()}


def as_typed(message: Any) -> tuple[dict[str, tuple[type, Any]], bytes]:
    return {k: (type(v), v) for k, v in message.headers.items()}, message.payload


# ------------------------------------------------------------------------ corruption


@dataclass
class Scenario:
    """A stream and what a correct decoder does with it."""

    stream: bytes
    #: messages every decoder must deliver before the fault
    good: list[Generated]
    #: error classes the spec allows; empty for an intact stream
    allowed: tuple[type[errors.EventStreamError], ...] = ()
    botocore_must_raise: bool = False
    #: skip botocore (a documented difference makes its result meaningless)
    botocore_undefined: bool = False


def frame_starts(frames: list[Generated]) -> list[int]:
    starts, offset = [], 0
    for message in frames:
        starts.append(offset)
        offset += len(message.frame)
    return starts


def flip(frames: list[Generated], stream: bytes, data: st.DataObject) -> Scenario:
    position = data.draw(st.integers(0, len(stream) - 1), label="flip at")
    mask = data.draw(st.integers(1, 255), label="mask")
    corrupted = bytearray(stream)
    corrupted[position] ^= mask
    index = max(i for i, start in enumerate(frame_starts(frames)) if start <= position)
    in_prelude = position - frame_starts(frames)[index] < 12
    # CRC-32 detects every error burst of 32 bits or less, so one byte always shows
    error = errors.PreludeChecksumMismatch if in_prelude else errors.MessageChecksumMismatch
    return Scenario(bytes(corrupted), frames[:index], (error,), botocore_must_raise=True)


def truncate(frames: list[Generated], stream: bytes, data: st.DataObject) -> Scenario:
    index = data.draw(st.integers(0, len(frames) - 1), label="truncated frame")
    start = frame_starts(frames)[index]
    cut = data.draw(st.integers(start + 1, start + len(frames[index].frame) - 1), label="cut")
    # botocore has no end-of-stream check: it keeps the partial frame without complaint
    return Scenario(stream[:cut], frames[:index], (errors.TruncatedStream,))


def relength(frames: list[Generated], stream: bytes, data: st.DataObject) -> Scenario:
    index = data.draw(st.integers(0, len(frames) - 1), label="altered frame")
    start = frame_starts(frames)[index]
    total, headers_length = struct.unpack_from(">II", stream, start)
    which = data.draw(st.sampled_from(["total", "headers"]), label="field")
    old = total if which == "total" else headers_length
    new = data.draw(
        st.one_of(
            st.integers(max(0, old - 20), old + 20),
            st.sampled_from(LENGTH_EDGES),
            st.integers(0, 2**32 - 1),
        ),
        label="new value",
    )
    if new == old:
        new ^= 1
    if which == "total":
        total = new
    else:
        headers_length = new
    head = struct.pack(">II", total, headers_length)
    prelude = head + struct.pack(">I", zlib.crc32(head))
    corrupted = stream[:start] + prelude + stream[start + 12 :]
    return length_outcome(corrupted, frames[:index], start, total, headers_length)


def length_outcome(
    stream: bytes, good: list[Generated], start: int, total: int, headers_length: int
) -> Scenario:
    """What §6.2's limits say about a prelude with a valid CRC but altered lengths."""
    if total < 16:
        # MessageTooShort; InvalidHeadersLength is also true (headers > total - 16).
        # botocore has no minimum: a total of 12 even decodes as an empty message.
        allowed = (errors.MessageTooShort, errors.InvalidHeadersLength)
        return Scenario(stream, good, allowed, botocore_undefined=True)
    if total > MAX_MESSAGE_SIZE:
        payload = total - headers_length - 16
        return Scenario(stream, good, (errors.MessageTooLarge,), payload > BOTOCORE_MAX_PAYLOAD)
    complete = start + total <= len(stream)
    if headers_length > total - 16 or headers_length > MAX_HEADERS_LENGTH:
        # botocore checks only the 128 KiB cap at the prelude; otherwise the stale
        # message CRC stops it once the frame is complete
        must = headers_length > MAX_HEADERS_LENGTH or complete
        return Scenario(stream, good, (errors.InvalidHeadersLength,), must)
    if not complete:
        return Scenario(stream, good, (errors.TruncatedStream,))
    return Scenario(stream, good, (errors.MessageChecksumMismatch,), botocore_must_raise=True)


#: lengths at the limits of §6.2 and of botocore
LENGTH_EDGES = [
    0,
    12,
    15,
    16,
    MAX_HEADERS_LENGTH,
    MAX_HEADERS_LENGTH + 1,
    MAX_MESSAGE_SIZE,
    MAX_MESSAGE_SIZE + 1,
    BOTOCORE_MAX_PAYLOAD + 16,
    BOTOCORE_MAX_PAYLOAD + 1024,
    2**32 - 1,
]

CORRUPTIONS = {"flip": flip, "truncate": truncate, "length": relength}

# --------------------------------------------------------------------------- running


def chunked(stream: bytes, data: st.DataObject) -> list[bytes]:
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=16), label="cuts")
    bounds = [0, *sorted(cuts), len(stream)]
    return [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def run_ours(decoder_cls: Any, chunks: list[Any]) -> tuple[list[Any], type | None]:
    decoder = decoder_cls()
    out: list[Any] = []
    try:
        for chunk in chunks:
            out += decoder.feed(chunk)
        decoder.feed_eof()
    except errors.EventStreamError as exc:
        return out + exc.messages, type(exc)
    return out, None


def run_botocore(chunks: list[bytes]) -> tuple[list[Any], ParserError | None]:
    buffer = EventStreamBuffer()
    out: list[Any] = []
    try:
        for chunk in chunks:
            buffer.add_data(chunk)
            out.extend(buffer)
    except ParserError as exc:
        return out, exc
    return out, None


def botocore_typed(message: Any, generated: Generated) -> tuple[dict[str, Any], bytes]:
    """botocore returns a uuid as its 16 raw bytes; ours is a ``uuid.UUID``."""
    headers = {}
    for name, value in message.headers.items():
        if generated.headers.get(name, ("",))[0] == "uuid":
            value = uuid.UUID(bytes=value)
        headers[name] = (type(value), value)
    return headers, message.payload


CHUNK_TYPES = [bytes, bytearray, memoryview]


@CODEC_SETTINGS
@given(frames=messages(), corruption=st.sampled_from([None, *CORRUPTIONS]), data=st.data())
def test_decoders_agree_with_each_other_and_botocore(eventstream_impl, frames, corruption, data):
    module = eventstream_impl.module
    for message in frames:
        assert module.encode_message(encoder_input(message.headers), message.payload) == (
            message.frame
        )
    stream = b"".join(message.frame for message in frames)
    scenario = Scenario(stream, frames)
    if corruption is not None:
        scenario = CORRUPTIONS[corruption](frames, stream, data)
    chunks = chunked(scenario.stream, data)
    kind = data.draw(st.sampled_from(CHUNK_TYPES), label="chunk type")

    got, error = run_ours(module.EventStreamDecoder, [kind(c) for c in chunks])
    reference, reference_error = run_ours(spec.EventStreamDecoder, chunks)
    want = [(typed(m.headers), m.payload) for m in scenario.good]
    assert [as_typed(m) for m in got] == want
    assert [as_typed(m) for m in reference] == want
    assert error is reference_error
    event(f"{corruption}: {error.__name__ if error else 'ok'}")
    if scenario.allowed:
        assert error in scenario.allowed
    else:
        assert error is None

    if scenario.botocore_undefined:
        return
    oracle, oracle_error = run_botocore(chunks)
    assert len(oracle) == len(want)
    assert [botocore_typed(m, g) for m, g in zip(oracle, frames, strict=False)] == want
    assert (oracle_error is not None) is scenario.botocore_must_raise
