"""Event-stream decoder conformance, run against both implementations (``conftest.py``).

Strategy (h11's ``tr`` helper, widened): every AWS conformance vector is fed whole, one
byte at a time and at seeded random split points, repeated back to back, and followed by
a partial frame that must stay buffered. Invalid vectors must fail with the manifest's
error code on the very ``feed()`` the manifest's ``detect`` names. Expected values come
from the manifest, from kiro-api.md §6.2/§6.7 or are written here by hand; frames that
need fresh CRCs are sealed with :func:`zlib.crc32`, never with the code under test.

The vectors are read from ``tests/data/eventstream-vectors`` (a copy of the shared
Apache-2.0 set, see its README.md) or from ``$KIRO_FAST_VECTORS_DIR``.
"""

from __future__ import annotations

import json
import os
import random
import struct
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kiro_fast import errors

VECTORS_DIR = Path(
    os.environ.get("KIRO_FAST_VECTORS_DIR")
    or Path(__file__).parent / "data" / "eventstream-vectors"
)
CASES: list[dict[str, Any]] = json.loads((VECTORS_DIR / "manifest.json").read_text())["cases"]
VALID = [case for case in CASES if case["valid"]]
INVALID = [case for case in CASES if not case["valid"]]

#: the prelude is bytes [0, 12): the feed that delivers byte 11 must judge it
PRELUDE_LAST_BYTE = 11
MIB = 1024 * 1024

#: the manifest's ``error`` names are the ``code`` of these classes
CODE_TO_CLASS: dict[str, type[errors.EventStreamError]] = {
    "prelude_crc_mismatch": errors.PreludeChecksumMismatch,
    "message_crc_mismatch": errors.MessageChecksumMismatch,
    "invalid_headers_length": errors.InvalidHeadersLength,
    "duplicate_header": errors.DuplicateHeader,
    "message_too_large": errors.MessageTooLarge,
    "message_too_short": errors.MessageTooShort,
}

#: manifest header type -> the Python type kiro_fast returns for it
PY_TYPES = {
    "bool": bool,
    "byte": int,
    "int16": int,
    "int32": int,
    "int64": int,
    "timestamp": int,
    "bytes": bytes,
    "string": str,
    "uuid": uuid.UUID,
}

# ----------------------------------------------------------------------------- helpers

Decoded = tuple[dict[str, tuple[type, Any]], bytes]


def case_id(case: dict[str, Any]) -> str:
    return str(case["id"])


def case_bytes(case: dict[str, Any]) -> bytes:
    return (VECTORS_DIR / str(case["file"])).read_bytes()


def manifest_value(header: dict[str, Any]) -> Any:
    kind, value = header["type"], header["value"]
    if kind == "bytes":
        return bytes.fromhex(value)
    if kind == "uuid":
        return uuid.UUID(value)
    return value


def expected(case: dict[str, Any]) -> list[Decoded]:
    """The manifest's messages as (headers with exact types, payload)."""
    return [
        (
            {h["name"]: (PY_TYPES[h["type"]], manifest_value(h)) for h in message["headers"]},
            bytes.fromhex(message["payload_hex"]),
        )
        for message in case["messages"]
    ]


def decoded(messages: Iterable[Any]) -> list[Decoded]:
    """Messages as (headers with the type of each value, payload); bool is not int here."""
    return [
        ({name: (type(value), value) for name, value in m.headers.items()}, m.payload)
        for m in messages
    ]


def whole(data: bytes) -> list[bytes]:
    return [data]


def bytewise(data: bytes) -> list[bytes]:
    return list(one_byte_at_a_time(data))


def one_byte_at_a_time(data: bytes) -> Iterator[bytes]:
    return (data[i : i + 1] for i in range(len(data)))


def random_splitter(seed: int) -> Callable[[bytes], list[bytes]]:
    def split(data: bytes) -> list[bytes]:
        rng = random.Random(seed * 7919 + len(data))
        # drawn with replacement, so some chunks are empty: feed(b"") is legal
        cuts = sorted(rng.choices(range(len(data) + 1), k=rng.randint(1, 12)))
        bounds = [0, *cuts, len(data)]
        return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]

    return split


SPLITS = {
    "whole": whole,
    "bytewise": bytewise,
    **{f"random{seed}": random_splitter(seed) for seed in range(1, 5)},
}


def as_memoryview_slice(chunk: bytes) -> memoryview:
    # a view that does not start at the beginning of its buffer
    return memoryview(b"\xaa" + chunk + b"\xbb")[1 : 1 + len(chunk)]


CHUNK_TYPES: dict[str, Callable[[bytes], Any]] = {
    "bytes": bytes,
    "bytearray": bytearray,
    "memoryview": as_memoryview_slice,
    "rw-memoryview": lambda chunk: memoryview(bytearray(chunk)),
}


def feed_all(decoder: Any, chunks: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for chunk in chunks:
        got = decoder.feed(chunk)
        assert isinstance(got, list)
        out += got
    return out


def seal(headers: bytes, payload: bytes = b"") -> bytes:
    """A frame around a raw header block, with correct lengths and CRCs (spec §6.2)."""
    total = len(headers) + len(payload) + 16
    head = struct.pack(">II", total, len(headers))
    body = head + struct.pack(">I", zlib.crc32(head)) + headers + payload
    return body + struct.pack(">I", zlib.crc32(body))


def prelude(total: int, headers_length: int) -> bytes:
    head = struct.pack(">II", total, headers_length)
    return head + struct.pack(">I", zlib.crc32(head))


def string_header(name: str, value: str) -> bytes:
    """A type-7 header, written out from the spec §6.2 table."""
    raw_name, raw = name.encode(), value.encode()
    return bytes([len(raw_name)]) + raw_name + b"\x07" + struct.pack(">H", len(raw)) + raw


def bytes_header(name: str, value: bytes) -> bytes:
    raw_name = name.encode()
    return bytes([len(raw_name)]) + raw_name + b"\x06" + struct.pack(">H", len(value)) + value


# --------------------------------------------------------------------- spec §6.7 frames

# (headers, payload, total_length, headers_length, prelude CRC, message CRC), copied from
# the kiro-api.md §6.7 table.
_TOOL = '"name":"get_weather","toolUseId":"tooluse_abc"'
SPEC_FRAMES: list[tuple[dict[str, str], bytes, int, int, int, int]] = [
    (
        {":event-type": "assistantResponseEvent"},
        b'{"content":"Hello"}',
        127,
        92,
        0x7C7DB5A8,
        0x9B5D0635,
    ),
    (
        {":event-type": "toolUseEvent"},
        b"{" + _TOOL.encode() + b"}",
        146,
        82,
        0x4B819BC1,
        0x891F7D5B,
    ),
    (
        {":event-type": "toolUseEvent"},
        b'{"input":"{\\"city\\":",' + _TOOL.encode() + b"}",
        167,
        82,
        0x2240AC37,
        0x2B7E30D3,
    ),
    (
        {":event-type": "toolUseEvent"},
        b'{"input":"\\"Paris\\"}",' + _TOOL.encode() + b"}",
        167,
        82,
        0x2240AC37,
        0xD057D559,
    ),
    (
        {":event-type": "toolUseEvent"},
        b'{"name":"get_weather","stop":true,"toolUseId":"tooluse_abc"}',
        158,
        82,
        0x8E7176C0,
        0x39A288A2,
    ),
    (
        {":event-type": "meteringEvent"},
        b'{"unit":"credit","unitPlural":"credits","usage":0.0123}',
        154,
        83,
        0x0CF6E096,
        0x1D07F03D,
    ),
    (
        {":event-type": "contextUsageEvent"},
        b'{"contextUsagePercentage":9.178}',
        135,
        87,
        0x93EB77BC,
        0x65E71E45,
    ),
    (
        {":exception-type": "ValidationException"},
        b'{"message":"Input is too long."}',
        145,
        97,
        0xB3F18007,
        0x33EAE550,
    ),
]

#: the first frame, byte for byte as printed in §6.7
SPEC_FIRST_FRAME_HEX = """
00 00 00 7f 00 00 00 5c 7c 7d b5 a8
0b 3a 65 76 65 6e 74 2d 74 79 70 65 07 00 16
61 73 73 69 73 74 61 6e 74 52 65 73 70 6f 6e 73 65 45 76 65 6e 74
0d 3a 63 6f 6e 74 65 6e 74 2d 74 79 70 65 07 00 10
61 70 70 6c 69 63 61 74 69 6f 6e 2f 6a 73 6f 6e
0d 3a 6d 65 73 73 61 67 65 2d 74 79 70 65 07 00 05
65 76 65 6e 74
7b 22 63 6f 6e 74 65 6e 74 22 3a 22 48 65 6c 6c 6f 22 7d
9b 5d 06 35
"""


def spec_headers(first: dict[str, str]) -> dict[str, str]:
    """Full header set in the §6.3 order: the type header, content type, message type."""
    message_type = "exception" if ":exception-type" in first else "event"
    return {**first, ":content-type": "application/json", ":message-type": message_type}


def spec_frame_bytes(index: int) -> bytes:
    first, payload, total, headers_length, prelude_crc, message_crc = SPEC_FRAMES[index]
    block = b"".join(string_header(k, v) for k, v in spec_headers(first).items())
    head = struct.pack(">III", total, headers_length, prelude_crc)
    return head + block + payload + struct.pack(">I", message_crc)


def spec_expected(index: int) -> Decoded:
    first, payload = SPEC_FRAMES[index][:2]
    return {k: (str, v) for k, v in spec_headers(first).items()}, payload


SPEC_STREAM = b"".join(spec_frame_bytes(i) for i in range(len(SPEC_FRAMES)))

# ------------------------------------------------------------------------ valid vectors


@pytest.mark.parametrize("chunk_type", CHUNK_TYPES)
@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("case", VALID, ids=case_id)
def test_valid_vector(decoder_cls, case, split, chunk_type):
    decoder = decoder_cls()
    convert = CHUNK_TYPES[chunk_type]
    messages = feed_all(decoder, map(convert, SPLITS[split](case_bytes(case))))
    assert decoded(messages) == expected(case)
    assert all(type(m.payload) is bytes for m in messages)
    assert decoder.buffered == 0
    decoder.feed_eof()


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("case", VALID, ids=case_id)
def test_valid_vector_repeated(decoder_cls, case, split):
    decoder = decoder_cls()
    messages = feed_all(decoder, SPLITS[split](case_bytes(case) * 3))
    assert decoded(messages) == expected(case) * 3
    assert decoder.buffered == 0


@pytest.mark.parametrize("split", SPLITS)
def test_all_valid_vectors_in_one_stream(decoder_cls, split):
    stream = b"".join(case_bytes(case) for case in VALID)
    decoder = decoder_cls()
    messages = feed_all(decoder, SPLITS[split](stream))
    assert decoded(messages) == [m for case in VALID for m in expected(case)]
    decoder.feed_eof()


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("case", VALID, ids=case_id)
def test_trailing_partial_frame_stays_buffered(decoder_cls, case, split):
    data = case_bytes(case)
    first_frame = case["messages"][0]["frame_length"]
    for kept in sorted({1, 11, 12, 13, first_frame - 1}):
        decoder = decoder_cls()
        messages = feed_all(decoder, SPLITS[split](data + data[:kept]))
        assert decoded(messages) == expected(case)
        assert decoder.buffered == kept
        with pytest.raises(errors.TruncatedStream) as info:
            decoder.feed_eof()
        assert info.value.code == "truncated_stream"


@pytest.mark.parametrize("case", VALID, ids=case_id)
def test_encode_message_reproduces_vector(eventstream_impl, case):
    frames = []
    for message in case["messages"]:
        headers = {h["name"]: encoder_value(h) for h in message["headers"]}
        payload = bytes.fromhex(message["payload_hex"])
        frames.append(eventstream_impl.module.encode_message(headers, payload))
    assert b"".join(frames) == case_bytes(case)


def encoder_value(header: dict[str, Any]) -> Any:
    """The manifest's typed value in ``encode_message``'s input form."""
    kind = header["type"]
    if kind in ("byte", "int16", "int32", "int64", "timestamp"):
        return ("int8" if kind == "byte" else kind, header["value"])
    return manifest_value(header)


# ---------------------------------------------------------------------- invalid vectors


def detection_window(case: dict[str, Any], data: bytes) -> tuple[int, int]:
    """First and last byte index whose arrival may (must, at the last) raise."""
    total = struct.unpack_from(">I", data)[0]
    if case["detect"] == "prelude":
        return PRELUDE_LAST_BYTE, PRELUDE_LAST_BYTE
    assert total <= len(data), "a message/structure vector must hold its whole frame"
    if case["detect"] == "message":
        return total - 1, total - 1
    assert case["detect"] == "structure"
    return PRELUDE_LAST_BYTE, total - 1


def feed_until_error(decoder: Any, chunks: list[bytes]) -> tuple[list[Any], Any, int, int]:
    """Feed until a feed raises; return (messages, exception, chunk start, chunk end)."""
    messages: list[Any] = []
    offset = 0
    for chunk in chunks:
        try:
            messages += decoder.feed(chunk)
        except errors.EventStreamError as exc:
            return messages, exc, offset, offset + len(chunk)
        offset += len(chunk)
    pytest.fail(f"no feed raised over {offset} bytes")


def check_error_class(case: dict[str, Any], exc: errors.EventStreamError) -> None:
    if case["detect"] == "structure" and case["error"] != "duplicate_header":
        return  # CRC-first or headers-first: any EventStreamError is right here
    assert type(exc) is CODE_TO_CLASS[case["error"]]
    assert exc.code == case["error"]


@pytest.mark.parametrize("prefix", [0, 2], ids=["alone", "after-2-frames"])
@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("case", INVALID, ids=case_id)
def test_invalid_vector(decoder_cls, case, split, prefix):
    data = case_bytes(case)
    good = SPEC_STREAM[: sum(SPEC_FRAMES[i][2] for i in range(prefix))]
    first, last = detection_window(case, data)
    decoder = decoder_cls()
    messages, exc, start, end = feed_until_error(decoder, SPLITS[split](good + data))
    # the raising feed delivered a byte of the window, and no earlier feed raised
    assert start <= len(good) + last and end > len(good) + first
    check_error_class(case, exc)
    assert decoded(messages + exc.messages) == [spec_expected(i) for i in range(prefix)]


@pytest.mark.parametrize("case", INVALID, ids=case_id)
def test_errors_are_terminal(decoder_cls, case):
    decoder = decoder_cls()
    with pytest.raises(errors.EventStreamError) as info:
        decoder.feed(case_bytes(case))
    kind = type(info.value)
    for retry in (b"", spec_frame_bytes(0), bytearray(spec_frame_bytes(1))):
        with pytest.raises(kind) as again:
            decoder.feed(retry)
        assert again.value.code == info.value.code
    with pytest.raises(kind):
        decoder.feed_eof()


BAD_FRAMES = {
    "prelude": b"\x00\x00\x00\x10\x00\x00\x00\x00\xde\xad\xbe\xef",
    "message": spec_frame_bytes(6)[:-1] + b"\x00",
}


@pytest.mark.parametrize("chunk_type", CHUNK_TYPES)
@pytest.mark.parametrize("bad", BAD_FRAMES)
def test_error_carries_messages_of_the_same_feed(decoder_cls, bad, chunk_type):
    convert = CHUNK_TYPES[chunk_type]
    decoder = decoder_cls()
    assert decoded(decoder.feed(convert(spec_frame_bytes(0)))) == [spec_expected(0)]
    second = spec_frame_bytes(1)
    assert decoder.feed(convert(second[:20])) == []
    with pytest.raises(errors.EventStreamError) as info:
        decoder.feed(convert(second[20:] + spec_frame_bytes(2) + BAD_FRAMES[bad]))
    assert decoded(info.value.messages) == [spec_expected(1), spec_expected(2)]


@pytest.mark.parametrize("chunk_type", CHUNK_TYPES)
def test_error_on_a_fresh_feed_carries_its_messages(decoder_cls, chunk_type):
    decoder = decoder_cls()
    with pytest.raises(errors.MessageChecksumMismatch) as info:
        decoder.feed(CHUNK_TYPES[chunk_type](spec_frame_bytes(3) + BAD_FRAMES["message"]))
    assert decoded(info.value.messages) == [spec_expected(3)]


# ---------------------------------------------------- header blocks with valid CRCs

# The manifest's malformed header blocks all carry stale CRCs, so a CRC-first decoder
# never parses them. These are sealed with correct CRCs to reach the header parser.
MALFORMED_HEADERS = {
    "unknown-type-10": b"\x01a\x0a",
    "unknown-type-0x60": b"\x01a\x60\x00\x00",
    "unknown-type-255": b"\x01a\xff",
    "empty-name": b"\x00\x00",
    "name-runs-past-block": b"\x05abc",
    "name-without-type": b"\x03abc",
    "name-not-utf8": b"\x02\xff\xfe\x00",
    "int8-cut": b"\x01a\x02",
    "int16-cut": b"\x01a\x03\x00",
    "int32-cut": b"\x01a\x04\x00\x00\x00",
    "int64-cut": b"\x01a\x05\x00\x00\x00\x00\x00\x00\x00",
    "timestamp-cut": b"\x01a\x08\x00\x00\x00\x00",
    "uuid-cut": b"\x01a\x09" + bytes(15),
    "string-length-cut": b"\x01a\x07\x00",
    "bytes-length-cut": b"\x01a\x06",
    "string-value-overruns": b"\x01a\x07\x00\x05abcd",
    "bytes-value-overruns": b"\x01a\x06\xff\xff\x00",
    "string-not-utf8": b"\x01a\x07\x00\x02\xc3\x28",
    "string-surrogate": b"\x01a\x07\x00\x03\xed\xa0\x80",
    "valid-then-garbage": b"\x01a\x00\x01",
}


@pytest.mark.parametrize("split", ["whole", "bytewise"])
@pytest.mark.parametrize("block", MALFORMED_HEADERS)
def test_malformed_header_block_is_invalid_header(decoder_cls, block, split):
    frame = seal(MALFORMED_HEADERS[block], b"{}")
    decoder = decoder_cls()
    messages, exc, start, end = feed_until_error(decoder, SPLITS[split](frame))
    assert messages == []
    assert type(exc) is errors.InvalidHeader
    assert exc.code == "invalid_header"
    assert start <= len(frame) - 1 and end > PRELUDE_LAST_BYTE


DUPLICATES = {
    "same-type": string_header("a", "x") + string_header("a", "y"),
    "other-type": string_header("a", "x") + b"\x01a\x00",
    "after-others": b"\x01a\x00\x01b\x01\x01a\x02\x05",
}


@pytest.mark.parametrize("block", DUPLICATES)
def test_duplicate_header(decoder_cls, block):
    decoder = decoder_cls()
    with pytest.raises(errors.DuplicateHeader) as info:
        decoder.feed(seal(DUPLICATES[block]))
    assert info.value.code == "duplicate_header"
    assert info.value.name == "a"


def test_header_values_at_their_limits(decoder_cls):
    block = (
        b"\x02i8\x02\x80"
        + b"\x03i8+\x02\x7f"
        + b"\x03i16\x03\x80\x00"
        + b"\x04i16+\x03\x7f\xff"
        + b"\x03i32\x04\x80\x00\x00\x00"
        + b"\x04i32+\x04\x7f\xff\xff\xff"
        + b"\x03i64\x05\x80"
        + bytes(7)
        + b"\x04i64+\x05\x7f"
        + b"\xff" * 7
        + b"\x02ts\x08"
        + b"\xff" * 8
        + b"\x04uuid\x09"
        + b"\xff" * 16
        + b"\x01s\x07\x00\x00"
        + string_header("u", "é€😀")
        + bytes_header("big", b"\x00" * 65535)
        + bytes([255])
        + b"n" * 255
        + b"\x00"
    )
    (message,) = decoder_cls().feed(seal(block, b"payload"))
    assert decoded([message]) == [
        (
            {
                "i8": (int, -128),
                "i8+": (int, 127),
                "i16": (int, -32768),
                "i16+": (int, 32767),
                "i32": (int, -(2**31)),
                "i32+": (int, 2**31 - 1),
                "i64": (int, -(2**63)),
                "i64+": (int, 2**63 - 1),
                "ts": (int, -1),
                "uuid": (uuid.UUID, uuid.UUID("ffffffff-ffff-ffff-ffff-ffffffffffff")),
                "s": (str, ""),
                "u": (str, "é€😀"),
                "big": (bytes, b"\x00" * 65535),
                "n" * 255: (bool, True),
            },
            b"payload",
        )
    ]


@pytest.mark.parametrize("split", ["whole", "bytewise"])
def test_consecutive_header_blocks_are_not_confused(decoder_cls, split):
    # same length, different bytes: a cache of the last block must compare content
    blocks = [string_header(":event-type", name) for name in ("aaaa", "bbbb", "bbbb", "aaab")]
    blocks += [string_header(":event-type", "aaaa") + b"\x01x\x00", blocks[0]]
    stream = b"".join(seal(block, b"%d" % i) for i, block in enumerate(blocks))
    messages = feed_all(decoder_cls(), SPLITS[split](stream))
    assert [(m.headers, m.payload) for m in messages] == [
        ({":event-type": "aaaa"}, b"0"),
        ({":event-type": "bbbb"}, b"1"),
        ({":event-type": "bbbb"}, b"2"),
        ({":event-type": "aaab"}, b"3"),
        ({":event-type": "aaaa", "x": True}, b"4"),
        ({":event-type": "aaaa"}, b"5"),
    ]


# ------------------------------------------------------------------------------ limits


def test_max_message_size_admits_a_frame_of_exactly_that_size(decoder_cls):
    frame = spec_frame_bytes(0)
    decoder = decoder_cls(max_message_size=len(frame))
    assert decoded(feed_all(decoder, bytewise(frame))) == [spec_expected(0)]


def test_frame_over_max_message_size_fails_on_its_prelude(decoder_cls):
    frame = spec_frame_bytes(0)
    decoder = decoder_cls(max_message_size=len(frame) - 1)
    _, exc, start, _ = feed_until_error(decoder, bytewise(frame))
    assert start == PRELUDE_LAST_BYTE
    assert type(exc) is errors.MessageTooLarge
    assert (exc.code, exc.value, exc.limit) == ("message_too_large", len(frame), len(frame) - 1)


def test_default_max_message_size_is_16_mib(decoder_cls):
    decoder = decoder_cls()
    assert decoder.feed(prelude(16 * MIB, 0)) == []
    assert decoder.buffered == 12
    with pytest.raises(errors.MessageTooLarge) as info:
        decoder_cls().feed(prelude(16 * MIB + 1, 0))
    assert info.value.value == 16 * MIB + 1


def test_max_message_size_beyond_uint32_means_no_limit(decoder_cls):
    decoder = decoder_cls(max_message_size=2**40)
    assert decoder.feed(prelude(2**32 - 1, 0)) == []
    assert decoder.buffered == 12


@pytest.mark.parametrize("size", [0, 15, -1])
def test_max_message_size_below_an_empty_message_is_rejected(decoder_cls, size):
    with pytest.raises(ValueError):
        decoder_cls(max_message_size=size)


def test_max_message_size_of_an_empty_message(decoder_cls):
    decoder = decoder_cls(max_message_size=16)
    assert decoded(decoder.feed(seal(b""))) == [({}, b"")]
    with pytest.raises(errors.MessageTooLarge):
        decoder.feed(seal(b"", b"x"))


def test_header_block_of_128_kib_is_accepted(decoder_cls):
    block = bytes_header("a", b"\x01" * 65535) + bytes_header("b", b"\x02" * 65527)
    assert len(block) == 128 * 1024
    (message,) = decoder_cls().feed(seal(block, b"p"))
    assert message.headers == {"a": b"\x01" * 65535, "b": b"\x02" * 65527}


def test_header_block_over_128_kib_fails_on_its_prelude(decoder_cls):
    with pytest.raises(errors.InvalidHeadersLength) as info:
        decoder_cls().feed(prelude(200_000, 128 * 1024 + 1))
    assert info.value.code == "invalid_headers_length"


@pytest.mark.parametrize(
    ("total", "headers_length", "error"),
    [
        (0, 0, errors.MessageTooShort),
        (15, 0, errors.MessageTooShort),
        (16, 1, errors.InvalidHeadersLength),
        (40, 25, errors.InvalidHeadersLength),
        (2**32 - 1, 0, errors.MessageTooLarge),
    ],
)
def test_impossible_lengths_fail_on_the_prelude(decoder_cls, total, headers_length, error):
    decoder = decoder_cls()
    assert decoder.feed(prelude(total, headers_length)[:11]) == []
    with pytest.raises(error):
        decoder.feed(prelude(total, headers_length)[11:])


# ------------------------------------------------------------------ spec §6.7 examples


def test_spec_first_frame_matches_its_hex_dump():
    assert spec_frame_bytes(0) == bytes.fromhex(SPEC_FIRST_FRAME_HEX)


@pytest.mark.parametrize("split", SPLITS)
def test_spec_frames_decode(decoder_cls, split):
    messages = feed_all(decoder_cls(), SPLITS[split](SPEC_STREAM))
    assert decoded(messages) == [spec_expected(i) for i in range(len(SPEC_FRAMES))]
    assert [m.event_type for m in messages] == [
        "assistantResponseEvent",
        *["toolUseEvent"] * 4,
        "meteringEvent",
        "contextUsageEvent",
        None,
    ]
    assert [m.message_type for m in messages] == ["event"] * 7 + ["exception"]
    assert [m.exception_type for m in messages] == [None] * 7 + ["ValidationException"]


@pytest.mark.parametrize("index", range(len(SPEC_FRAMES)))
def test_encode_message_reproduces_spec_frame(eventstream_impl, index):
    first, payload = SPEC_FRAMES[index][:2]
    frame = eventstream_impl.module.encode_message(spec_headers(first), payload)
    assert frame == spec_frame_bytes(index)


# ------------------------------------------------------------------ message and inputs


def test_message_accessors(message_cls):
    message = message_cls({":event-type": "toolUseEvent", ":message-type": "event", "x": 1}, b"{}")
    assert (message.event_type, message.message_type, message.exception_type) == (
        "toolUseEvent",
        "event",
        None,
    )
    assert message.headers == {":event-type": "toolUseEvent", ":message-type": "event", "x": 1}
    assert message.payload == b"{}"
    bare = message_cls({}, b"")
    assert (bare.event_type, bare.message_type, bare.exception_type) == (None, None, None)


def test_decoded_message_equals_a_constructed_one(decoder_cls, message_cls):
    (message,) = decoder_cls().feed(spec_frame_bytes(7))
    assert isinstance(message, message_cls)
    assert message == message_cls(spec_headers(SPEC_FRAMES[7][0]), SPEC_FRAMES[7][1])
    assert message != message_cls(spec_headers(SPEC_FRAMES[7][0]), b"other")


@pytest.mark.parametrize("view", [bytearray, lambda b: memoryview(bytearray(b))])
def test_reused_caller_buffer_does_not_change_buffered_bytes(decoder_cls, view):
    frame = spec_frame_bytes(0)
    decoder = decoder_cls()
    for piece in (frame[:5], frame[5:45]):
        chunk = bytearray(piece)
        assert decoder.feed(view(chunk)) == []
        chunk[:] = b"\xff" * len(chunk)  # the caller reuses its read buffer
    (message,) = decoder.feed(view(bytearray(frame[45:])))
    assert decoded([message]) == [spec_expected(0)]


def test_returned_payload_survives_a_reused_caller_buffer(decoder_cls):
    chunk = bytearray(spec_frame_bytes(0))
    (message,) = decoder_cls().feed(memoryview(chunk))
    chunk[:] = bytes(len(chunk))
    assert decoded([message]) == [spec_expected(0)]


def test_buffered_counts_unreturned_bytes(decoder_cls):
    frame = spec_frame_bytes(0)
    decoder = decoder_cls()
    assert decoder.buffered == 0
    assert decoder.feed(frame[:5]) == []
    assert decoder.buffered == 5
    assert decoder.feed(frame[5:30]) == []
    assert decoder.buffered == 30
    assert len(decoder.feed(frame[30:] + frame[:3])) == 1
    assert decoder.buffered == 3
    assert decoder.feed(b"") == []
    assert decoder.buffered == 3


def test_feed_eof_on_a_clean_boundary(decoder_cls):
    decoder = decoder_cls()
    decoder.feed_eof()
    decoder.feed(SPEC_STREAM)
    assert decoder.feed_eof() is None


# ---------------------------------------------------------------- amortised feeding


@pytest.mark.parametrize("chunk_size", [1000, 4096, 65_539, 300_007])
def test_big_and_small_frames_interleaved(decoder_cls, chunk_size):
    # big frames grow the pending buffer; the small ones after them must still decode
    payloads = [b"0", b"\x01" * MIB, b"1", b"2", b"\x02" * 300_000, b"3", b"\x03" * 70_000, b"4"]
    stream = b"".join(seal(string_header(":event-type", "e"), p) for p in payloads)
    chunks = [stream[i : i + chunk_size] for i in range(0, len(stream), chunk_size)]
    decoder = decoder_cls()
    messages = feed_all(decoder, chunks)
    assert [m.payload for m in messages] == payloads
    assert all(m.headers == {":event-type": "e"} for m in messages)
    decoder.feed_eof()


@pytest.mark.timeout(60)
def test_many_tiny_frames_fed_one_byte_at_a_time(decoder_cls):
    frame = seal(b"", b"x")
    decoder = decoder_cls()
    count = 0
    for byte in one_byte_at_a_time(frame * 20_000):
        count += len(decoder.feed(byte))
    assert count == 20_000
    assert decoder.buffered == 0


@pytest.mark.timeout(60)
def test_one_mib_frame_fed_one_byte_at_a_time(decoder_cls):
    payload = bytes(range(256)) * 4096
    frame = seal(string_header(":event-type", "big"), payload)
    decoder = decoder_cls()
    messages = []
    for byte in one_byte_at_a_time(frame):
        messages += decoder.feed(byte)
    assert decoded(messages) == [({":event-type": (str, "big")}, payload)]
    assert decoder.buffered == 0
