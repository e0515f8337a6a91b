"""The conversations behind ``previous_response_id`` (``/v1/responses``).

Owns a bounded, in-memory map from a response id to the conversation that response
ended: the Anthropic-shaped messages (the request's history and input, then the
answer as one assistant message) and the upstream conversation id, so a follow-up
request can send only its new input and stay in the same upstream conversation.

Strategy: an ``OrderedDict`` in least-recently-used order. Two bounds, both from the
config: at most ``max_entries`` responses (the oldest unused one is evicted first) and
at most ``ttl`` seconds since a response was stored (checked on lookup and on insert,
so no timer runs). ``max_entries == 0`` turns the store off. Stored messages are shared
with the requests that read them and never mutated.

Per process only: with several kiro_fast processes behind a balancer, a follow-up must
reach the process that answered (an accepted limitation; the clients that matter, such
as Codex, send the whole conversation instead). Must not know HTTP or the OpenAI shapes.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class StoredResponse:
    #: the whole conversation up to and including this response's answer
    messages: list[dict[str, Any]]
    #: the upstream conversationId the response used
    conversation_id: str
    stored_at: float


class ResponseStore:
    """Response id → :class:`StoredResponse`, bounded by count and age."""

    def __init__(
        self,
        max_entries: int,
        ttl: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, response_id: str) -> StoredResponse | None:
        """The stored conversation, or None when unknown, expired or evicted."""
        entry = self._entries.get(response_id)
        if entry is None:
            return None
        if self._clock() - entry.stored_at > self.ttl:
            del self._entries[response_id]
            return None
        self._entries.move_to_end(response_id)
        return entry

    def put(self, response_id: str, messages: list[dict[str, Any]], conversation_id: str) -> None:
        if self.max_entries <= 0:
            return
        now = self._clock()
        self._entries[response_id] = StoredResponse(messages, conversation_id, now)
        self._entries.move_to_end(response_id)
        self._expire(now)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def _expire(self, now: float) -> None:
        """Drop expired entries from the old end (insertion order ≈ age order)."""
        entries = self._entries
        while entries:
            oldest_id, oldest = next(iter(entries.items()))
            if now - oldest.stored_at <= self.ttl:
                break
            del entries[oldest_id]
