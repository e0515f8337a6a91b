"""Truncated answers (kiro-api.md §9.4): max_tokens, never a cut tool call, and a note next turn."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from e2e_harness import Harness, directive

from kiro_fast.testing import Scenario
from kiro_fast.truncation import NOTE, TRUNCATION, Answered, TruncationMemory, message_digest

MODEL = "claude-sonnet-4-6"
SESSION = "0b9a8c7d-6e5f-4a3b-9c1d-2e3f4a5b6c7d"
WRITE_TOOL = {"name": "Write", "description": "Write a file", "input_schema": {"type": "object"}}
#: Claude Code's own follow-up after max_tokens (from its shipped CLI)
RECOVERY = (
    "Output token limit hit. Resume directly — no apology, no recap of what you were doing. "
    "Pick up mid-thought if that is where the cut happened. Break remaining work into "
    "smaller pieces."
)


def msg(role: str, text: str, **block: Any) -> dict[str, Any]:
    return {"role": role, "content": [{"type": "text", "text": text, **block}]}


# --------------------------------------------------------------------------- the memory


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_follow_up_is_recognised_by_the_answered_message() -> None:
    memory = TruncationMemory()
    asked = [msg("user", "write the report", cache_control={"type": "ephemeral"})]
    memory.remember(SESSION, asked)
    # Claude Code moves cache_control to the newest message: the hash ignores it
    partial = msg("assistant", "I'll write the file.")
    follow_up = [msg("user", "write the report"), partial, msg("user", RECOVERY)]
    assert memory.note_for(SESSION, follow_up) == NOTE
    # an empty partial answer is dropped by the client: n + 1 messages match too
    assert memory.note_for(SESSION, [msg("user", "write the report"), msg("user", "go on")])


@pytest.mark.parametrize(
    "messages",
    [
        [msg("user", "write the report")],  # a retry of the same request
        [msg("user", "something else"), msg("assistant", "x"), msg("user", "y")],
        [
            msg("user", "write the report"),
            msg("assistant", "x"),
            msg("user", "y"),
            msg("assistant", "z"),
            msg("user", "w"),
        ],  # a later turn: the note was for the one right after
    ],
)
def test_other_requests_get_no_note(messages: list[dict[str, Any]]) -> None:
    memory = TruncationMemory()
    memory.remember(SESSION, [msg("user", "write the report")])
    assert memory.note_for(SESSION, messages) is None


def test_conversations_are_kept_apart_and_entries_expire_and_are_bounded() -> None:
    clock = Clock()
    memory = TruncationMemory(max_entries=2, ttl=10.0, clock=clock)
    asked = [msg("user", "q")]
    follow_up = [*asked, msg("assistant", "a"), msg("user", "more")]
    memory.remember("session-a", asked)
    assert memory.note_for("session-b", follow_up) is None
    assert memory.note_for(None, follow_up) is None
    assert memory.note_for("session-a", follow_up) == NOTE
    clock.now = 11.0
    assert memory.note_for("session-a", follow_up) is None  # expired, and forgotten
    assert len(memory) == 0
    for name in ("a", "b", "c"):
        memory.remember(name, asked)
    assert len(memory) == 2
    assert memory.note_for("a", follow_up) is None  # the oldest went first
    assert memory.note_for("c", follow_up) == NOTE


def test_digest_ignores_cache_control_only() -> None:
    plain = msg("user", "hello")
    assert message_digest(plain) == message_digest(
        msg("user", "hello", cache_control={"type": "ephemeral"})
    )
    assert message_digest(plain) != message_digest(msg("user", "hello!"))
    assert message_digest(plain) != message_digest(msg("assistant", "hello"))


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    with Harness() as running:
        yield running


@pytest.fixture
def client(harness: Harness) -> anthropic.Anthropic:
    return harness.anthropic(  # type: ignore[no-any-return]
        default_headers={"x-claude-code-session-id": SESSION}
    )


def last_current_text(harness: Harness) -> str:
    def find() -> str:
        chats = [r for r in harness.fake.requests if r.endpoint == "generateAssistantResponse"]
        state = chats[-1].json["conversationState"]
        return state["currentMessage"]["userInputMessage"]["content"]  # type: ignore[no-any-return]

    return harness.call(find)  # type: ignore[no-any-return]


TRUNCATING = [
    pytest.param(
        {"scenario": "truncate", "name": "Write", "input": {"content": "x" * 400}},
        1,
        id="cut-inside-a-tool-call",
    ),
    pytest.param(
        {"scenario": "truncate", "text": "A long answer " * 20, "calls": []}, 0, id="cut-text"
    ),
    pytest.param(
        {"scenario": "exception", "exception": "ContentLengthExceededException", "text": "Some"},
        0,
        id="content-length-exception",
    ),
]


@pytest.mark.parametrize(("scenario", "dropped"), TRUNCATING)
@pytest.mark.parametrize("stream", [False, True])
def test_cut_answer_ends_with_max_tokens_and_the_next_turn_carries_a_note(
    harness: Harness,
    client: anthropic.Anthropic,
    scenario: dict[str, Any],
    dropped: int,
    stream: bool,
) -> None:
    prompt = f"Write the report ({scenario['scenario']}, stream={stream}). " + directive(scenario)
    asked = [msg("user", prompt)]
    before = dict(TRUNCATION)
    if stream:
        with client.messages.stream(
            model=MODEL,
            max_tokens=1024,
            tools=[WRITE_TOOL],  # type: ignore[list-item]
            messages=asked,  # type: ignore[arg-type]
        ) as events:
            first = events.get_final_message()
    else:
        first = client.messages.create(
            model=MODEL,
            max_tokens=1024,
            tools=[WRITE_TOOL],  # type: ignore[list-item]
            messages=asked,  # type: ignore[arg-type]
        )
    assert first.stop_reason == "max_tokens"
    assert all(block.type != "tool_use" for block in first.content)
    assert TRUNCATION["responses"] == before.get("responses", 0) + 1
    assert TRUNCATION["tool_calls_dropped"] == before.get("tool_calls_dropped", 0) + dropped
    # Claude Code's follow-up: the same history, the partial answer, its recovery prompt
    partial = [block.model_dump() for block in first.content if block.type == "text"]
    follow_up = [
        *asked,
        {"role": "assistant", "content": partial or [{"type": "text", "text": " "}]},
        msg("user", RECOVERY + " " + directive({"text": "Smaller steps now."})),
    ]
    second = client.messages.create(
        model=MODEL,
        max_tokens=1024,
        tools=[WRITE_TOOL],  # type: ignore[list-item]
        messages=follow_up,  # type: ignore[arg-type]
    )
    assert second.content[0].text == "Smaller steps now."  # type: ignore[union-attr]
    upstream_text = last_current_text(harness)
    assert upstream_text.endswith(NOTE)
    assert "was NOT executed" in upstream_text
    assert TRUNCATION["notes"] == before.get("notes", 0) + 1
    # the turn after that is a normal turn again
    third = client.messages.create(
        model=MODEL,
        max_tokens=64,
        messages=[
            *follow_up,
            {"role": "assistant", "content": "Smaller steps now."},
            msg("user", "thanks " + directive({"text": "ok"})),
        ],  # type: ignore[arg-type]
    )
    assert third.stop_reason == "end_turn"
    assert NOTE not in last_current_text(harness)


def test_complete_answers_leave_no_note(harness: Harness, client: anthropic.Anthropic) -> None:
    asked = [msg("user", "short answer please " + directive({"text": "Short."}))]
    first = client.messages.create(model=MODEL, max_tokens=64, messages=asked)  # type: ignore[arg-type]
    assert first.stop_reason == "end_turn"
    client.messages.create(
        model=MODEL,
        max_tokens=64,
        messages=[*asked, {"role": "assistant", "content": "Short."}, msg("user", "and?")],  # type: ignore[list-item]
    )
    assert NOTE not in last_current_text(harness)


def test_the_note_can_be_switched_off() -> None:
    with Harness(config={"truncationNote": False}) as off:
        client = off.anthropic(
            default_headers={"x-claude-code-session-id": "1b9a8c7d-6e5f-4a3b-9c1d-2e3f4a5b6c7d"},
        )
        off.call(lambda: off.fake.enqueue(Scenario(text="cut short", truncate=True)))
        asked = [msg("user", "long one")]
        first = client.messages.create(model=MODEL, max_tokens=64, messages=asked)  # type: ignore[arg-type]
        assert first.stop_reason == "max_tokens"
        client.messages.create(
            model=MODEL,
            max_tokens=64,
            messages=[*asked, {"role": "assistant", "content": "cut"}, msg("user", RECOVERY)],  # type: ignore[list-item]
        )
        assert NOTE not in last_current_text(off)


# --------------------------------------------------------------------------- Answered

CONVERSATION = [
    msg("user", "write a long story"),
    msg("assistant", "Once upon a time"),
    msg("user", "go on", cache_control={"type": "ephemeral"}),
]


def test_an_answer_remembered_by_its_fingerprint_is_recognised_like_the_whole_request() -> None:
    kept, whole = TruncationMemory(), TruncationMemory()
    kept.remember(SESSION, Answered(CONVERSATION))
    whole.remember(SESSION, CONVERSATION)
    follow_up = [*CONVERSATION, msg("assistant", "partial"), msg("user", "?")]
    assert kept.note_for(SESSION, follow_up) == NOTE
    assert whole.note_for(SESSION, follow_up) == NOTE
    assert kept.note_for("another-session", follow_up) is None


def test_the_fingerprint_keeps_no_message() -> None:
    answered = Answered(CONVERSATION)
    assert answered.count == 3
    assert answered.digest == message_digest(CONVERSATION[-1])
    assert not any(isinstance(getattr(answered, slot), dict) for slot in Answered.__slots__)


def test_without_a_fingerprint_or_messages_nothing_is_remembered() -> None:
    memory = TruncationMemory()
    memory.remember(SESSION, Answered(CONVERSATION, fingerprint=False))
    memory.remember(SESSION, Answered([]))
    assert len(memory) == 0
