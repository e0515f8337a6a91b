"""Logging: the request-id context, line formatters, secret redaction and the one setup call.

What this module owns:

* :data:`request_id_var`, the id of the request being served. The protocol sets it at the
  start of each application task; asyncio copies contexts into tasks, so every log call made
  while serving a request (in any module) sees that request's id, and ``-`` elsewhere.
* :class:`RequestIdFilter`, which stamps ``record.request_id`` on every record a handler
  sees (unless the caller passed one in ``extra``, as the protocol does for records emitted
  outside the task), and :class:`RedactingFilter`, which masks anything that looks like a
  secret. Both sit on the handlers that :func:`setup_logging` installs, so records from
  aiohttp or the standard library are covered too.
* Two formats: human text lines and JSON lines (orjson; fields ``ts``, ``level``,
  ``logger``, ``msg``, ``request_id``, ``exc`` and any ``extra`` fields).

Redaction is defence in depth: no secret should reach a log call in the first place. It is
applied to the formatted message and to exception text, never to the hot path (logging is
not called per streamed event).

This module knows nothing about HTTP, the upstream or credentials.
"""

from __future__ import annotations

import logging
import logging.handlers
import re
import sys
import time
from contextvars import ContextVar
from typing import IO, Any

import orjson

__all__ = [
    "NO_REQUEST_ID",
    "JsonFormatter",
    "RedactingFilter",
    "RequestIdFilter",
    "TextFormatter",
    "redact",
    "request_id_var",
    "setup_logging",
]

#: Shown as the request id of records emitted outside any request.
NO_REQUEST_ID = "-"

request_id_var: ContextVar[str] = ContextVar("kiro_fast_request_id", default=NO_REQUEST_ID)

#: The values setup_logging accepts for ``fmt``.
LOG_FORMATS = ("text", "json")

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s"

#: Marks the handlers setup_logging installed, so a second call replaces them instead of
#: doubling every line (and leaves pytest's or an embedding program's handlers alone).
_OWNED_ATTR = "_kiro_fast_owned"

# --------------------------------------------------------------------------- redaction

# Token shapes seen in this project (see shared/spec/kiro-auth.md): Kiro access tokens start
# with ``aoa`` and refresh tokens with ``aor`` (hundreds of characters); Kiro API keys with
# ``ksk_``; client keys are ``sk-…`` by convention. The minimum lengths keep ordinary words
# ("aorta") from matching. Key/value pairs whose key names a secret are masked whatever the
# value looks like.
_SECRET_RE = re.compile(
    r"(?P<bearer>\b[Bb]earer\s+)[A-Za-z0-9._~+/=:-]+"
    r"|(?P<kiro>\bao[ar])[A-Za-z0-9._~+/=:-]{20,}"
    r"|(?P<ksk>\bksk_)[A-Za-z0-9._-]{4,}"
    r"|(?P<sk>\bsk-)[A-Za-z0-9._-]{8,}"
    r"|(?P<pair>(?i:access_?token|refresh_?token|client_?secret|api_?key|x-api-key|password"
    r"|secret)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}&]+"
)
_MASK = "***"


def _mask(match: re.Match[str]) -> str:
    return (match.group(match.lastgroup or 0) or "") + _MASK


def redact(value: str) -> str:
    """Return ``value`` with anything that looks like a token, key or secret masked.

    The recognisable prefix is kept (``Bearer ***``, ``aor***``, ``ksk_***``, ``sk-***``,
    ``"refreshToken": "***``) so a log line still says *what* was there.
    """
    return _SECRET_RE.sub(_mask, value)


class RedactingFilter(logging.Filter):
    """Masks secrets in a record's message and arguments (never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed call; let the handler report it as usual
            return True
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg = cleaned
            record.args = None
        return True


class RequestIdFilter(logging.Filter):
    """Stamps ``record.request_id`` from :data:`request_id_var` unless already set."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


# --------------------------------------------------------------------------- formatters


class TextFormatter(logging.Formatter):
    """``time level logger [request-id] message``; exception text is redacted too."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        # The message went through RedactingFilter; a traceback did not (and another
        # handler may have cached its text on the record before us).
        if record.exc_text or record.stack_info:
            return redact(line)
        return line


#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "request_id", "taskName"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``extra`` fields are included as top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", NO_REQUEST_ID),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exc"] = redact(record.exc_text)
        if record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        return orjson.dumps(entry, default=str).decode()


def _iso_time(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{millis:03d}Z"


# --------------------------------------------------------------------------- setup

_LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
}


def setup_logging(
    level: str = "info",
    fmt: str = "text",
    stream: IO[str] | None = None,
    file: str | None = None,
) -> list[logging.Handler]:
    """Configure the root logger: one handler per destination, both filters on each.

    ``fmt`` is ``"text"`` or ``"json"``; ``level`` a level name (any case).
    ``stream`` defaults to stderr when no ``file`` is given. ``file`` uses a
    ``WatchedFileHandler``, so logrotate can move the file. Calling this again replaces
    the handlers an earlier call installed. Returns the installed handlers.
    """
    try:
        numeric_level = _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(
            f"unknown log level {level!r}; expected one of {sorted(_LEVELS)}"
        ) from None
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; expected 'text' or 'json'")

    handlers: list[logging.Handler] = []
    if file is not None:
        handlers.append(logging.handlers.WatchedFileHandler(file, encoding="utf-8"))
    if stream is not None or file is None:
        handlers.append(logging.StreamHandler(stream if stream is not None else sys.stderr))

    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(RequestIdFilter())
        handler.addFilter(RedactingFilter())
        setattr(handler, _OWNED_ATTR, True)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OWNED_ATTR, False)]:
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(numeric_level)
    return handlers
