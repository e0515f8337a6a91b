"""The ``previous_response_id`` store: bounded by count (least recently used out) and age."""

from __future__ import annotations

from kiro_fast.responses_store import ResponseStore

MESSAGES = [{"role": "user", "content": "hi"}]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_put_and_get() -> None:
    store = ResponseStore(10, 60.0)
    store.put("resp_1", MESSAGES, "conv-1")
    entry = store.get("resp_1")
    assert entry is not None
    assert entry.messages == MESSAGES
    assert entry.conversation_id == "conv-1"
    assert store.get("resp_unknown") is None


def test_least_recently_used_is_evicted_first() -> None:
    store = ResponseStore(2, 60.0)
    store.put("resp_1", MESSAGES, "c1")
    store.put("resp_2", MESSAGES, "c2")
    assert store.get("resp_1") is not None  # resp_2 is now the least recently used
    store.put("resp_3", MESSAGES, "c3")
    assert len(store) == 2
    assert store.get("resp_2") is None
    assert store.get("resp_1") is not None
    assert store.get("resp_3") is not None


def test_entries_expire_after_the_ttl() -> None:
    clock = Clock()
    store = ResponseStore(10, 60.0, clock=clock)
    store.put("resp_old", MESSAGES, "c")
    clock.now += 30
    store.put("resp_new", MESSAGES, "c")
    clock.now += 31  # resp_old is 61 s old, resp_new 31 s
    assert store.get("resp_old") is None
    assert store.get("resp_new") is not None


def test_expired_entries_are_dropped_on_insert() -> None:
    clock = Clock()
    store = ResponseStore(10, 60.0, clock=clock)
    store.put("resp_1", MESSAGES, "c")
    store.put("resp_2", MESSAGES, "c")
    clock.now += 61
    store.put("resp_3", MESSAGES, "c")
    assert len(store) == 1


def test_zero_entries_turns_the_store_off() -> None:
    store = ResponseStore(0, 60.0)
    store.put("resp_1", MESSAGES, "c")
    assert len(store) == 0
    assert store.get("resp_1") is None
