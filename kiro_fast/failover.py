"""Retry and failover policy: what to do after an attempt failed (spec kiro-api.md §9.2,
kiro-auth.md §8.1).

Pure decisions, no I/O: :meth:`FailoverPolicy.decide` looks at the error of one attempt
and says whether to try again, on which credential, after how long, and what becomes of
the credential. The relay carries the decision out through the pool.

The rules:

* 400 (context too long, malformed, unknown model) — never retried: the request is at fault.
* 401/403 "bearer token invalid" — one forced refresh of that credential, then retry on it;
  a second time on the same credential counts a failure and moves on.
* 402 / ``MONTHLY_REQUEST_COUNT`` — the credential is out until its reset date; another one.
* 403 suspended, other 401/403 — count a failure (N in a row disable it); another one.
* 429 of the account (the "suspicious activity" limit) — a long cool-down, another one.
* 429 ``USER_REQUEST_RATE_EXCEEDED`` — a short cool-down (or the upstream's
  ``Retry-After``), another one.
* With a single credential there is nowhere to switch to, so 429s are retried on it after
  a backoff and never cool it down (kiro-gateway: "single account: no breaker").
* 5xx / high load / capacity / network / timeouts / a broken event stream — back off
  with jitter and retry on the same credential (no penalty: not the account's fault).
* Attempts per request: min(3 × credentials, 9); only before the first byte of content
  reached the client (the relay's rule).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final, Literal

from .errors import (
    EventStreamError,
    KiroFastError,
    NoCredentialAvailable,
    TokenRefreshError,
    UpstreamError,
    UpstreamException,
    UpstreamStatusError,
)

#: kiro.rs: 3 attempts per credential, 9 at most (kiro-auth.md §8.2).
ATTEMPTS_PER_CREDENTIAL: Final = 3
MAX_ATTEMPTS: Final = 9
#: Backoff before the n-th retry: min(BASE × 2^n, CAP) plus up to 25 % jitter (kiro.rs).
BACKOFF_BASE: Final = 0.2
BACKOFF_CAP: Final = 2.0
JITTER: Final = 0.25
#: Longest upstream ``Retry-After`` honoured for a cool-down (a day).
RETRY_AFTER_CAP: Final = 86400.0

Action = Literal["retry_same", "retry_other", "refresh_and_retry", "fail"]
Penalty = Literal["", "failure", "quota", "cooldown"]


@dataclass(frozen=True, slots=True)
class FailoverSettings:
    #: cool-down after an account-level 429 (the "suspicious activity" limit)
    throttle_cooldown: float = 300.0
    #: cool-down after a 429 USER_REQUEST_RATE_EXCEEDED
    rate_limit_cooldown: float = 10.0
    backoff_base: float = BACKOFF_BASE
    backoff_cap: float = BACKOFF_CAP


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    delay: float = 0.0
    #: what happens to the credential: "" nothing, "failure" counted, "quota" out until
    #: the reset date, "cooldown" out for ``cooldown`` seconds
    penalty: Penalty = ""
    cooldown: float = 0.0
    #: why, for the cool-down record and logs
    reason: str = ""


def attempt_budget(credentials: int) -> int:
    return max(1, min(ATTEMPTS_PER_CREDENTIAL * credentials, MAX_ATTEMPTS))


def backoff(
    attempt: int,
    rng: random.Random | None = None,
    *,
    base: float = BACKOFF_BASE,
    cap: float = BACKOFF_CAP,
) -> float:
    """Seconds before retry number ``attempt`` (0-based): exponential, capped, jittered."""
    delay: float = min(base * 2.0**attempt, cap)
    return delay + delay * JITTER * (rng or random).random()


def retry_after_seconds(value: str | None) -> float | None:
    """An upstream ``Retry-After`` in seconds (only the delta-seconds form is used)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return min(seconds, RETRY_AFTER_CAP) if seconds > 0 else None


class FailoverPolicy:
    """Decides, attempt after attempt, until the budget is spent."""

    def __init__(
        self,
        credentials: int,
        rng: random.Random | None = None,
        settings: FailoverSettings | None = None,
    ) -> None:
        self.budget = attempt_budget(credentials)
        self.credentials = credentials
        self.settings = settings or FailoverSettings()
        self.attempt = 0
        self._forced: set[int] = set()
        self._rng = rng

    def exhausted(self) -> bool:
        return self.attempt >= self.budget

    def decide(self, error: KiroFastError, cred_id: int | None) -> Decision:
        """Record one failed attempt and say what to do next."""
        self.attempt += 1
        decision = self._classify(error, cred_id)
        if decision.action != "fail" and self.exhausted():
            return Decision(
                "fail", penalty=decision.penalty, cooldown=decision.cooldown, reason=decision.reason
            )
        return decision

    def _backoff(self) -> float:
        s = self.settings
        return backoff(self.attempt - 1, self._rng, base=s.backoff_base, cap=s.backoff_cap)

    def _classify(self, error: KiroFastError, cred_id: int | None) -> Decision:
        if isinstance(error, NoCredentialAvailable):
            return Decision("fail")
        if isinstance(error, TokenRefreshError):
            return Decision("retry_other")
        if isinstance(error, UpstreamStatusError):
            return self._kind(error.kind, cred_id, error.retry_after)
        if isinstance(error, UpstreamException):
            return self._kind(error.kind, cred_id, None)
        if isinstance(error, EventStreamError) or (
            isinstance(error, UpstreamError) and error.retryable
        ):
            return Decision("retry_same", self._backoff())
        return Decision("fail")

    def _kind(self, kind: str, cred_id: int | None, retry_after: str | None) -> Decision:
        if kind == "bearer_invalid":
            if cred_id is not None and cred_id not in self._forced:
                self._forced.add(cred_id)
                return Decision("refresh_and_retry")
            return Decision("retry_other", penalty="failure", reason="BearerInvalid")
        if kind == "quota":
            return Decision("retry_other", penalty="quota", reason="QuotaExceeded")
        if kind in ("forbidden", "suspended"):
            reason = "Suspended" if kind == "suspended" else "Forbidden"
            return Decision("retry_other", penalty="failure", reason=reason)
        if kind in ("throttled", "user_throttled"):
            return self._throttled(kind, retry_after)
        if kind in ("capacity", "server"):
            return Decision("retry_same", self._backoff())
        return Decision("fail")  # context_too_long, bad_request, other

    def _throttled(self, kind: str, retry_after: str | None) -> Decision:
        if self.credentials <= 1:
            return Decision("retry_same", self._backoff())
        s = self.settings
        if kind == "throttled":
            seconds, reason = s.throttle_cooldown, "AccountThrottled"
        else:
            seconds, reason = s.rate_limit_cooldown, "RateLimited"
        seconds = max(seconds, retry_after_seconds(retry_after) or 0.0)
        return Decision("retry_other", penalty="cooldown", cooldown=seconds, reason=reason)
