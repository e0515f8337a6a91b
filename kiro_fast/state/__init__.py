"""Shared state: one interface, three backends, chosen by URL.

``open_state(url)`` builds the store for a URL (not yet opened: ``await store.open()`` or
``async with store:``):

* ``None``, a plain path, or ``sqlite:///relative/path`` / ``sqlite:////absolute/path``
  → :class:`SQLiteStore` (the default: ``data/kiro_fast.db``);
* ``redis://…`` / ``rediss://…`` (``?prefix=…`` sets the key prefix, default
  ``kiro_fast:``) → :class:`RedisStore`, imported only then, so redis-py stays optional;
* ``memory://`` (private) or ``memory://NAME`` (shared by stores of that NAME within the
  process) → :class:`MemoryStore`.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .base import (
    USAGE_FLUSH_INTERVAL,
    Clock,
    GroupBy,
    StateStore,
    UsageEvent,
    client_key_hash,
    utc_day_start,
)
from .memory import MemoryStore
from .sqlite import DEFAULT_PATH, SQLiteStore

__all__ = [
    "Clock",
    "GroupBy",
    "MemoryStore",
    "SQLiteStore",
    "StateStore",
    "UsageEvent",
    "client_key_hash",
    "open_state",
    "utc_day_start",
]


def open_state(
    url: str | None = None,
    *,
    clock: Clock | None = None,
    usage_flush_interval: float = USAGE_FLUSH_INTERVAL,
) -> StateStore:
    """The store for ``url`` (see the module docstring), not yet opened.

    Raises:
        ConfigError: an unknown scheme, or ``redis://`` without redis-py installed.
    """
    options: dict[str, Any] = {"clock": clock, "usage_flush_interval": usage_flush_interval}
    if url is None or not url.strip():
        return SQLiteStore(DEFAULT_PATH, **options)
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    if not sep:
        return SQLiteStore(url, **options)
    scheme = scheme.lower()
    if scheme == "sqlite":
        path = rest[1:] if rest.startswith("/") else rest
        if not path:
            raise ConfigError("sqlite:/// needs a file path, e.g. sqlite:///data/kiro_fast.db")
        return SQLiteStore(path, **options)
    if scheme in ("redis", "rediss", "unix"):
        try:
            from .redis import RedisStore
        except ImportError:
            raise ConfigError(
                "a redis:// state URL needs redis-py: pip install 'kiro-fast[redis]'"
            ) from None
        return RedisStore(url, **options)
    if scheme == "memory":
        return MemoryStore(rest or None, **options)
    raise ConfigError(
        f"unknown state store scheme {scheme!r}: use sqlite://, redis:// or memory://"
    )
