"""Selector: the Cython event-stream decoder when it is built, else the pure-Python twin.

``KIRO_FAST_NO_EXTENSIONS`` (any non-empty value) or a non-CPython interpreter forces
the pure-Python implementation; ``IMPLEMENTATION`` says which one is in use. The
fallback on ``ImportError`` exists for a deliberate opt-out; the test suite fails when
the extension was expected but did not load (tests/test_extension.py).
"""

from __future__ import annotations

import os
import platform
from typing import TYPE_CHECKING

from .errors import EventStreamError

NO_EXTENSIONS: bool = bool(os.environ.get("KIRO_FAST_NO_EXTENSIONS")) or (
    platform.python_implementation() != "CPython"
)

if TYPE_CHECKING or NO_EXTENSIONS:
    from ._eventstream_py import EventStreamDecoder, Message, crc32, encode_message

    IMPLEMENTATION = "python"
else:
    try:
        from ._eventstream import EventStreamDecoder, Message, crc32, encode_message

        IMPLEMENTATION = "c"
    except ImportError:  # pragma: no cover - exercised by the no-extension CI run
        from ._eventstream_py import EventStreamDecoder, Message, crc32, encode_message

        IMPLEMENTATION = "python"

__all__ = [
    "IMPLEMENTATION",
    "NO_EXTENSIONS",
    "EventStreamDecoder",
    "EventStreamError",
    "Message",
    "crc32",
    "encode_message",
]
