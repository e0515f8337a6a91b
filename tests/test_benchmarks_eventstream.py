"""Micro benchmarks of the event-stream decoders, compiled (``c``) and pure Python (``py``).

Each case is grouped with its twin so pytest-benchmark's report shows the two side by side.
The ordinary test run passes ``--benchmark-disable``: every case then runs once, as a smoke
test, and still checks what it decoded. Timing runs: ``pytest tests/test_benchmarks_eventstream.py
--benchmark-only``. ``bench/eventstream.py`` is the macro benchmark (botocore as reference).

The implementation fixture is defined here, not taken from conftest.py, so this module stands
alone; the ``c`` param imports the extension directly, so a missing build is an error.
"""

from __future__ import annotations

import importlib
import zlib
from types import ModuleType
from typing import Any

import pytest

HEADERS = {
    ":event-type": "assistantResponseEvent",
    ":content-type": "application/json",
    ":message-type": "event",
}
#: Text fragments shaped like Kiro's stream (1-20 characters, some CJK).
TEXTS = ["Hello", ", ", "世界", "! How can", " I help you", " today?", "\\n", "我可以帮你", "ok"]
FRAMES = 2_000
FEED_SIZES = {"1frame": 0, "1k": 1024, "16k": 16 * 1024, "64k": 64 * 1024}


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("kiro_fast._eventstream", marks=pytest.mark.c_extension, id="c"),
        pytest.param("kiro_fast._eventstream_py", id="py"),
    ],
)
def codec(request: pytest.FixtureRequest) -> ModuleType:
    return importlib.import_module(request.param)


def payload(index: int) -> bytes:
    return b'{"content":"%s"}' % TEXTS[index % len(TEXTS)].encode()


@pytest.fixture(scope="module")
def frames(codec: ModuleType) -> list[bytes]:
    return [codec.encode_message(HEADERS, payload(i)) for i in range(FRAMES)]


def chunk(frames: list[bytes], size: int) -> list[bytes]:
    if not size:
        return frames
    stream = b"".join(frames)
    return [stream[i : i + size] for i in range(0, len(stream), size)]


def decode_all(decoder_cls: Any, chunks: list[bytes]) -> tuple[int, Any]:
    """Feed every chunk; return the message count and the last message."""
    decoder = decoder_cls()
    count, last = 0, None
    for data in chunks:
        messages = decoder.feed(data)
        if messages:
            count += len(messages)
            last = messages[-1]
    decoder.feed_eof()
    return count, last


@pytest.mark.parametrize("feed", FEED_SIZES)
def test_bench_decode_text_stream(
    benchmark: Any, codec: ModuleType, frames: list[bytes], feed: str
) -> None:
    benchmark.group = f"eventstream decode, {feed} feeds"
    count, last = benchmark(decode_all, codec.EventStreamDecoder, chunk(frames, FEED_SIZES[feed]))
    assert count == FRAMES
    assert last.payload == payload(FRAMES - 1)
    assert last.event_type == "assistantResponseEvent"
    assert last.message_type == "event"


def test_bench_decode_alternating_header_blocks(benchmark: Any, codec: ModuleType) -> None:
    """Text and tool-use frames in turn: every header block differs from the last one."""
    benchmark.group = "eventstream decode, header block changes every frame"
    tool_headers = {**HEADERS, ":event-type": "toolUseEvent"}
    tool_payload = b'{"input":"{\\"city\\"","name":"get_weather","toolUseId":"tooluse_1"}'
    stream = b"".join(
        codec.encode_message(HEADERS, payload(i)) + codec.encode_message(tool_headers, tool_payload)
        for i in range(FRAMES // 2)
    )
    count, last = benchmark(decode_all, codec.EventStreamDecoder, chunk([stream], 16 * 1024))
    assert count == FRAMES
    assert last.event_type == "toolUseEvent"
    assert last.payload == tool_payload


def test_bench_crc32_of_a_frame(benchmark: Any, codec: ModuleType) -> None:
    benchmark.group = "eventstream crc32, 137-byte frame"
    frame = codec.encode_message(HEADERS, b'{"content":"' + "一二三".encode() + b'abcdef"}')
    assert len(frame) == 137
    assert benchmark(codec.crc32, frame) == zlib.crc32(frame)
