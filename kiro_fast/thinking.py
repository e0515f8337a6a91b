"""The streaming ``<thinking>`` tag parser (spec kiro-api.md §5.9.2).

With thinking emulation the model writes its reasoning inside ordinary text fragments as
``<thinking>\\n…</thinking>\\n\\n`` before the visible answer. :class:`ThinkingParser` takes
those fragments one at a time and returns *pieces*: ``(TEXT, s)``, ``(THINKING, s)`` and
``(THINKING_END, "")``. A ``(THINKING, "")`` piece marks the start tag, so a block opens even
when the thinking turns out empty.

Rules (kiro.rs, the reference):

* A tag counts only when neither the character before it nor the one after it is in
  :data:`QUOTE_CHARS` (the model quoting the tag in prose or code).
* ``</thinking>`` ends the block only when followed by ``\\n\\n``, which is dropped with it;
  at a boundary (tool call or end of stream) an end tag followed only by whitespace counts.
* One ``\\n`` right after ``<thinking>`` is dropped, even when it arrives in the next fragment.
* Text before the start tag is emitted only when it is not whitespace-only (once some text
  was emitted, whitespace is ordinary text, so the result never depends on fragmentation).
* Only the first block is extracted; after it (or after a boundary) text passes through.

Strategy: work on ``str`` (so slicing never splits a UTF-8 sequence) and hold back only the
suffix that could still become a tag — the last ``<`` and what follows it, when that is a
prefix of the tag being searched — so visible text is delayed as little as possible. The
character just before the buffer is remembered, so a quote that was already released still
disqualifies a tag at the start of the next fragment.

This module knows nothing about events, blocks or output formats.
"""

from __future__ import annotations

from typing import Final

TEXT: Final = "text"
THINKING: Final = "thinking"
THINKING_END: Final = "thinking_end"

START_TAG: Final = "<thinking>"
END_TAG: Final = "</thinking>"
#: The end tag only counts with the blank line the model writes after it.
END_MARK: Final = END_TAG + "\n\n"
#: kiro.rs' set: a tag next to one of these is being quoted, not used.
QUOTE_CHARS: Final = frozenset("`\"'\\#!@$%^&*()-_=+[]{};:<>,.?/")

Piece = tuple[str, str]

_BEFORE: Final = 0
_INSIDE: Final = 1
_AFTER: Final = 2


def _quoted(buf: str, pos: int, end: int, prev: str) -> bool:
    """Whether the tag ``buf[pos:end]`` has a quote-like neighbour (``prev`` precedes buf)."""
    before = buf[pos - 1] if pos else prev
    return before in QUOTE_CHARS or (end < len(buf) and buf[end] in QUOTE_CHARS)


def _find_start(buf: str, prev: str) -> int:
    """Index of the first real start tag whose following character is known, or -1."""
    pos = buf.find(START_TAG)
    while pos >= 0:
        end = pos + len(START_TAG)
        if end == len(buf):
            return -1  # the next character may still disqualify it
        if not _quoted(buf, pos, end, prev):
            return pos
        pos = buf.find(START_TAG, pos + 1)
    return -1


def _find_end(buf: str, prev: str) -> int:
    """Index of the first real end tag followed by ``\\n\\n``, or -1."""
    pos = buf.find(END_TAG)
    while pos >= 0:
        end = pos + len(END_TAG)
        if len(buf) - end < 2:
            return -1  # the blank line may still arrive
        if not _quoted(buf, pos, end, prev) and buf.startswith("\n\n", end):
            return pos
        pos = buf.find(END_TAG, pos + 1)
    return -1


def _find_end_at_boundary(buf: str, prev: str) -> int:
    """Index of a real end tag followed only by whitespace, or -1."""
    pos = buf.find(END_TAG)
    while pos >= 0:
        end = pos + len(END_TAG)
        if not _quoted(buf, pos, end, prev) and (end == len(buf) or buf[end:].isspace()):
            return pos
        pos = buf.find(END_TAG, pos + 1)
    return -1


def _held_from(buf: str, tag: str) -> int:
    """Where the suffix that may still grow into ``tag`` begins (``len(buf)`` if none).

    ``tag`` has a single ``<``, at its start, so only the last ``<`` can begin it.
    """
    n = len(buf)
    pos = buf.rfind("<", max(0, n - len(tag)))
    if pos >= 0 and tag.startswith(buf[pos:]):
        return pos
    return n


class ThinkingParser:
    """Incremental splitter of text fragments into text and thinking pieces."""

    __slots__ = ("_state", "_buf", "_prev", "_strip_newline")

    def __init__(self) -> None:
        self._state = _BEFORE
        self._buf = ""
        #: the character just before ``_buf`` ("" while nothing was released)
        self._prev = ""
        self._strip_newline = False

    @property
    def done(self) -> bool:
        """True once the block was extracted or a boundary passed: text now passes through."""
        return self._state == _AFTER

    @property
    def inside(self) -> bool:
        """True between the start tag and the end of the thinking block."""
        return self._state == _INSIDE

    def feed(self, text: str) -> list[Piece]:
        """Consume one fragment; return the pieces that are now certain."""
        if self._state == _AFTER:
            return [(TEXT, text)] if text else []
        if text and not self._buf and "<" not in text:
            # fast path: nothing held and nothing that could start a tag
            if self._state == _INSIDE and not self._strip_newline:
                self._prev = text[-1]
                return [(THINKING, text)]
            if self._state == _BEFORE and self._prev:
                self._prev = text[-1]
                return [(TEXT, text)]
        out: list[Piece] = []
        if self._state == _BEFORE:
            self._feed_before(self._buf + text, out)
        else:
            self._feed_inside(self._buf + text, out)
        return out

    def flush(self) -> list[Piece]:
        """End of the text (tool call or end of stream): release everything held back.

        Afterwards the parser passes text through unchanged.
        """
        out: list[Piece] = []
        buf, self._buf = self._buf, ""
        if self._state == _BEFORE:
            if buf and (self._prev or not buf.isspace()):
                out.append((TEXT, buf))
        elif self._state == _INSIDE:
            self._close_at_boundary(buf, out)
        self._state = _AFTER
        return out

    # ------------------------------------------------------------------ states

    def _feed_before(self, buf: str, out: list[Piece]) -> None:
        pos = _find_start(buf, self._prev)
        if pos < 0:
            held = _held_from(buf, START_TAG)
            released = buf[:held]
            if released and (self._prev or not released.isspace()):
                out.append((TEXT, released))
                self._prev = released[-1]
                buf = buf[held:]
            self._buf = buf  # leading whitespace waits: it is never a block of its own
            return
        before = buf[:pos]
        if before and (self._prev or not before.isspace()):
            out.append((TEXT, before))
        out.append((THINKING, ""))
        self._state = _INSIDE
        self._strip_newline = True
        self._prev = ""
        self._feed_inside(buf[pos + len(START_TAG) :], out)

    def _feed_inside(self, buf: str, out: list[Piece]) -> None:
        if self._strip_newline and buf:
            self._strip_newline = False
            if buf[0] == "\n":
                buf = buf[1:]
                self._prev = "\n"
        pos = _find_end(buf, self._prev)
        if pos >= 0:
            if pos:
                out.append((THINKING, buf[:pos]))
            out.append((THINKING_END, ""))
            self._state = _AFTER
            self._buf = ""
            rest = buf[pos + len(END_MARK) :]
            if rest:
                out.append((TEXT, rest))
            return
        held = _held_from(buf, END_MARK)
        if held:
            out.append((THINKING, buf[:held]))
            self._prev = buf[held - 1]
        self._buf = buf[held:]

    def _close_at_boundary(self, buf: str, out: list[Piece]) -> None:
        pos = _find_end_at_boundary(buf, self._prev)
        thinking = buf if pos < 0 else buf[:pos]
        if thinking:
            out.append((THINKING, thinking))
        out.append((THINKING_END, ""))
