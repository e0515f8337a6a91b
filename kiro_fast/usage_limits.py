"""Account quota: the ``getUsageLimits`` call and what its answer means (kiro-auth.md §7).

What this module owns:

* :func:`fetch_usage`, the request of §7.1 (``GET …/getUsageLimits?origin=AI_EDITOR&
  resourceType=AGENTIC_REQUEST&isEmailRequired=true``, runtime user agents, ``tokentype:
  API_KEY`` for API keys, ``profileArn`` for social logins only — Enterprise IdC accounts
  are rejected when it is present), through the credential's proxy.
* :func:`parse_usage`, the answer of §7.2 reduced to :class:`UsageInfo`: the ``CREDIT``
  breakdown (else the first), ``remaining = base + an ACTIVE free trial + ACTIVE bonuses
  − what they used`` (kiro.rs's formula, §7.3), the reset date, subscription title and
  email. Numbers may arrive as JSON numbers or strings, with or without ``WithPrecision``.
* :class:`UsageCache`, per-credential answers reused for a TTL.

Which credential to ask and what to do with the answer is the pool's job.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode

import orjson

from .credentials import Credential
from .errors import UpstreamError
from .upstream import UpstreamClient
from .upstream_errors import classify

USAGE_QUERY: Final = {"origin": "AI_EDITOR", "resourceType": "AGENTIC_REQUEST"}


@dataclass(frozen=True, slots=True)
class UsageInfo:
    """One account's quota at ``fetched_at`` (credits; times in Unix seconds)."""

    subscription_title: str | None
    limit: float
    used: float
    remaining: float
    next_reset: float | None
    email: str | None
    fetched_at: float

    @property
    def percentage(self) -> float:
        """0–100, as kiro.rs reports it."""
        return min(100.0, self.used / self.limit * 100.0) if self.limit > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The admin API's view (kiro.rs balance shape plus the email)."""
        return {
            "subscriptionTitle": self.subscription_title,
            "currentUsage": self.used,
            "usageLimit": self.limit,
            "remaining": self.remaining,
            "usagePercentage": round(self.percentage, 2),
            "nextResetAt": self.next_reset,
            "email": self.email,
            "fetchedAt": self.fetched_at,
        }


def _number(data: Mapping[str, Any], key: str) -> float:
    """``keyWithPrecision``, else ``key``; numbers or numeric strings; 0 when absent."""
    for name in (key + "WithPrecision", key):
        value = data.get(name)
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                continue
    return 0.0


def _timestamp(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _breakdown(data: Mapping[str, Any]) -> Mapping[str, Any]:
    items = data.get("usageBreakdownList")
    if not isinstance(items, list):
        return {}
    objects = [item for item in items if isinstance(item, dict)]
    for item in objects:
        if item.get("resourceType") == "CREDIT":
            return item
    return objects[0] if objects else {}


def parse_usage(data: Any, now: float) -> UsageInfo:
    """Reduce a ``getUsageLimits`` answer to the numbers the pool and admin API use."""
    if not isinstance(data, dict):
        data = {}
    item = _breakdown(data)
    limit, used = _number(item, "usageLimit"), _number(item, "currentUsage")
    trial = item.get("freeTrialInfo")
    if isinstance(trial, dict) and trial.get("freeTrialStatus") == "ACTIVE":
        limit += _number(trial, "usageLimit")
        used += _number(trial, "currentUsage")
    bonuses = item.get("bonuses")
    for bonus in bonuses if isinstance(bonuses, list) else ():
        if isinstance(bonus, dict) and bonus.get("status") == "ACTIVE":
            limit += _number(bonus, "usageLimit")
            used += _number(bonus, "currentUsage")
    subscription = data.get("subscriptionInfo")
    user = data.get("userInfo")
    title = subscription.get("subscriptionTitle") if isinstance(subscription, dict) else None
    email = user.get("email") if isinstance(user, dict) else None
    reset = _timestamp(data.get("nextDateReset")) or _timestamp(item.get("nextDateReset"))
    return UsageInfo(
        subscription_title=title if isinstance(title, str) and title else None,
        limit=limit,
        used=used,
        remaining=max(0.0, limit - used),
        next_reset=reset,
        email=email if isinstance(email, str) and email else None,
        fetched_at=now,
    )


def usage_url(client: UpstreamClient, cred: Credential) -> str:
    query = dict(USAGE_QUERY, isEmailRequired="true")
    if cred.auth_method == "social" and cred.profile_arn:
        query["profileArn"] = cred.profile_arn
    return client.api_base(cred) + "/getUsageLimits?" + urlencode(query)


async def fetch_usage(client: UpstreamClient, cred: Credential, now: float) -> UsageInfo:
    """Ask the upstream for ``cred``'s quota (its token must be fresh).

    Raises:
        UpstreamStatusError: a non-200 answer, classified like chat errors
            (``bearer_invalid``, ``suspended``, ``throttled``…).
        UpstreamError: network failure or timeout, or an answer that is not JSON.
    """
    status, raw = await client.call_json(
        "GET",
        usage_url(client, cred),
        cred=cred,
        headers=client.runtime_headers(cred),
        timeout=client.config.auth_timeout,
    )
    if status != 200:
        raise classify(status, raw)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamError("getUsageLimits answered with something that is not JSON") from None
    return parse_usage(data, now)


def first_of_next_month(now: float) -> float:
    """Midnight UTC on the 1st of next month: when monthly quotas reset if nothing says."""
    year, month = time.gmtime(now)[:2]
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return float(calendar.timegm((year, month, 1, 0, 0, 0)))


class UsageCache:
    """The last answer per credential, reused for ``ttl`` seconds."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[int, UsageInfo] = {}

    def get(self, cred_id: int, now: float) -> UsageInfo | None:
        """A fresh answer, or ``None``."""
        info = self._entries.get(cred_id)
        if info is None or now - info.fetched_at >= self.ttl:
            return None
        return info

    def last(self, cred_id: int) -> UsageInfo | None:
        """The last answer however old (for ordering and reset dates)."""
        return self._entries.get(cred_id)

    def put(self, cred_id: int, info: UsageInfo) -> None:
        self._entries[cred_id] = info

    def forget(self, cred_id: int) -> None:
        self._entries.pop(cred_id, None)
