"""The whole kiro_fast exception tree.

Rules this module owns:

* Every error kiro_fast raises on purpose derives from :class:`KiroFastError`.
* Every error knows how it is answered: ``status`` (HTTP status), ``error_type``
  (the Anthropic ``error.type``; the OpenAI surface derives its own from it) and
  ``retryable`` (whether another attempt, possibly on another credential, may help).
* Foreign exceptions (aiohttp, OSError, json) are mapped once, where they enter
  (``upstream.py`` for the upstream client, ``credentials`` for refresh calls), and
  the original is kept as ``__cause__``.
* Messages are lower-case, state the numbers and never contain a secret.

This is a leaf module: it imports nothing from kiro_fast, so the Cython decoder and
every layer above can share these classes.
"""

from __future__ import annotations

from typing import ClassVar


class KiroFastError(Exception):
    """Base of every kiro_fast error; never raised directly."""

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "api_error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str = "", *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: extra response headers (e.g. ``retry-after``) the edge should send
        self.headers: dict[str, str] = headers or {}


# --------------------------------------------------------------------------- client side


class RequestError(KiroFastError):
    """The caller's fault: a 4xx, never retried."""

    status = 400
    error_type = "invalid_request_error"


class InvalidRequest(RequestError):
    """Bad JSON, a wrong type, a missing field or an unsupported value."""


class AuthenticationError(RequestError):
    status = 401
    error_type = "authentication_error"


class PermissionDenied(RequestError):
    status = 403
    error_type = "permission_error"


class NotFound(RequestError):
    status = 404
    error_type = "not_found_error"


class MethodNotAllowed(RequestError):
    status = 405
    error_type = "invalid_request_error"


class PayloadTooLarge(RequestError):
    status = 413
    error_type = "request_too_large"


class RateLimited(RequestError):
    """A local limit (client key RPM / tokens per day, or no credential free)."""

    status = 429
    error_type = "rate_limit_error"


class ContextTooLong(InvalidRequest):
    """The conversation does not fit the model's context; Claude Code compacts on this."""


class PreviousResponseNotFound(InvalidRequest):
    """``previous_response_id`` names a response this process does not hold (never seen,
    stored with ``store: false``, expired or evicted)."""


# --------------------------------------------------------------------------- upstream side


class UpstreamError(KiroFastError):
    """The upstream, or the road to it, failed."""

    status = 502
    error_type = "api_error"


#: What each upstream failure ``kind`` means for the client: (status, error type,
#: retryable). Shared by HTTP error answers and mid-stream exception frames.
UPSTREAM_KINDS: dict[str, tuple[int, str, bool]] = {
    "context_too_long": (400, "invalid_request_error", False),
    "bad_request": (400, "invalid_request_error", False),
    "quota": (429, "rate_limit_error", False),
    "user_throttled": (429, "rate_limit_error", True),
    "throttled": (429, "rate_limit_error", True),
    "capacity": (529, "overloaded_error", True),
    "server": (529, "overloaded_error", True),
    "bearer_invalid": (502, "api_error", False),
    "suspended": (502, "api_error", False),
    "forbidden": (502, "api_error", False),
    "other": (502, "api_error", False),
}


def _apply_kind(error: UpstreamError, kind: str) -> None:
    status, error_type, retryable = UPSTREAM_KINDS.get(kind, UPSTREAM_KINDS["other"])
    error.status, error.error_type, error.retryable = status, error_type, retryable  # type: ignore[misc]


class UpstreamUnavailable(UpstreamError):
    """Connection refused, reset, DNS failure."""

    retryable = True


class UpstreamTimeout(UpstreamError, TimeoutError):
    """No first byte, or no next byte, within the configured time."""

    status = 504
    retryable = True


class UpstreamStatusError(UpstreamError):
    """A non-200 answer from the upstream, classified by :mod:`kiro_fast.upstream_errors`.

    ``kind`` is the stable classification the dispatcher acts on (``bearer_invalid``,
    ``quota``, ``throttled``, ``capacity``…); ``upstream_message`` is the upstream's own
    ``message`` text (never contains a secret).
    """

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int,
        kind: str = "other",
        reason: str | None = None,
        upstream_message: str = "",
        retry_after: str | None = None,
    ) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status
        self.kind = kind
        self.reason = reason
        self.upstream_message = upstream_message
        self.retry_after = retry_after
        _apply_kind(self, kind)


class UpstreamException(UpstreamError):
    """An ``exception`` or ``error`` frame inside the event stream.

    ``kind`` uses the vocabulary of :class:`UpstreamStatusError` (``capacity``,
    ``throttled``, ``quota``, ``context_too_long``, ``other``), so failover and the
    client answer treat a mid-stream exception like the HTTP error it stands for.
    """

    def __init__(
        self, message: str, *, exception_type: str | None = None, kind: str = "other"
    ) -> None:
        super().__init__(message)
        self.exception_type = exception_type
        self.kind = kind
        _apply_kind(self, kind)


class Overloaded(UpstreamError):
    """Capacity problems upstream (high load, 5xx after retries): Anthropic's 529."""

    status = 529
    error_type = "overloaded_error"
    retryable = True


# --------------------------------------------------------------------------- event stream


class EventStreamError(UpstreamError, ValueError):
    """The event-stream bytes themselves are wrong (raised identically by C and Python).

    ``messages`` holds the messages decoded by the same ``feed()`` call before the
    error was met, so nothing already received is lost.
    """

    code: ClassVar[str] = "event_stream_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.messages: list[object] = []


class ChecksumMismatch(EventStreamError):
    code = "crc_mismatch"
    part: ClassVar[str] = ""

    def __init__(self, expected: int, computed: int) -> None:
        super().__init__(
            f"{self.part} crc mismatch: expected 0x{expected:08x}, computed 0x{computed:08x}"
        )
        self.expected = expected
        self.computed = computed


class PreludeChecksumMismatch(ChecksumMismatch):
    code = "prelude_crc_mismatch"
    part = "prelude"


class MessageChecksumMismatch(ChecksumMismatch):
    code = "message_crc_mismatch"
    part = "message"


class InvalidLength(EventStreamError):
    code = "invalid_length"

    def __init__(self, field: str, value: int, limit: int, relation: str) -> None:
        super().__init__(f"invalid {field}: {value} {relation} {limit}")
        self.field = field
        self.value = value
        self.limit = limit


class InvalidHeadersLength(InvalidLength):
    code = "invalid_headers_length"


class MessageTooShort(InvalidLength):
    code = "message_too_short"


class MessageTooLarge(InvalidLength):
    code = "message_too_large"


class InvalidHeader(EventStreamError):
    """Unknown type byte, a value running past the header block, bad UTF-8, empty name."""

    code = "invalid_header"


class DuplicateHeader(InvalidHeader):
    code = "duplicate_header"

    def __init__(self, name: str) -> None:
        super().__init__(f"duplicate header: {name!r}")
        self.name = name


class TruncatedStream(EventStreamError):
    """The stream ended inside a message (raised by ``feed_eof``)."""

    code = "truncated_stream"


# --------------------------------------------------------------------------- credentials


class CredentialError(KiroFastError):
    pass


class NoCredentialAvailable(CredentialError):
    """No credential can serve the request: none configured, or every one disabled or failing.

    Anthropic's 529 ``overloaded_error``: the client may try again later, but no time can be
    named. When a time can be named, :class:`CredentialsBusy` is raised instead.
    """

    status = 529
    error_type = "overloaded_error"
    retryable = False


class CredentialsBusy(NoCredentialAvailable):
    """Every usable credential is cooling down, out of quota until a date, at its concurrency
    or requests-per-minute cap, or the wait queue is full or timed out.

    A 429 ``rate_limit_error`` with ``retry-after`` (whole seconds, at least 1): the earliest
    moment a credential is expected to be free.
    """

    status = 429
    error_type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: float) -> None:
        seconds = max(1, int(-(-retry_after // 1)))
        super().__init__(message)
        self.retry_after = seconds
        self.headers["retry-after"] = str(seconds)


class TokenRefreshError(CredentialError):
    """A refresh call failed. ``permanent`` means the refresh token is dead."""

    status = 502
    error_type = "api_error"

    def __init__(self, message: str, *, permanent: bool = False, upstream_status: int = 0) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.upstream_status = upstream_status
        self.retryable = not permanent  # type: ignore[misc]


class ConfigError(KiroFastError):
    """A configuration or credential file is unusable; raised at start-up."""
