"""Runtime settings: the part of the configuration an operator edits without a restart.

What this module owns:

* :data:`EDITABLE`, the config keys (JSON spelling) that may change while serving:
  the identity sent upstream, the outbound proxy, the external count_tokens API, the
  pool strategy, the timeouts, the thinking suffix and the minimum usage threshold.
  Each value is checked exactly like the config file's (:func:`config.validate_value`).
* :class:`LiveSettings`: the current :class:`~kiro_fast.config.Config` — the file's
  configuration with the state store's settings on top — and the listeners that
  receive it when it changes.

Strategy: push, not pull. Consumers never ask for a setting per request; they receive a
new ``Config`` when one of these values changed and keep it in their own fields. A
change made here (the admin API) is pushed at once; a change made by another process
sharing the store is noticed by :meth:`LiveSettings.poll`, which the application calls
per request and which costs one clock comparison: at most every
:data:`CHECK_INTERVAL` it starts a background task comparing ``settings_version()``.

Values stored through the admin API win over the config file, across restarts too;
storing ``null`` removes the override and the file's value applies again.

Keys starting with ``_`` in the store belong to other modules (login sessions, the
admin token secret) and are never read or shown here. Secrets (``countTokensApiKey``,
``proxyPassword``, a password inside ``proxyUrl``) are shown masked.

This module knows nothing about HTTP or about how each consumer applies a value.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from .config import Config, is_secret, validate_value
from .errors import ConfigError
from .state import StateStore

log = logging.getLogger("kiro_fast.settings")

#: Editable keys, in the order the admin UI shows them.
EDITABLE: Final = (
    "kiroVersion",
    "systemVersion",
    "nodeVersion",
    "proxyUrl",
    "proxyUsername",
    "proxyPassword",
    "countTokensApiUrl",
    "countTokensApiKey",
    "countTokensAuthType",
    "loadBalancingMode",
    "firstByteTimeout",
    "streamIdleTimeout",
    "connectTimeout",
    "authTimeout",
    "pingInterval",
    "thinkingSuffix",
    "minUsageThreshold",
)
#: Alternative spellings accepted on write (kiro.rs's strategy key, the SQLite variant's).
ALIASES: Final = {"strategy": "loadBalancingMode", "mode": "loadBalancingMode"}
#: Editable keys whose change needs a restart: none — every consumer takes new values.
RESTART_REQUIRED: Final[tuple[str, ...]] = ()
#: How often (seconds) a process looks for changes made by another process.
CHECK_INTERVAL: Final = 1.0

Listener = Callable[[Config], None]


def mask(value: str) -> str:
    """A secret for display: first and last 4 characters, or ``***`` if short (kiro.rs)."""
    if len(value) <= 16 or not value.isascii():
        return "***"
    return f"{value[:4]}...{value[-4:]}"


def _without_password(url: str) -> str:
    """A proxy URL with the password it may carry masked."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def check_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """``changes`` with every key canonical and every value validated (``None``: remove).

    Raises:
        ConfigError: an unknown or non-editable key, or a bad value; names the key.
    """
    checked: dict[str, Any] = {}
    for given, value in changes.items():
        key = ALIASES.get(given, given)
        if key not in EDITABLE:
            raise ConfigError(
                f"{given!r} is not a runtime setting; editable: {', '.join(EDITABLE)}"
            )
        if isinstance(value, str) and not value.strip() and key not in ("thinkingSuffix",):
            value = None
        _, clean = validate_value(key, value)
        checked[key] = clean
    return checked


class LiveSettings:
    """The configuration in force, kept in step with the state store's settings."""

    def __init__(self, base: Config, state: StateStore) -> None:
        self.base = base
        self.state = state
        self.current = base
        #: stored overrides, by JSON key (validated)
        self.overrides: dict[str, Any] = {}
        self.version = -1
        self._listeners: list[Listener] = []
        self._next_check = 0.0
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(config)`` whenever an editable value changes."""
        self._listeners.append(listener)

    async def load(self) -> None:
        """Read the stored settings (at start) and push them if they change anything."""
        version = await self.state.settings_version()
        self._adopt(await self.state.get_settings(), version)

    def poll(self) -> None:
        """Per request: start a background check when one is due. Never waits."""
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + CHECK_INTERVAL
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._check_quietly())

    async def _check_quietly(self) -> None:
        try:
            version = await self.state.settings_version()
            if version != self.version:
                self._adopt(await self.state.get_settings(), version)
        except Exception as exc:  # a store outage keeps the settings in force
            log.warning("settings check failed: %s", type(exc).__name__)

    async def update(self, changes: Mapping[str, Any]) -> Config:
        """Validate, store and apply ``changes`` (JSON keys; ``None`` removes an override).

        Raises:
            ConfigError: a key that is not editable, or a bad value.
        """
        checked = check_changes(changes)
        version = await self.state.set_settings(checked)
        self._adopt(await self.state.get_settings(), version)
        return self.current

    def _adopt(self, stored: Mapping[str, Any], version: int) -> None:
        overrides: dict[str, Any] = {}
        fields: dict[str, Any] = {}
        for key in EDITABLE:
            if key not in stored:
                continue
            try:
                name, value = validate_value(key, stored[key])
            except ConfigError as exc:
                log.error("stored setting ignored: %s", exc.message)
                continue
            overrides[key] = value
            fields[name] = value
        self.version = version
        self.overrides = overrides
        config = self.base.replace(**fields)
        if config == self.current:
            return
        self.current = config
        log.info("runtime settings changed: %s", ", ".join(sorted(overrides)) or "defaults")
        for listener in self._listeners:
            listener(config)

    def view(self) -> dict[str, Any]:
        """The admin API's answer: every editable value (secrets masked) and where it
        comes from."""
        values: dict[str, Any] = {}
        for key in EDITABLE:
            name = validate_value(key, None)[0]
            value = getattr(self.current, name)
            if is_secret(name) and isinstance(value, str) and value:
                value = mask(value)
            elif key == "proxyUrl" and isinstance(value, str):
                value = _without_password(value)
            values[key] = value
        return {
            "settings": values,
            "overridden": sorted(self.overrides),
            "editable": list(EDITABLE),
            "restart_required": list(RESTART_REQUIRED),
            "version": self.version,
        }
