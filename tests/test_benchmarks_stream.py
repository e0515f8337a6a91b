"""Benchmarks: the per-event path from decoded upstream messages to Anthropic SSE bytes.

Each benchmark converts one realistic 1,000-frame response, fed one message per call with one
``take()`` after each (the trickle regime: one frame per upstream read). Decoding is not
included. Under the default ``--benchmark-disable`` each runs once as a smoke test; measure
with ``pytest tests/test_benchmarks_stream.py --benchmark-enable`` and divide by 1,000 for
µs per event.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from kiro_fast.anthropic_sse import AnthropicSSESink
from kiro_fast.eventstream import EventStreamDecoder, encode_message
from kiro_fast.stream import StreamConverter

FRAMES = 1000
_WORDS = ["The", " quick", " brown fox", " jumps over", " the lazy dog", ".", "\n\n", " It's"]


def _event(event_type: str, payload: dict[str, Any]) -> bytes:
    headers = {
        ":event-type": event_type,
        ":content-type": "application/json",
        ":message-type": "event",
    }
    return encode_message(headers, orjson.dumps(payload, option=orjson.OPT_SORT_KEYS))


def _text(content: str) -> bytes:
    return _event("assistantResponseEvent", {"content": content})


def _ending() -> list[bytes]:
    return [
        _event("meteringEvent", {"unit": "credit", "unitPlural": "credits", "usage": 0.02}),
        _event("contextUsageEvent", {"contextUsagePercentage": 12.5}),
    ]


def text_stream() -> list[bytes]:
    return [_text(_WORDS[i % len(_WORDS)]) for i in range(FRAMES - 2)] + _ending()


def thinking_stream() -> list[bytes]:
    frames = [_text("\n\n"), _text("<thin"), _text("king>\n")]
    frames += [_text(_WORDS[i % len(_WORDS)]) for i in range(300)]
    frames += [_text("\n</thinking"), _text(">\n\n")]
    frames += [_text(_WORDS[i % len(_WORDS)]) for i in range(FRAMES - len(frames) - 2)]
    return frames + _ending()


def tool_stream() -> list[bytes]:
    frames = [_text("I'll write the files.")]
    body = "line of a source file with some code in it;\\n"
    for call in range(10):
        tool_id = f"tooluse_{call:022d}"
        frames.append(_event("toolUseEvent", {"name": "Write", "toolUseId": tool_id}))
        frames.append(
            _event(
                "toolUseEvent",
                {
                    "input": '{"file_path":"/src/f.py","content":"',
                    "name": "Write",
                    "toolUseId": tool_id,
                },
            )
        )
        for _ in range(95):
            frames.append(
                _event("toolUseEvent", {"input": body, "name": "Write", "toolUseId": tool_id})
            )
        frames.append(
            _event("toolUseEvent", {"input": '"}', "name": "Write", "toolUseId": tool_id})
        )
        frames.append(_event("toolUseEvent", {"name": "Write", "stop": True, "toolUseId": tool_id}))
    frames += [_text(".")] * (FRAMES - len(frames) - 2)
    return frames + _ending()


def _decoded(frames: list[bytes]) -> list[list[Any]]:
    decoder = EventStreamDecoder()
    reads = [decoder.feed(frame) for frame in frames]
    assert len(reads) == FRAMES and all(len(r) == 1 for r in reads)
    return reads


def _convert(reads: list[list[Any]], thinking: bool) -> bytes:
    sink = AnthropicSSESink("claude-sonnet-4-5", "msg_bench", input_estimate=1000)
    converter = StreamConverter(sink, thinking=thinking, context_window=200_000, input_tokens=1000)
    converter.start()
    out = []
    for messages in reads:
        converter.feed(messages)
        out.append(sink.take())
    converter.finish()
    out.append(sink.take())
    return b"".join(out)


@pytest.mark.parametrize(
    ("stream", "thinking", "expected"),
    [
        (text_stream, False, b'"stop_reason":"end_turn"'),
        (thinking_stream, True, b'"thinking_delta"'),
        (tool_stream, False, b'"stop_reason":"tool_use"'),
    ],
    ids=["text", "thinking", "tools"],
)
def test_convert_1000_frames(benchmark, stream, thinking, expected):
    reads = _decoded(stream())
    data = benchmark(_convert, reads, thinking)
    assert expected in data
    assert data.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
