"""Truncated answers, remembered so the next turn can tell the model (kiro-api.md §9.4).

The upstream cuts long answers: the body ends without its end-of-answer events, often in
the middle of a large ``Write`` call, or an exception frame says
``CONTENT_LENGTH_EXCEEDS_THRESHOLD``. :mod:`kiro_fast.stream` already ends such a message
with ``stop_reason: max_tokens`` and never delivers the cut tool call. What this module
adds is the second half of the kiro-gateway remedy: the model is told, on the very next
turn, that its previous output was cut, so it writes less at once instead of repeating
the same oversized call ("Write Failed" loops).

Strategy: when an answer is cut, :meth:`TruncationMemory.remember` stores a fingerprint
of the request it answered — the client's conversation (Claude Code's session id, or
none), the number of messages ``n`` and a hash of the last of them. Claude Code's
follow-up after ``max_tokens`` is the same history plus the partial assistant message
plus a new user message (``n + 2`` messages; ``n + 1`` when the partial message was
empty and dropped), so :meth:`TruncationMemory.note_for` recognises it by hashing
message ``n − 1`` of the new request, and only for those two lengths. Retries of the
follow-up match again; later turns do not. Hashes ignore ``cache_control`` (Claude Code
moves it to the newest message on every request). Matching costs nothing unless the
conversation has an entry (one dict lookup otherwise).

The memory is bounded (:data:`MAX_ENTRIES`, least recently stored dropped first) and
entries expire after :data:`ENTRY_TTL` seconds; it is per process, like the counters.

Counters (exported as metrics): :data:`TRUNCATION` — ``responses`` (answers cut),
``tool_calls_dropped`` (cut tool calls never delivered), ``notes`` (notes injected).

Must not know HTTP, sinks or the upstream's event format.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Final

import orjson

from . import metrics

#: Answers cut, cut tool calls never delivered, notes injected into a next turn.
TRUNCATION: Counter[str] = metrics.CountedMap(metrics.TRUNCATION_EVENTS)

#: The text added to the current user message of the follow-up request.
NOTE: Final = (
    "[Note from the API proxy: your previous answer was cut off by the service's output "
    "limit before it was complete. Any tool call at its end was not received and was NOT "
    "executed. Write less at once: keep each tool call small (at most about 50 lines per "
    "Write or Edit call) and split larger work into several steps.]"
)
#: Conversations remembered at once; a busy proxy forgets the oldest first.
MAX_ENTRIES: Final = 4_096
#: A follow-up comes within seconds; an hour covers a user who stepped away.
ENTRY_TTL: Final = 3_600.0
#: The follow-up carries the partial answer and a new user message (or only the latter).
_FOLLOW_UP_EXTRA: Final = (2, 1)

_Key = tuple[str, int, int]


def message_digest(message: Any) -> int:
    """A hash of one client message, blind to ``cache_control`` markers.

    Python's own 64-bit hash of the canonical JSON: the memory lives in one process, so
    a per-process hash seed is no obstacle, and it is ~20x cheaper than a cryptographic
    digest on the large tool results Claude Code sends (it runs on every request)."""
    if isinstance(message, dict):
        content = message.get("content")
        if isinstance(content, list):
            content = [_without_cache_control(block) for block in content]
        message = {"role": message.get("role"), "content": content}
    try:
        encoded = orjson.dumps(message, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        encoded = repr(message).encode("utf-8", "replace")
    return hash(encoded)


class Answered:
    """What an answer is remembered by: its request's message count and the hash of the
    last message.

    Taken when the request arrives, so a stream keeps 40 bytes instead of its last
    message (often a tool result of tens of KB) until the answer ends. ``fingerprint``
    False skips the hash (the memory is off; only the count is needed then).
    """

    __slots__ = ("count", "digest")

    def __init__(self, messages: Sequence[Any], *, fingerprint: bool = True) -> None:
        self.count = len(messages)
        self.digest = message_digest(messages[-1]) if messages and fingerprint else None


def _without_cache_control(block: Any) -> Any:
    if isinstance(block, dict) and "cache_control" in block:
        return {key: value for key, value in block.items() if key != "cache_control"}
    return block


class TruncationMemory:
    """Which recent answers were cut, keyed by the requests they answered."""

    def __init__(
        self,
        *,
        max_entries: int = MAX_ENTRIES,
        ttl: float = ENTRY_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: OrderedDict[_Key, float] = OrderedDict()
        #: conversations with at least one entry, so unrelated requests skip hashing
        self._sessions: Counter[str] = Counter()
        self._max = max_entries
        self._ttl = ttl
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, session: str | None, messages: Sequence[Any] | Answered) -> None:
        """The answer to a request with these ``messages`` was cut."""
        answered = messages if isinstance(messages, Answered) else Answered(messages)
        if not answered.count or answered.digest is None:
            return
        key = (session or "", answered.count, answered.digest)
        if key in self._entries:
            self._entries.move_to_end(key)
        else:
            self._sessions[key[0]] += 1
        self._entries[key] = self._clock() + self._ttl
        while len(self._entries) > self._max:
            self._drop(next(iter(self._entries)))

    def note_for(self, session: str | None, messages: Sequence[Any]) -> str | None:
        """:data:`NOTE` when ``messages`` follow up a remembered cut answer, else None."""
        name = session or ""
        if not self._sessions.get(name):
            return None
        now = self._clock()
        for extra in _FOLLOW_UP_EXTRA:
            count = len(messages) - extra
            if count < 1:
                continue
            key = (name, count, message_digest(messages[count - 1]))
            expires = self._entries.get(key)
            if expires is None:
                continue
            if expires < now:
                self._drop(key)
                continue
            return NOTE
        return None

    def clear(self) -> None:
        self._entries.clear()
        self._sessions.clear()

    def _drop(self, key: _Key) -> None:
        del self._entries[key]
        self._sessions[key[0]] -= 1
        if self._sessions[key[0]] <= 0:
            del self._sessions[key[0]]


#: The process's memory (the app records into it and asks it).
MEMORY: Final = TruncationMemory()


def record(
    memory: TruncationMemory,
    session: str | None,
    messages: Sequence[Any] | Answered,
    *,
    truncated: bool,
    dropped_tool_calls: int,
) -> None:
    """Count a finished answer and remember it when it was cut."""
    if not truncated:
        return
    TRUNCATION["responses"] += 1
    if dropped_tool_calls:
        TRUNCATION["tool_calls_dropped"] += dropped_tool_calls
    memory.remember(session, messages)
