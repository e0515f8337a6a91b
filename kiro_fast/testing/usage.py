"""Usage and quota of a fake account, as ``getUsageLimits`` reports it (kiro-auth.md §7).

Owns :class:`Usage` (base credits, a free trial, bonuses, what has been used), the
"remaining" arithmetic kiro.rs uses (§7.3) and the JSON shape of the answer (§7.2,
kiro-api.md §2.5). Timestamps are Unix seconds as floats, as the upstream sends them.

Must not know about tokens, HTTP or the event loop.
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass, field
from typing import Any, Final

_DAY: Final = 86_400


@dataclass
class FreeTrial:
    usage_limit: float = 500.0
    current_usage: float = 0.0
    status: str = "ACTIVE"
    expiry: float = 1_772_785_769.036


@dataclass
class Bonus:
    code: str = "WELCOME"
    display_name: str = "Welcome bonus"
    usage_limit: float = 100.0
    current_usage: float = 0.0
    status: str = "ACTIVE"
    expires_at: float = 1_770_000_000.0


@dataclass
class Usage:
    """What ``getUsageLimits`` reports for one account (kiro-auth.md §7.2)."""

    subscription_title: str = "KIRO PRO+"
    subscription_type: str = "Q_DEVELOPER_STANDALONE_PRO_PLUS"
    resource_type: str = "CREDIT"
    usage_limit: float = 2000.0
    current_usage: float = 0.0
    overage_status: str = "DISABLED"
    overage_rate: float = 0.04
    #: ``None``: midnight UTC on the first day of next month, at query time
    next_date_reset: float | None = None
    free_trial: FreeTrial | None = None
    bonuses: list[Bonus] = field(default_factory=list)
    email: str = ""
    user_id: str = ""
    #: add each streamed answer's metered credits to ``current_usage``
    track_chat: bool = False
    #: answer chat with 402 MONTHLY_REQUEST_COUNT once nothing remains
    enforce_limit: bool = False

    def total_limit(self) -> float:
        """Base limit + an active free trial + active bonuses (kiro.rs, §7.3)."""
        trial = self.free_trial
        active = trial is not None and trial.status == "ACTIVE"
        total = self.usage_limit + (trial.usage_limit if trial and active else 0)
        return total + sum(b.usage_limit for b in self.bonuses if b.status == "ACTIVE")

    def total_used(self) -> float:
        trial = self.free_trial
        active = trial is not None and trial.status == "ACTIVE"
        used = self.current_usage + (trial.current_usage if trial and active else 0)
        return used + sum(b.current_usage for b in self.bonuses if b.status == "ACTIVE")

    def remaining(self) -> float:
        return max(0.0, self.total_limit() - self.total_used())


def usage_limits(usage: Usage, now: float) -> dict[str, Any]:
    """The ``getUsageLimits`` answer (kiro-auth.md §7.2, kiro-api.md §2.5)."""
    reset = usage.next_date_reset or _next_month(now)
    breakdown: dict[str, Any] = {
        "bonuses": [_bonus(b) for b in usage.bonuses],
        "currency": "USD",
        "currentOverages": 0,
        "currentOveragesWithPrecision": 0.0,
        "currentUsage": int(usage.current_usage),
        "currentUsageWithPrecision": usage.current_usage,
        "displayName": "Credit",
        "displayNamePlural": "Credits",
        "nextDateReset": reset,
        "overageCap": 0,
        "overageCapWithPrecision": 0.0,
        "overageCharges": 0.0,
        "overageRate": usage.overage_rate,
        "resourceType": usage.resource_type,
        "unit": "INVOCATIONS",
        "usageLimit": int(usage.usage_limit),
        "usageLimitWithPrecision": usage.usage_limit,
    }
    if usage.free_trial:
        breakdown["freeTrialInfo"] = _trial(usage.free_trial)
    title = usage.subscription_title
    overage = "NOT_OVERAGE_CAPABLE" if "FREE" in title else "OVERAGE_CAPABLE"
    return {
        "daysUntilReset": max(0, int((reset - now) // _DAY)),
        "limits": [],
        "nextDateReset": reset,
        "overageConfiguration": {"overageStatus": usage.overage_status},
        "subscriptionInfo": {
            "overageCapability": overage,
            "subscriptionManagementTarget": "MANAGE",
            "subscriptionName": title,
            "subscriptionTitle": title,
            "type": usage.subscription_type,
            "upgradeCapability": "UPGRADE_CAPABLE",
        },
        "usageBreakdownList": [breakdown],
        "userInfo": {"email": usage.email, "userId": usage.user_id},
    }


def _next_month(now: float) -> float:
    year, month = time.gmtime(now)[:2]
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return float(calendar.timegm((year, month, 1, 0, 0, 0)))


def _trial(trial: FreeTrial) -> dict[str, Any]:
    return {
        "currentUsage": int(trial.current_usage),
        "currentUsageWithPrecision": trial.current_usage,
        "freeTrialExpiry": trial.expiry,
        "freeTrialStatus": trial.status,
        "usageLimit": int(trial.usage_limit),
        "usageLimitWithPrecision": trial.usage_limit,
    }


def _bonus(bonus: Bonus) -> dict[str, Any]:
    return {
        "bonusCode": bonus.code,
        "currentUsage": bonus.current_usage,
        "currentUsageWithPrecision": bonus.current_usage,
        "displayName": bonus.display_name,
        "expiresAt": bonus.expires_at,
        "status": bonus.status,
        "usageLimit": bonus.usage_limit,
        "usageLimitWithPrecision": bonus.usage_limit,
    }
