"""``/v1/messages/count_tokens``: an external counter when one is configured, else the estimate.

kiro.rs's option (kiro-api.md §8.4): the request's JSON goes unchanged to an
Anthropic-compatible ``count_tokens`` endpoint (``countTokensApiUrl``) with the key in
``x-api-key`` or ``Authorization: Bearer`` (``countTokensAuthType``), and its
``input_tokens`` is the answer. Any failure — no answer in time, a non-200 status, a
body without a positive integer ``input_tokens`` — falls back to the local estimate
(:func:`kiro_fast.convert.count_tokens`, the same one behind ``message_start``), so the
endpoint never fails because the external counter did.

Counter (exported as a metric): :data:`COUNT_TOKENS` — ``forwarded``, ``fallback``.

Must not know the upstream (Kiro) or credentials; the key is never logged.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Final

import orjson

from . import metrics
from .config import Config
from .errors import KiroFastError
from .upstream import UpstreamClient

log = logging.getLogger("kiro_fast.count_tokens")

COUNT_TOKENS: Counter[str] = metrics.CountedMap(metrics.COUNT_TOKENS)

#: The external counter answers in milliseconds; a client waits on this call.
FORWARD_TIMEOUT: Final = 10.0


def forward_headers(config: Config) -> dict[str, str]:
    headers = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
    key = config.count_tokens_api_key
    if key:
        if config.count_tokens_auth_type == "bearer":
            headers["authorization"] = "Bearer " + key
        else:
            headers["x-api-key"] = key
    return headers


async def external_count(
    client: UpstreamClient, config: Config, payload: dict[str, Any]
) -> int | None:
    """``input_tokens`` from the configured external endpoint, or None on any failure."""
    url = config.count_tokens_api_url
    if not url:
        return None
    try:
        status, body = await client.call_json(
            "POST",
            url,
            cred=None,
            headers=forward_headers(config),
            json_body=payload,
            timeout=FORWARD_TIMEOUT,
        )
    except KiroFastError as exc:
        return _fallback(f"unreachable: {exc.message}")
    if status != 200:
        return _fallback(f"answered {status}")
    try:
        tokens = orjson.loads(body).get("input_tokens")
    except (orjson.JSONDecodeError, AttributeError):
        return _fallback("answered something other than a JSON object")
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1:
        return _fallback("answered without a positive input_tokens")
    COUNT_TOKENS["forwarded"] += 1
    return tokens


def _fallback(why: str) -> int | None:
    """Count and log a failed forward; None: the caller uses the local estimate."""
    COUNT_TOKENS["fallback"] += 1
    log.warning("external count_tokens endpoint %s; using the local estimate", why)
    return None
