"""relay.ClientStream: coalesced start and end, the upstream idle timeout it watches, and
the upstream body it lets go once content reached the client.

The exchange is a recording stand-in; the idle-timeout checks drive the stream's timer
callback directly with read times set in the past, so nothing waits on the clock except
the one end-to-end case, which waits on a condition with a bound.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kiro_fast.relay import SSE_HEADERS, ClientStream, Plan

WAIT_LIMIT = 5.0


class FakeExchange:
    """Records what the stream asks of the exchange, like protocol.Exchange would take it."""

    def __init__(self) -> None:
        self.started = False
        self.finished = False
        self.disconnected = False
        self.paused = False
        self.calls: list[tuple[Any, ...]] = []

    def start_stream(
        self, status: int, headers: Any, first: bytes = b"", *, end: bool = False
    ) -> None:
        self.started = True
        self.finished = end
        self.calls.append(("start", status, headers, first, end))

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def end(self, last: bytes = b"") -> None:
        self.finished = True
        self.calls.append(("end", last))


class FakeContent:
    """Stands in for the aiohttp StreamReader the stream watches."""

    def __init__(self) -> None:
        self.exception: BaseException | None = None
        self.failed = asyncio.Event()

    def set_exception(self, exc: BaseException) -> None:
        self.exception = exc
        self.failed.set()


class FakeSink:
    def __init__(self) -> None:
        self.pings = 0

    def ping(self) -> None:
        self.pings += 1

    def take(self) -> bytes:
        return b"event: ping\n\n"


def make_plan(body: bytes = b'{"conversationState":{}}') -> Plan:
    return Plan(
        body=body,
        make_sink=lambda: None,
        make_converter=lambda sink: None,  # type: ignore[arg-type,return-value]
        streaming=True,
        render_error=lambda exc: (500, b""),
    )


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_first_bytes_start_the_response_in_one_call() -> None:
    async def main() -> None:
        exchange = FakeExchange()
        stream = ClientStream(exchange, 25.0)  # type: ignore[arg-type]
        stream.send(b"event: message_start\n\n")
        stream.send(b"event: content_block_delta\n\n")
        stream.close()
        assert exchange.calls == [
            ("start", 200, SSE_HEADERS, b"event: message_start\n\n", False),
            ("write", b"event: content_block_delta\n\n"),
        ]
        assert stream.content_sent

    run(main())


def test_an_answer_read_at_once_is_started_and_ended_in_one_call() -> None:
    async def main() -> None:
        exchange = FakeExchange()
        stream = ClientStream(exchange, 25.0)  # type: ignore[arg-type]
        stream.finish(b"the whole answer")
        stream.close()
        assert exchange.calls == [("start", 200, SSE_HEADERS, b"the whole answer", True)]
        assert stream.content_sent

    run(main())


def test_the_last_bytes_leave_with_the_end() -> None:
    async def main() -> None:
        exchange = FakeExchange()
        stream = ClientStream(exchange, 25.0)  # type: ignore[arg-type]
        stream.send(b"start")
        stream.finish(b"stop")
        stream.close()
        assert exchange.calls[-1] == ("end", b"stop")
        assert len(exchange.calls) == 2

    run(main())


def test_upstream_body_is_dropped_once_content_reached_the_client() -> None:
    async def main() -> None:
        exchange = FakeExchange()
        plan = make_plan()
        stream = ClientStream(exchange, 25.0, plan)  # type: ignore[arg-type]
        stream.send(b"event: ping\n\n", content=False)
        assert plan.body  # a ping is no content: a retry may still need the body
        stream.send(b"event: message_start\n\n")
        assert plan.body == b""
        stream.close()

    run(main())


def test_upstream_silence_fails_the_read_after_the_idle_limit() -> None:
    async def main() -> None:
        exchange = FakeExchange()
        stream = ClientStream(exchange, 25.0)  # type: ignore[arg-type]
        content = FakeContent()
        stream.watch(content, 180.0)  # type: ignore[arg-type]
        stream.read_at = stream.clock() - 60.0
        stream._tick()
        assert content.exception is None  # 60 s of silence is within the limit
        stream.read_at = stream.clock() - 181.0
        stream._tick()
        assert isinstance(content.exception, TimeoutError)
        stream.close()

    run(main())


def test_waiting_for_a_slow_client_is_not_upstream_silence() -> None:
    async def main() -> None:
        exchange = FakeExchange()
        stream = ClientStream(exchange, 25.0)  # type: ignore[arg-type]
        content = FakeContent()
        stream.watch(content, 180.0)  # type: ignore[arg-type]
        exchange.paused = True
        stream.read_at = stream.clock() - 500.0
        stream._tick()
        assert content.exception is None
        exchange.paused = False
        stream._tick()  # the wait for the client restarted the idle clock
        assert content.exception is None
        stream.close()

    run(main())


def test_no_idle_timeout_once_unwatched() -> None:
    async def main() -> None:
        exchange = FakeExchange()
        stream = ClientStream(exchange, 25.0)  # type: ignore[arg-type]
        content = FakeContent()
        stream.watch(content, 1.0)  # type: ignore[arg-type]
        stream.unwatch()
        stream.read_at = stream.clock() - 100.0
        stream._tick()
        assert content.exception is None
        stream.close()

    run(main())


@pytest.mark.parametrize("interval", [25.0, 0.01])
def test_the_idle_deadline_fires_on_time_whatever_the_ping_interval(interval: float) -> None:
    async def main() -> None:
        exchange = FakeExchange()
        stream = ClientStream(exchange, interval)  # type: ignore[arg-type]
        stream.attach(FakeSink())
        content = FakeContent()
        stream.watch(content, 0.05)  # type: ignore[arg-type]
        await asyncio.wait_for(content.failed.wait(), WAIT_LIMIT)
        assert isinstance(content.exception, TimeoutError)
        stream.close()

    run(main())


def test_pings_still_flow_during_silence() -> None:
    async def main() -> None:
        exchange = FakeExchange()
        stream = ClientStream(exchange, 0.01)  # type: ignore[arg-type]
        sink = FakeSink()
        stream.attach(sink)
        async with asyncio.timeout(WAIT_LIMIT):
            while sink.pings < 2:
                await asyncio.sleep(0.005)
        stream.close()
        assert exchange.calls[0][0] == "start"
        assert exchange.calls[0][3] == b"event: ping\n\n"
        assert not stream.content_sent

    run(main())
