"""Event-stream decoder benchmark: C decoder, pure-Python decoder and botocore, side by side.

Builds a deterministic (seeded) stream shaped like Kiro's text stream: ``assistantResponseEvent``
frames with the three string headers AWS sends (``:event-type``, ``:content-type``,
``:message-type``) and a ``{"content":"…"}`` payload of 1-20 characters, about 20 % of them CJK
(≈137 bytes a frame). The stream is fed in four chunkings (one frame per feed, 1 KiB, 16 KiB,
64 KiB) to every decoder; each feed's messages are counted and dropped, as a relay would.
botocore's ``EventStreamBuffer`` gets the same chunks and is the reference: the figures that
count are ratios against it within one round, because the machine is shared and absolute
speeds drift between rounds.

Usage::

    python bench/eventstream.py [--frames N] [--rounds R] [--seed S]

Each round runs every (decoder, chunking) pair once, in a rotating order. The table gives
medians over rounds: absolute figures are medians of the timings, ratios are medians of the
per-round ratios. bench/README.md says how to read it.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kiro_fast import _eventstream_py  # noqa: E402

#: The chunkings, by label; ``None`` means one frame per feed.
FEED_SIZES: dict[str, int | None] = {
    "1 frame": None,
    "1 KiB": 1024,
    "16 KiB": 16 * 1024,
    "64 KiB": 64 * 1024,
}
#: Issue 2's targets: C vs botocore by chunking, Python vs botocore at every chunking, and
#: the C decoder's 64 KiB / 16 KiB ns-per-frame ratio.
TARGETS_C = {"1 frame": 30.0, "16 KiB": 50.0}
TARGET_PY = 5.0
TARGET_C_64_OVER_16 = 1.3

CJK_SHARE = 0.2
#: Common CJK characters (3 bytes each in UTF-8).
CJK = "的一是不了人我在有他这中大来上个国到说们为子和你地出道也时年得就那要下以会可生天"
ASCII = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?-_'()\n"
HEADERS = {
    ":event-type": "assistantResponseEvent",
    ":content-type": "application/json",
    ":message-type": "event",
}
ORDER = ["C", "Python", "botocore"]

Decode = Callable[[Sequence[bytes]], int]
Timings = dict[tuple[str, str], list[float]]


def build_frames(count: int, seed: int) -> list[bytes]:
    """``count`` encoded frames; the same ``seed`` gives the same bytes."""
    rng = random.Random(seed)
    frames = []
    for _ in range(count):
        text = "".join(
            rng.choice(CJK) if rng.random() < CJK_SHARE else rng.choice(ASCII)
            for _ in range(rng.randint(1, 20))
        )
        # The upstream writes compact JSON with raw UTF-8.
        payload = json.dumps({"content": text}, ensure_ascii=False, separators=(",", ":"))
        frames.append(_eventstream_py.encode_message(HEADERS, payload.encode()))
    return frames


def chunkings(frames: list[bytes]) -> dict[str, list[bytes]]:
    stream = b"".join(frames)
    chunked = {}
    for label, size in FEED_SIZES.items():
        chunked[label] = (
            frames if size is None else [stream[i : i + size] for i in range(0, len(stream), size)]
        )
    return chunked


def kiro_fast_run(decoder_cls: Any) -> Decode:
    def run(chunks: Sequence[bytes]) -> int:
        decoder = decoder_cls()
        feed = decoder.feed
        count = 0
        for data in chunks:
            count += len(feed(data))
        decoder.feed_eof()
        return count

    return run


def botocore_run() -> Decode:
    from botocore.eventstream import EventStreamBuffer

    def run(chunks: Sequence[bytes]) -> int:
        buffer = EventStreamBuffer()
        add = buffer.add_data
        count = 0
        for data in chunks:
            add(data)
            for _ in buffer:
                count += 1
        return count

    return run


def decoder_classes() -> dict[str, Any]:
    classes: dict[str, Any] = {}
    try:
        from kiro_fast._eventstream import EventStreamDecoder
    except ImportError:
        print("!! kiro_fast._eventstream is not built: the C decoder is skipped", file=sys.stderr)
    else:
        classes["C"] = EventStreamDecoder
    classes["Python"] = _eventstream_py.EventStreamDecoder
    return classes


def check_agreement(
    frames: list[bytes], chunked: dict[str, list[bytes]], runs: dict[str, Decode]
) -> None:
    """Before anything is timed, every decoder must return every frame at every chunking,
    and the kiro_fast decoders must return equal messages."""
    for label, chunks in chunked.items():
        for name, run in runs.items():
            got = run(chunks)
            if got != len(frames):
                raise SystemExit(f"{name} decoded {got} of {len(frames)} frames ({label} feeds)")
    stream = b"".join(frames)
    decoded = [cls().feed(stream) for cls in decoder_classes().values()]
    if any(messages != decoded[0] for messages in decoded):
        raise SystemExit("the C and Python decoders disagree on the decoded messages")


def measure(
    count: int, chunked: dict[str, list[bytes]], runs: dict[str, Decode], rounds: int
) -> Timings:
    """ns per frame of every (decoder, chunking) pair, one list entry per round."""
    pairs = [(name, label) for label in chunked for name in runs]
    timings: Timings = {pair: [] for pair in pairs}
    for round_no in range(rounds):
        # Rotate the order so that no pair always runs first (cold caches) or last.
        shift = round_no % len(pairs)
        for name, label in pairs[shift:] + pairs[:shift]:
            gc.collect()
            start = time.perf_counter_ns()
            runs[name](chunked[label])
            timings[name, label].append((time.perf_counter_ns() - start) / count)
    return timings


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(numerators, denominators, strict=True))


def report(frames: list[bytes], timings: Timings, rounds: int) -> None:
    names = sorted({name for name, _ in timings}, key=ORDER.index)
    mean = sum(map(len, frames)) / len(frames)
    print(f"{len(frames):,} frames, {mean:.1f} B/frame mean, {rounds} rounds (medians)\n")
    print(f"{'decoder':<9} {'feed':<8} {'frames/s':>12} {'ns/frame':>10} {'x botocore':>11}")
    for label in FEED_SIZES:
        for name in names:
            ns = statistics.median(timings[name, label])
            ratio = median_ratio(timings["botocore", label], timings[name, label])
            print(f"{name:<9} {label:<8} {1e9 / ns:>12,.0f} {ns:>10,.0f} {ratio:>10.1f}x")
        print()
    print("64 KiB / 16 KiB ns per frame:")
    for name in names:
        slow = median_ratio(timings[name, "64 KiB"], timings[name, "16 KiB"])
        print(f"  {name:<9} {slow:.2f}")
    print("\ntargets (issue 2):")
    for text, measured, met in targets(timings, names):
        print(f"  {'met ' if met else 'MISS'}  {text:<32} measured {measured:.2f}")


def targets(timings: Timings, names: list[str]) -> list[tuple[str, float, bool]]:
    rows = []
    if "C" in names:
        for label, want in TARGETS_C.items():
            got = median_ratio(timings["botocore", label], timings["C", label])
            rows.append((f"C {label} >= {want:g}x botocore", got, got >= want))
        slow = median_ratio(timings["C", "64 KiB"], timings["C", "16 KiB"])
        rows.append(
            (f"C 64 KiB <= {TARGET_C_64_OVER_16:g}x 16 KiB", slow, slow <= TARGET_C_64_OVER_16)
        )
    for label in FEED_SIZES:
        got = median_ratio(timings["botocore", label], timings["Python", label])
        rows.append((f"Python {label} >= {TARGET_PY:g}x botocore", got, got >= TARGET_PY))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Event-stream decoders vs botocore.")
    parser.add_argument("--frames", type=int, default=100_000, help="frames in the stream")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; medians are reported")
    parser.add_argument("--seed", type=int, default=2, help="seed of the stream's content")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.rounds < 1:
        parser.error("--frames and --rounds must be positive")
    frames = build_frames(args.frames, args.seed)
    chunked = chunkings(frames)
    runs = {name: kiro_fast_run(cls) for name, cls in decoder_classes().items()}
    runs["botocore"] = botocore_run()
    check_agreement(frames, chunked, runs)
    report(frames, measure(len(frames), chunked, runs, args.rounds), args.rounds)


if __name__ == "__main__":
    main()
