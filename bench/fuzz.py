"""Long fuzz runs: millions of random cases through the properties the fuzz tests check.

```
.venv/bin/python bench/fuzz.py decoder|convert|http [--cases 1000000] [--seed 0]
.venv/bin/python bench/fuzz.py MODE --seed S --case I      # replay one case, verbosely
.venv/bin/python bench/fuzz.py decoder|convert --atheris [-- ATHERIS_FLAGS]
```

Modes and properties (the same oracles as the tests, fed by a plain ``random.Random``
instead of hypothesis, for throughput):

* ``decoder``: random event-stream messages (every header type), encoded, sometimes
  corrupted (a flipped byte, a truncation, a rewritten length with a valid prelude CRC),
  cut into random chunks of random buffer types, fed to the compiled and the pure-Python
  decoders. Both must return the same messages and raise the same error class after the
  same messages; intact streams must decode to exactly what was encoded, a flipped byte
  must raise the checksum error of its part, a cut stream ``TruncatedStream``.
* ``convert``: schema-shaped random Anthropic bodies (and OpenAI chat/responses bodies
  once ``kiro_fast.openai_convert`` exists), encoded three ways (lone surrogates
  escaped, written raw, or left out), through ``tests/test_fuzz_convert.py``'s oracle:
  a clean 400 or a body the fake upstream's validator accepts.
* ``http``: ``tests/test_fuzz_http.py``'s generator (mutated valid requests, random
  bytes) through ``HttpProtocol`` on a mock transport, many connections at once; its
  oracle: complete answers with allowed statuses and a close, nothing logged at ERROR,
  nothing stuck.

Case ``I`` of seed ``S`` is generated from its own ``random.Random``, so a failure is
replayed with ``--seed S --case I``. The first failure stops the run: its reproducer is
printed and written to ``--out`` (default ``./fuzz-failures``), and the exit status is 1.
Progress goes to stderr every ``--report`` seconds; the summary (cases, cases/s,
outcome shares) to stdout.

``--atheris`` runs a coverage-guided fuzzer instead (``pip install atheris``; optional,
nothing else depends on it): ``decoder`` feeds its raw input to both decoders, ``convert``
treats it as a request body. Atheris flags follow ``--`` (``-runs=N``, ``-max_len=N``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import orjson  # noqa: E402

from kiro_fast import _eventstream_py as py_codec  # noqa: E402
from kiro_fast import errors  # noqa: E402

#: Cases a seed's case index is mixed into; any odd constant keeps seeds apart.
SEED_STRIDE: Final = 1_000_003
#: Connections driven at once in ``http`` mode (their silences overlap).
HTTP_BATCH: Final = 200


# --------------------------------------------------------------------------- framework


class Failure(Exception):
    """A case broke its property."""


@dataclass
class Target:
    name: str
    generate: Callable[[random.Random], Any]
    check: Callable[[Any], str]
    describe: Callable[[Any], str]


def case_rng(seed: int, index: int) -> random.Random:
    return random.Random(seed * SEED_STRIDE + index)


def report_failure(
    target: Target, seed: int, index: int, case: Any, exc: BaseException, out: Path
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{target.name}-seed{seed}-case{index}.txt"
    detail = target.describe(case)
    path.write_text(f"{type(exc).__name__}: {exc}\n\n{detail}\n")
    print(f"FAILED {target.name} seed={seed} case={index}: {type(exc).__name__}: {exc}")
    print(f"reproducer written to {path}")
    print(f"replay: .venv/bin/python bench/fuzz.py {target.name} --seed {seed} --case {index}")


def run_serial(target: Target, args: argparse.Namespace) -> int:
    counts: Counter[str] = Counter()
    started = last = time.perf_counter()
    for index in range(args.cases):
        case = target.generate(case_rng(args.seed, index))
        try:
            counts[target.check(case)] += 1
        except Exception as exc:  # every escape is a finding
            report_failure(target, args.seed, index, case, exc, args.out)
            return 1
        now = time.perf_counter()
        if now - last >= args.report:
            last = now
            progress(target.name, index + 1, now - started, counts)
    summary(target.name, args.cases, time.perf_counter() - started, counts)
    return 0


def progress(name: str, done: int, elapsed: float, counts: Counter[str]) -> None:
    print(f"{name}: {done:,} cases, {done / elapsed:,.0f}/s", file=sys.stderr, flush=True)


def summary(name: str, cases: int, elapsed: float, counts: Counter[str]) -> None:
    print(
        f"{name}: {cases:,} cases in {elapsed:,.1f} s = {cases / elapsed:,.0f} cases/s, 0 failures"
    )
    for label, count in counts.most_common(12):
        print(f"  {count / cases:7.2%}  {label}")


def replay(target: Target, args: argparse.Namespace) -> int:
    case = target.generate(case_rng(args.seed, args.case))
    print(target.describe(case))
    try:
        print("outcome:", target.check(case))
    except Exception as exc:
        print(f"FAILED: {type(exc).__name__}: {exc}")
        raise
    return 0


# --------------------------------------------------------------------------- decoder

HEADER_NAMES: Final = [":event-type", ":content-type", ":message-type", ":exception-type", "x"]
INT_BITS: Final = {"int8": 8, "int16": 16, "int32": 32, "int64": 64, "timestamp": 64}
HEADER_KINDS: Final = ["bool", *INT_BITS, "bytes", "string", "uuid"]
PY_TYPE: Final = {"bool": bool, "bytes": bytes, "string": str, "uuid": uuid.UUID}
CHUNK_TYPES: Final = [bytes, bytearray, memoryview]


def header_value(kind: str, rng: random.Random) -> Any:
    if kind == "bool":
        return rng.random() < 0.5
    if kind in INT_BITS:
        bits = INT_BITS[kind]
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        return rng.choice((low, high, 0, -1, 1, rng.randint(low, high)))
    if kind == "bytes":
        return rng.randbytes(rng.choice((0, 1, 8, 48, 300)))
    if kind == "string":
        return "".join(rng.choice("aé日😀\x00 ") for _ in range(rng.choice((0, 1, 8, 40))))
    return uuid.UUID(bytes=rng.randbytes(16))


def random_headers(rng: random.Random) -> dict[str, tuple[str, Any]]:
    headers = {}
    for _ in range(rng.choice((0, 1, 3, 3, 6))):
        name = rng.choice((*HEADER_NAMES, "h" * rng.randint(1, 255), "é" * rng.randint(1, 127)))
        kind = rng.choice(HEADER_KINDS)
        headers[name] = (kind, header_value(kind, rng))
    return headers


def encoder_input(headers: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    return {
        name: (kind, value) if kind in INT_BITS else value
        for name, (kind, value) in headers.items()
    }


@dataclass
class DecoderCase:
    frames: list[tuple[dict[str, tuple[str, Any]], bytes, bytes]]  # headers, payload, frame
    stream: bytes
    corruption: str
    good: int  # frames every decoder must deliver before the fault
    allowed: tuple[type[errors.EventStreamError], ...]
    chunks: list[Any]


def generate_decoder(rng: random.Random) -> DecoderCase:
    frames: list[tuple[dict[str, tuple[str, Any]], bytes, bytes]] = []
    headers: dict[str, tuple[str, Any]] = {}
    for _ in range(rng.randint(1, 5)):
        if not frames or rng.random() < 0.5:
            headers = random_headers(rng)
        payload = rng.randbytes(rng.choice((0, 1, 20, 300, 2000)))
        frames.append((headers, payload, py_codec.encode_message(encoder_input(headers), payload)))
    stream = b"".join(frame for _, _, frame in frames)
    corruption = rng.choice(("none", "none", "flip", "truncate", "length"))
    good = len(frames)
    allowed: tuple[type[errors.EventStreamError], ...] = ()
    starts = frame_starts(frames)
    if corruption == "flip":
        position = rng.randrange(len(stream))
        stream = (
            stream[:position]
            + bytes([stream[position] ^ rng.randint(1, 255)])
            + stream[position + 1 :]
        )
        good = max(i for i, start in enumerate(starts) if start <= position)
        in_prelude = position - starts[good] < 12
        allowed = (
            errors.PreludeChecksumMismatch if in_prelude else errors.MessageChecksumMismatch,
        )
    elif corruption == "truncate":
        good = rng.randrange(len(frames))
        stream = stream[: rng.randint(starts[good] + 1, starts[good] + len(frames[good][2]) - 1)]
        allowed = (errors.TruncatedStream,)
    elif corruption == "length":
        good = rng.randrange(len(frames))
        stream = relength(stream, starts[good], rng)
        allowed = (errors.EventStreamError,)  # differential only: which one is the test's job
    kind = rng.choice(CHUNK_TYPES)
    cuts = sorted(rng.randrange(len(stream) + 1) for _ in range(rng.choice((0, 1, 3, 16))))
    bounds = [0, *cuts, len(stream)]
    chunks = [kind(stream[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    return DecoderCase(frames, stream, corruption, good, allowed, chunks)


def frame_starts(frames: Sequence[tuple[Any, Any, bytes]]) -> list[int]:
    starts, offset = [], 0
    for _, _, frame in frames:
        starts.append(offset)
        offset += len(frame)
    return starts


def relength(stream: bytes, start: int, rng: random.Random) -> bytes:
    import struct  # noqa: PLC0415
    import zlib  # noqa: PLC0415

    total, headers_length = struct.unpack_from(">II", stream, start)
    edges = (0, 12, 15, 16, 128 * 1024, 128 * 1024 + 1, 16 * 1024 * 1024 + 1, 2**32 - 1)
    new = rng.choice((rng.randint(max(0, total - 20), total + 20), rng.choice(edges)))
    if rng.random() < 0.5:
        total = new if new != total else total ^ 1
    else:
        headers_length = new if new != headers_length else headers_length ^ 1
    head = struct.pack(">II", total, headers_length)
    return stream[:start] + head + struct.pack(">I", zlib.crc32(head)) + stream[start + 12 :]


def decode(decoder_cls: Any, chunks: list[Any]) -> tuple[list[Any], type | None]:
    decoder = decoder_cls()
    out: list[Any] = []
    try:
        for chunk in chunks:
            out += decoder.feed(chunk)
        decoder.feed_eof()
    except errors.EventStreamError as exc:
        return out + exc.messages, type(exc)
    return out, None


def typed(message: Any) -> tuple[dict[str, tuple[type, Any]], bytes]:
    return {k: (type(v), v) for k, v in message.headers.items()}, message.payload


def expected(
    headers: dict[str, tuple[str, Any]], payload: bytes
) -> tuple[dict[str, tuple[type, Any]], bytes]:
    return {k: (PY_TYPE.get(kind, int), v) for k, (kind, v) in headers.items()}, payload


def differential(chunks: list[Any]) -> tuple[list[Any], type | None]:
    """Both decoders on the same chunks: they must agree; returns the compiled one's result."""
    from kiro_fast import _eventstream as c_codec  # noqa: PLC0415

    got, error = decode(c_codec.EventStreamDecoder, chunks)
    reference, reference_error = decode(py_codec.EventStreamDecoder, [bytes(c) for c in chunks])
    if error is not reference_error:
        raise Failure(f"C raised {error}, Python {reference_error}")
    if [typed(m) for m in got] != [typed(m) for m in reference]:
        raise Failure("C and Python decoded different messages")
    return got, error


def check_decoder(case: DecoderCase) -> str:
    got, error = differential(case.chunks)
    want = [expected(h, p) for h, p, _ in case.frames[: case.good]]
    if case.corruption != "length" and [typed(m) for m in got] != want:
        raise Failure(f"decoded {len(got)} messages, wanted the first {case.good} intact")
    if case.allowed and (error is None or not issubclass(error, case.allowed)):
        raise Failure(f"{case.corruption}: raised {error}, allowed {case.allowed}")
    if not case.allowed and error is not None:
        raise Failure(f"intact stream raised {error.__name__}")
    return f"{case.corruption}: {error.__name__ if error else 'ok'}"


def describe_decoder(case: DecoderCase) -> str:
    return (
        f"corruption: {case.corruption}\nframes: {len(case.frames)}, good: {case.good}\n"
        f"chunks ({type(case.chunks[0]).__name__}): {[bytes(c) for c in case.chunks]!r}"
    )


DECODER = Target("decoder", generate_decoder, check_decoder, describe_decoder)


# --------------------------------------------------------------------------- convert

PNG: Final = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "YPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
MODELS: Final = [
    "claude-sonnet-4-5",
    "claude-opus-4-6-thinking",
    "claude-haiku-4-5",
    "claude-3-7-sonnet-latest",
    "claude-sonnet-4.6[1m]",
    "gpt-4o",
    "claude-unknown-9",
    "llama-3",
    "",
]
TOOL_NAMES: Final = [
    "get_weather",
    "Read",
    "read",
    "Write",
    "mcp__s__do.thing",
    "bad name!",
    "9x",
    "y" * 64,
    "日本",
]
TOOL_IDS: Final = ["toolu_1", "toolu_2", "toolu_3", ""]
CHARS: Final = 'abc xyz\n\t{}"\\<>/é日😀\x00\u2028'
SURROGATES: Final = "\ud800\udfff\ud83d"
WRONG: Final = [None, True, 0, -1, 2**70, 1.5, "", "x", [], [1], {}, {"a": 1}]


class BodyGen:
    """Random Anthropic/OpenAI bodies; ``wrong`` is the chance of a wrong-typed field."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.wrong = rng.choice((0.0, 0.01, 0.03, 0.1))

    def maybe(self, value: Callable[[], Any]) -> Any:
        return self.rng.choice(WRONG) if self.rng.random() < self.wrong else value()

    def text(self) -> str:
        rng = self.rng
        roll = rng.random()
        if roll < 0.02:
            return rng.choice("aé😀 ") * rng.choice((10_001, 599_999, 600_001, 800_001))
        alphabet = CHARS + (SURROGATES if roll < 0.1 else "")
        return "".join(rng.choice(alphabet) for _ in range(rng.choice((0, 1, 5, 30))))

    def json_value(self, depth: int = 0) -> Any:
        rng = self.rng
        roll = rng.random()
        if depth > 3 or roll < 0.5:
            return rng.choice((None, True, 1, -7, 2.5, "s", self.text()))
        if roll < 0.75:
            return [self.json_value(depth + 1) for _ in range(rng.randint(0, 3))]
        return {self.text(): self.json_value(depth + 1) for _ in range(rng.randint(0, 3))}

    def deep(self) -> Any:
        # orjson writes at most 255 levels and json.dumps recurses: 700 is as deep as both
        # encoders here can go; the app's parser stops at 1,024 (tests/test_bad_input.py)
        depth = self.rng.choice((63, 65, 256, 300, 700))
        return orjson.loads("[" * depth + "]" * depth)

    def schema(self, depth: int = 0) -> Any:
        rng = self.rng
        if rng.random() < 0.05:
            return rng.choice(WRONG)
        node: dict[str, Any] = {}
        if rng.random() < 0.8:
            node["type"] = rng.choice(
                ("object", "string", "array", "integer", "null", "any", ["string", "null"], 5)
            )
        if depth < 3 and rng.random() < 0.5:
            node["properties"] = {
                rng.choice(("a", "b", "$ref", "")): self.schema(depth + 1)
                for _ in range(rng.randint(0, 3))
            }
        if rng.random() < 0.3:
            node["required"] = self.maybe(lambda: [rng.choice(("a", "b", "zz"))])
        if depth < 3 and rng.random() < 0.2:
            node[
                rng.choice(("items", "anyOf", "oneOf", "allOf", "not", "additionalProperties"))
            ] = [self.schema(depth + 1)] if rng.random() < 0.5 else self.schema(depth + 1)
        for key in ("enum", "const", "default", "$schema", "format", "pattern", "description"):
            if rng.random() < 0.05:
                node[key] = self.json_value(2)
        return node

    def source(self) -> dict[str, Any]:
        rng = self.rng
        kind = rng.choice(("base64", "base64", "base64", "url", "file", "bogus"))
        if kind == "base64":
            data = rng.choice((PNG, "data:image/png;base64," + PNG, "!!", "", "QUFB" * 600))
            media = rng.choice(
                ("image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "")
            )
            return {
                "type": kind,
                "media_type": self.maybe(lambda: media),
                "data": self.maybe(lambda: data),
            }
        return {"type": kind, "url": "https://x/y.png", "file_id": "file_1"}

    def block(self, depth: int = 0) -> Any:
        rng = self.rng
        kind = rng.choice(
            (
                "text",
                "text",
                "image",
                "tool_use",
                "tool_use",
                "tool_result",
                "tool_result",
                "thinking",
                "other",
            )
        )
        if kind == "text":
            return {"type": "text", "text": self.maybe(self.text)}
        if kind == "image":
            return {"type": "image", "source": self.maybe(self.source)}
        if kind == "tool_use":
            tool_input = rng.choice((lambda: {"k": self.json_value()}, lambda: None, self.deep))()
            return {
                "type": "tool_use",
                "id": self.maybe(lambda: rng.choice(TOOL_IDS)),
                "name": self.maybe(lambda: rng.choice(TOOL_NAMES)),
                "input": self.maybe(lambda: tool_input),
            }
        if kind == "tool_result":
            content = rng.choice(
                (
                    self.text,
                    lambda: None,
                    lambda: (
                        [self.block(depth + 1) for _ in range(rng.randint(0, 2))]
                        if depth < 1
                        else []
                    ),
                    self.json_value,
                )
            )()
            return {
                "type": "tool_result",
                "tool_use_id": self.maybe(lambda: rng.choice(TOOL_IDS)),
                "content": content,
                "is_error": self.maybe(lambda: rng.random() < 0.3),
            }
        if kind == "thinking":
            return {
                "type": "thinking",
                "thinking": self.maybe(lambda: rng.choice((self.text(), "</thinking>"))),
                "signature": "sig",
            }
        return rng.choice(
            (
                {"type": "redacted_thinking", "data": "x"},
                {"type": "document", "source": {"type": "text", "data": "d"}},
                {"type": "server_tool_use", "id": "s1", "name": "web_search", "input": {}},
                {"type": "web_search_tool_result", "tool_use_id": "s1", "content": []},
                {"type": "hologram"},
                {"text": "no type"},
                rng.choice(WRONG),
            )
        )

    def message(self) -> Any:
        rng = self.rng
        role = self.maybe(
            lambda: rng.choice(("user", "user", "assistant", "assistant", "system", "developer"))
        )
        content = self.maybe(
            lambda: (
                self.text()
                if rng.random() < 0.3
                else [self.block() for _ in range(rng.randint(0, 4))]
            )
        )
        return {"role": role, "content": content}

    def tool(self) -> Any:
        rng = self.rng
        if rng.random() < 0.05:
            return rng.choice(
                (
                    {"type": "web_search_20250305", "name": "web_search"},
                    {"type": "bash_20250124", "name": "bash"},
                    rng.choice(WRONG),
                )
            )
        tool: dict[str, Any] = {"name": self.maybe(lambda: rng.choice(TOOL_NAMES))}
        if rng.random() < 0.8:
            tool["description"] = self.maybe(self.text)
        if rng.random() < 0.9:
            tool["input_schema"] = self.deep() if rng.random() < 0.02 else self.schema()
        return tool

    def anthropic(self) -> dict[str, Any]:
        rng = self.rng
        body: dict[str, Any] = {
            "model": self.maybe(lambda: rng.choice(MODELS)),
            "messages": self.maybe(lambda: [self.message() for _ in range(rng.randint(1, 8))]),
        }
        if rng.random() < 0.5:
            body["max_tokens"] = self.maybe(lambda: 1024)
        if rng.random() < 0.4:
            body["system"] = self.maybe(
                lambda: (
                    self.text()
                    if rng.random() < 0.5
                    else [
                        {
                            "type": "text",
                            "text": rng.choice(
                                ("x-anthropic-billing-header: cc;\nrest", self.text())
                            ),
                        }
                    ]
                )
            )
        if rng.random() < 0.5:
            body["tools"] = self.maybe(lambda: [self.tool() for _ in range(rng.randint(0, 4))])
        if rng.random() < 0.3:
            body["thinking"] = self.maybe(
                lambda: rng.choice(
                    (
                        {"type": "enabled", "budget_tokens": rng.choice((0, 1024, 30000, -1, "x"))},
                        {"type": "adaptive"},
                        {"type": "disabled"},
                        {"type": "on"},
                    )
                )
            )
        if rng.random() < 0.2:
            body["output_config"] = self.maybe(
                lambda: {
                    "effort": rng.choice(("low", "max", "extreme")),
                    "format": {"type": "json_schema", "schema": self.schema()},
                }
            )
        if rng.random() < 0.1:
            body["metadata"] = {
                "user_id": rng.choice(
                    ("u_session_6f1c2d3e-4b5a-4978-8e9f-0a1b2c3d4e5f", '{"session_id":5}', "x")
                )
            }
        return body

    def openai_chat(self) -> dict[str, Any]:
        rng = self.rng
        messages: list[Any] = [{"role": "user", "content": self.text()}]
        for _ in range(rng.randint(0, 6)):
            role = rng.choice(("system", "developer", "user", "assistant", "tool", "bot"))
            message: dict[str, Any] = {"role": role, "content": self.maybe(self.text)}
            if role == "user" and rng.random() < 0.3:
                message["content"] = [
                    {"type": "text", "text": self.text()},
                    {
                        "type": "image_url",
                        "image_url": {
                            "url": rng.choice(
                                ("data:image/png;base64," + PNG, "https://x/y.png", "data:,")
                            )
                        },
                    },
                ]
            if role == "assistant" and rng.random() < 0.5:
                message["tool_calls"] = [
                    {
                        "id": self.maybe(lambda: rng.choice(TOOL_IDS)),
                        "type": "function",
                        "function": {
                            "name": self.maybe(lambda: rng.choice(TOOL_NAMES)),
                            "arguments": self.maybe(
                                lambda: rng.choice(("{}", '{"a":1}', "{", "[1]"))
                            ),
                        },
                    }
                ]
            if role == "tool":
                message["tool_call_id"] = self.maybe(lambda: rng.choice(TOOL_IDS))
            messages.append(message if rng.random() > self.wrong else rng.choice(WRONG))
        body: dict[str, Any] = {
            "model": self.maybe(lambda: rng.choice(MODELS)),
            "messages": messages,
        }
        if rng.random() < 0.4:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": self.maybe(lambda: rng.choice(TOOL_NAMES)),
                        "description": self.text(),
                        "parameters": self.schema(),
                    },
                }
            ]
        if rng.random() < 0.2:
            body["reasoning_effort"] = self.maybe(
                lambda: rng.choice(("low", "high", "minimal", "none", "x"))
            )
        if rng.random() < 0.2:
            body["response_format"] = self.maybe(
                lambda: {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": self.schema()},
                }
            )
        return body

    def openai_responses(self) -> dict[str, Any]:
        rng = self.rng
        items: list[Any] = []
        for _ in range(rng.randint(1, 6)):
            kind = rng.choice(
                ("message", "message", "function_call", "function_call_output", "reasoning")
            )
            if kind == "message":
                items.append(
                    {
                        "role": rng.choice(("user", "assistant", "system")),
                        "content": self.maybe(
                            lambda: rng.choice(
                                (self.text(), [{"type": "input_text", "text": self.text()}])
                            )
                        ),
                    }
                )
            elif kind == "function_call":
                items.append(
                    {
                        "type": kind,
                        "call_id": self.maybe(lambda: rng.choice(TOOL_IDS)),
                        "name": self.maybe(lambda: rng.choice(TOOL_NAMES)),
                        "arguments": rng.choice(("{}", "{")),
                    }
                )
            elif kind == "function_call_output":
                items.append(
                    {
                        "type": kind,
                        "call_id": self.maybe(lambda: rng.choice(TOOL_IDS)),
                        "output": self.maybe(self.text),
                    }
                )
            else:
                items.append({"type": kind})
        body: dict[str, Any] = {
            "model": self.maybe(lambda: rng.choice(MODELS)),
            "input": self.maybe(lambda: items if rng.random() < 0.8 else self.text()),
        }
        if rng.random() < 0.3:
            body["instructions"] = self.maybe(self.text)
        if rng.random() < 0.3:
            body["tools"] = [
                {
                    "type": "function",
                    "name": self.maybe(lambda: rng.choice(TOOL_NAMES)),
                    "parameters": self.schema(),
                }
            ]
        return body


def encode(body: Any, how: str) -> bytes:
    if how == "ascii":
        return json.dumps(body, ensure_ascii=True).encode()
    if how == "utf8":
        return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
    try:
        return orjson.dumps(body)
    except TypeError:  # a lone surrogate or nesting orjson will not write
        return json.dumps(body).encode()


@dataclass
class ConvertCase:
    route: str
    raw: bytes
    options: int
    session: str


def openai_available() -> bool:
    import importlib.util  # noqa: PLC0415

    return importlib.util.find_spec("kiro_fast.openai_convert") is not None


ROUTES: Final = (
    ["anthropic", "anthropic", "chat", "responses"] if openai_available() else ["anthropic"]
)


def generate_convert(rng: random.Random) -> ConvertCase:
    gen = BodyGen(rng)
    route = rng.choice(ROUTES)
    body = {"anthropic": gen.anthropic, "chat": gen.openai_chat, "responses": gen.openai_responses}[
        route
    ]()
    how = rng.choice(("orjson", "orjson", "ascii", "utf8"))
    session = rng.choice(("", "6f1c2d3e-4b5a-4978-8e9f-0a1b2c3d4e5f", "x"))
    return ConvertCase(route, encode(body, how), rng.randrange(4), session)


def check_convert(case: ConvertCase) -> str:
    import test_fuzz_convert as oracle  # noqa: PLC0415

    options = oracle.OPTION_SETS[case.options]
    if case.route == "anthropic":
        return "anthropic " + oracle.check_anthropic_body(case.raw, options, case.session)
    return case.route + " " + oracle.check_openai_body(case.raw, case.route, options)


def describe_convert(case: ConvertCase) -> str:
    raw = case.raw if len(case.raw) < 20_000 else case.raw[:20_000] + b"...(truncated)"
    return (
        f"route: {case.route}\noption set: {case.options}\nsession: {case.session!r}\nbody: {raw!r}"
    )


CONVERT = Target("convert", generate_convert, check_convert, describe_convert)


# --------------------------------------------------------------------------- http


@dataclass
class HttpCase:
    chunks: list[bytes]
    eof: bool


def generate_http(rng: random.Random) -> HttpCase:
    import test_fuzz_http as oracle  # noqa: PLC0415

    make = oracle.mutated_case if rng.random() < 0.7 else oracle.random_bytes_case
    chunks, eof = make(rng)
    return HttpCase(chunks, eof)


def check_http(case: HttpCase) -> str:
    import test_fuzz_http as oracle  # noqa: PLC0415

    return str(run_loop(oracle.run_and_check_async(case.chunks, case.eof)))


def describe_http(case: HttpCase) -> str:
    return f"eof: {case.eof}\nchunks: {case.chunks!r}"


HTTP = Target("http", generate_http, check_http, describe_http)

_LOOP: asyncio.AbstractEventLoop | None = None


def run_loop(coro: Any) -> Any:
    global _LOOP
    if _LOOP is None:
        import uvloop  # noqa: PLC0415

        _LOOP = uvloop.new_event_loop()
    return _LOOP.run_until_complete(coro)


def run_http(args: argparse.Namespace) -> int:
    """Batches of connections at once; a batch that logs an error is replayed case by case
    to find the culprit (errors are not attributable while connections interleave)."""
    import test_fuzz_http as oracle  # noqa: PLC0415

    counts: Counter[str] = Counter()
    started = last = time.perf_counter()
    for first in range(0, args.cases, HTTP_BATCH):
        indexes = range(first, min(first + HTTP_BATCH, args.cases))
        cases = [generate_http(case_rng(args.seed, i)) for i in indexes]
        labels, errors_seen = run_loop(http_batch(oracle, cases))
        if errors_seen or any(isinstance(label, BaseException) for label in labels):
            for index, case in zip(indexes, cases, strict=True):
                try:
                    check_http(case)
                except Exception as exc:
                    report_failure(HTTP, args.seed, index, case, exc, args.out)
                    return 1
            failures = [label for label in labels if isinstance(label, BaseException)]
            print(f"a batch of {len(cases)} cases from case {first} failed, no single case")
            print(f"reproduces it (timing under load?); errors logged: {errors_seen}")
            for failure in failures[:1]:
                traceback.print_exception(failure)
            return 1
        counts.update(labels)
        now = time.perf_counter()
        if now - last >= args.report:
            last = now
            progress("http", indexes[-1] + 1, now - started, counts)
    summary("http", args.cases, time.perf_counter() - started, counts)
    return 0


async def http_batch(oracle: Any, cases: list[HttpCase]) -> tuple[list[Any], list[str]]:
    async def one(case: HttpCase) -> Any:
        outcome = await oracle.drive_case(case.chunks, eof=case.eof)
        return oracle.check_outcome(outcome)

    with oracle.ErrorCapture() as capture:
        labels = await asyncio.gather(*(one(case) for case in cases), return_exceptions=True)
    return labels, capture.errors


# --------------------------------------------------------------------------- atheris


def run_atheris(mode: str, extra: list[str]) -> int:
    try:
        import atheris  # type: ignore[import-untyped]  # noqa: PLC0415
    except ImportError:
        print("atheris is not installed: pip install atheris", file=sys.stderr)
        return 2
    import test_fuzz_convert as convert_oracle  # noqa: PLC0415

    # Everything is imported by now; instrument what is loaded (kiro_fast's pure-Python
    # decoder, converter and normaliser included) for coverage feedback.
    atheris.instrument_all()

    def decoder_input(data: bytes) -> None:
        provider = atheris.FuzzedDataProvider(data)
        cut = provider.ConsumeIntInRange(0, 64)
        stream = provider.ConsumeBytes(len(data))
        chunks = [stream[i : i + cut] for i in range(0, len(stream), cut)] if cut else [stream]
        differential(chunks)

    def convert_input(data: bytes) -> None:
        convert_oracle.check_anthropic_body(data)

    atheris.Setup([sys.argv[0], *extra], decoder_input if mode == "decoder" else convert_input)
    atheris.Fuzz()
    return 0


# --------------------------------------------------------------------------- main

TARGETS: Final = {"decoder": DECODER, "convert": CONVERT, "http": HTTP}


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="bench/fuzz.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=sorted(TARGETS))
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--case", type=int, help="replay this one case of --seed")
    parser.add_argument("--report", type=float, default=10.0, help="seconds between progress lines")
    parser.add_argument("--out", type=Path, default=Path("fuzz-failures"))
    parser.add_argument("--atheris", action="store_true", help="coverage-guided (decoder, convert)")
    return parser.parse_args(argv), extra


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = parse_args(argv)
    target = TARGETS[args.mode]
    if args.atheris:
        return run_atheris(args.mode, extra)
    if args.case is not None:
        return replay(target, args)
    if args.mode == "http":
        return run_http(args)
    return run_serial(target, args)


if __name__ == "__main__":
    sys.exit(main())
