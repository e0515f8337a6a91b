"""Retry and failover policy: what to do after an attempt failed (spec kiro-api.md §9.2).

Pure decisions, no I/O: :meth:`FailoverPolicy.decide` looks at the error of one attempt
and says whether to try again, on which credential, after how long, and what the
credential's fate is. The relay carries the decision out.

The rules (kiro.rs's table, adjusted where the spec recommends it):

* 400 (context too long, malformed) — never retried: the request itself is at fault.
* 401/403 "bearer token invalid" — one forced refresh of that credential, then retry on it.
* 402 / monthly quota — the credential is out until its reset; try another.
* 401/403 other, suspension — count a failure on the credential; try another.
* 429 — cool the credential down and try another (when there is one), else back off.
* 5xx / high load / network / timeouts — back off with jitter and retry.
* Attempts per request: min(3 × credentials, 9); only before the first byte of content
  reached the client.
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

MAX_ATTEMPTS: Final = 9
#: Backoff before the n-th retry: min(BASE × 2^n, CAP) plus up to 25 % jitter.
BACKOFF_BASE: Final = 0.2
BACKOFF_CAP: Final = 2.0

Action = Literal["retry_same", "retry_other", "refresh_and_retry", "fail"]


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    delay: float = 0.0
    #: what happens to the credential: "" nothing, "failure" counted, "quota", "cooldown"
    penalty: str = ""


def attempt_budget(credentials: int) -> int:
    return max(1, min(3 * credentials, MAX_ATTEMPTS))


def backoff(attempt: int, rng: random.Random | None = None) -> float:
    base: float = min(BACKOFF_BASE * 2.0**attempt, BACKOFF_CAP)
    jitter: float = (rng or random).random()
    return base + base * 0.25 * jitter


class FailoverPolicy:
    """Decides, attempt after attempt, until the budget is spent."""

    def __init__(self, credentials: int, rng: random.Random | None = None) -> None:
        self.budget = attempt_budget(credentials)
        self.credentials = credentials
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
            return Decision("fail", penalty=decision.penalty)
        return decision

    def _classify(self, error: KiroFastError, cred_id: int | None) -> Decision:
        if isinstance(error, NoCredentialAvailable):
            return Decision("fail")
        if isinstance(error, TokenRefreshError):
            return Decision("retry_other", penalty="" if error.permanent else "failure")
        if isinstance(error, UpstreamStatusError):
            return self._status(error, cred_id)
        if isinstance(error, UpstreamException):
            return self._kind(error.kind, cred_id)
        if isinstance(error, EventStreamError):
            return Decision("retry_same", backoff(self.attempt, self._rng))
        if isinstance(error, UpstreamError) and error.retryable:
            return Decision("retry_same", backoff(self.attempt, self._rng))
        return Decision("fail")

    def _status(self, error: UpstreamStatusError, cred_id: int | None) -> Decision:
        return self._kind(error.kind, cred_id)

    def _kind(self, kind: str, cred_id: int | None) -> Decision:
        if kind in ("context_too_long", "bad_request", "other"):
            return Decision("fail")
        if kind == "bearer_invalid":
            if cred_id is not None and cred_id not in self._forced:
                self._forced.add(cred_id)
                return Decision("refresh_and_retry")
            return Decision("retry_other", penalty="failure")
        if kind == "quota":
            return Decision("retry_other", penalty="quota")
        if kind in ("forbidden", "suspended"):
            return Decision("retry_other", penalty="failure")
        if kind in ("throttled", "user_throttled"):
            if self.credentials > 1:
                return Decision("retry_other", penalty="cooldown")
            return Decision("retry_same", backoff(self.attempt, self._rng), penalty="cooldown")
        if kind in ("capacity", "server"):
            return Decision("retry_same", backoff(self.attempt, self._rng))
        return Decision("fail")
