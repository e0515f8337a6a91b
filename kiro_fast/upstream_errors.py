"""Classify upstream error answers (spec kiro-api.md §9.1–9.2, kiro-auth.md §8.1).

One function turns a non-200 answer from Kiro into an :class:`UpstreamStatusError`
carrying a stable ``kind``; the dispatcher decides retries and failover from the kind,
and :func:`client_error` decides what the client finally sees. Nothing here does I/O.

Kinds and what they mean for the request:

=====================  =======================================  ==============================
kind                   upstream signal                          client answer if final
=====================  =======================================  ==============================
``context_too_long``   400 "Input is too long." /               400 invalid_request_error
                       CONTENT_LENGTH_EXCEEDS_THRESHOLD          (Claude Code compacts)
``bad_request``        other 400 (improperly formed, model id)  400 invalid_request_error
``quota``              402 / MONTHLY_REQUEST_COUNT              429 rate_limit_error
``bearer_invalid``     401/403 "bearer token … invalid"         502 api_error
``suspended``          403 TEMPORARILY_SUSPENDED                502 api_error
``forbidden``          other 401/403                            502 api_error
``user_throttled``     429 USER_REQUEST_RATE_EXCEEDED           429 rate_limit_error
``throttled``          other 429                                429 rate_limit_error
``capacity``           INSUFFICIENT_MODEL_CAPACITY, high load   529 overloaded_error
``server``             other 5xx                                529 overloaded_error
``other``              anything else                            502 api_error
=====================  =======================================  ==============================
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from .errors import (
    ContextTooLong,
    InvalidRequest,
    KiroFastError,
    Overloaded,
    RateLimited,
    UpstreamError,
    UpstreamException,
    UpstreamStatusError,
)

#: Longest upstream error body kept (and read): error bodies are a few hundred bytes.
MAX_ERROR_BODY: Final = 8192

BEARER_INVALID_TEXT: Final = "The bearer token included in the request is invalid"
#: The text Claude Code recognises as "the prompt no longer fits": it triggers compaction.
CONTEXT_TOO_LONG_MESSAGE: Final = (
    "prompt is too long: the conversation exceeds the model's context window "
    "(upstream: Input is too long). Reduce the conversation history, system prompt or tools."
)


def _parse_body(body: bytes) -> tuple[str, str | None]:
    """(message, reason) from ``{"message":…,"reason":…}`` (reason may be nested)."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:500].decode("utf-8", "replace").strip(), None
    if not isinstance(data, dict):
        return str(data)[:500], None
    message = data.get("message") or data.get("Message") or ""
    reason = data.get("reason")
    nested = data.get("error")
    if isinstance(nested, dict):
        message = message or nested.get("message") or ""
        reason = reason or nested.get("reason")
    return str(message)[:500], (str(reason) if reason else None)


def classify(
    status: int, body: bytes, headers: dict[str, str] | None = None
) -> UpstreamStatusError:
    """Build the error for an upstream answer with ``status`` and ``body``."""
    message, reason = _parse_body(body[:MAX_ERROR_BODY])
    text = body[:MAX_ERROR_BODY].decode("utf-8", "replace")
    kind = _kind(status, text, reason)
    return UpstreamStatusError(
        f"upstream answered {status}: {message or 'no message'}",
        upstream_status=status,
        kind=kind,
        reason=reason,
        upstream_message=message,
        retry_after=(headers or {}).get("retry-after"),
    )


def _kind(status: int, text: str, reason: str | None) -> str:
    if "Input is too long" in text or reason == "CONTENT_LENGTH_EXCEEDS_THRESHOLD":
        return "context_too_long"
    if status == 402 or "MONTHLY_REQUEST_COUNT" in text:
        return "quota"
    if "INSUFFICIENT_MODEL_CAPACITY" in text or "unexpectedly high load" in text:
        return "capacity"
    if status in (401, 403):
        if BEARER_INVALID_TEXT in text:
            return "bearer_invalid"
        if "TEMPORARILY_SUSPENDED" in text or "suspended" in text.lower():
            return "suspended"
        return "forbidden"
    if status == 429:
        return "user_throttled" if "USER_REQUEST_RATE_EXCEEDED" in text else "throttled"
    if status == 400:
        return "bad_request"
    if status >= 500 or status == 408:
        return "server"
    return "other"


def client_error(error: KiroFastError) -> KiroFastError:
    """What the client sees when ``error`` ends the request (no attempt left)."""
    if isinstance(error, UpstreamException):
        kind, upstream_message, retry_after = error.kind, error.message, "30"
        if kind == "other":
            return error
    elif isinstance(error, UpstreamStatusError):
        kind = error.kind
        upstream_message = error.upstream_message or "no message"
        retry_after = error.retry_after or "30"
    else:
        return error
    if kind == "context_too_long":
        return ContextTooLong(CONTEXT_TOO_LONG_MESSAGE)
    if kind == "bad_request":
        return InvalidRequest(f"upstream rejected the request: {upstream_message}")
    if kind in ("quota", "user_throttled", "throttled"):
        return RateLimited(
            f"upstream rate limit: {upstream_message}", headers={"retry-after": retry_after}
        )
    if kind in ("capacity", "server"):
        return Overloaded(f"upstream overloaded: {upstream_message}")
    return UpstreamError(f"upstream error: {upstream_message}")
