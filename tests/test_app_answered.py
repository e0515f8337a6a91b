"""app._Answered: what a streaming request keeps of its conversation for the truncation
memory (the number of messages and the last one), instead of the whole conversation."""

from __future__ import annotations

import pytest

from kiro_fast.app import _Answered
from kiro_fast.truncation import NOTE, TruncationMemory

MESSAGES = [
    {"role": "user", "content": "write a long story"},
    {"role": "assistant", "content": "Once upon a time"},
    {"role": "user", "content": [{"type": "text", "text": "go on", "cache_control": {}}]},
]


def test_a_cut_answer_is_remembered_as_with_the_whole_conversation() -> None:
    kept, whole = TruncationMemory(), TruncationMemory()
    kept.remember("session", _Answered(MESSAGES))
    whole.remember("session", MESSAGES)
    follow_up = [
        *MESSAGES,
        {"role": "assistant", "content": "partial"},
        {"role": "user", "content": "?"},
    ]
    assert kept.note_for("session", follow_up) == NOTE
    assert whole.note_for("session", follow_up) == NOTE
    assert kept.note_for("other", follow_up) is None


def test_only_the_count_and_the_last_message_are_kept() -> None:
    answered = _Answered(MESSAGES)
    assert len(answered) == 3
    assert answered[-1] is MESSAGES[-1]
    assert answered[2] is MESSAGES[-1]
    with pytest.raises(IndexError):
        answered[0]
    empty = _Answered([])
    assert len(empty) == 0
    with pytest.raises(IndexError):
        empty[-1]
