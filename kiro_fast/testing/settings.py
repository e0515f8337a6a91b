"""Settings of the fake upstream: one mutable dataclass, read on every request.

Owns the knobs tests, benchmarks and the CLI turn: answer mode, authentication,
validation, the region the OIDC endpoints pretend to be in, fragment sizes, canned
texts, timing of paced and chunked delivery, the seed. Tests may change fields of a
running fake's ``settings``; the next request sees them.

Must not know about HTTP or the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

from .validation import DEFAULT_VALIDATION, HostMode, ValidationSettings

#: ``normal``: scripted and default answers; ``fast``/``paced``: the canned benchmark answer.
Mode = Literal["normal", "fast", "paced"]

#: Hard cap on a request body; above it the fake answers 413 and closes.
MAX_REQUEST_BYTES: Final = 32 * 1024 * 1024


@dataclass(kw_only=True)
class FakeSettings:
    mode: Mode = "normal"
    #: the global ticker period of paced delivery
    tick_ms: float = 2.0
    #: ``False`` accepts any bearer, or none (demo, benchmarks)
    require_auth: bool = True
    #: a ``ksk_`` key must come with ``tokentype: API_KEY`` (kiro-auth.md §4.2)
    api_key_requires_tokentype: bool = True
    #: ``False`` skips every request rule (``--no-validate``)
    validate: bool = True
    validation: ValidationSettings = field(default_factory=lambda: DEFAULT_VALIDATION)
    #: ``q`` (profileArn optional) or ``runtime`` (profileArn required), unless the
    #: Host header or a ``/q/<region>``, ``/runtime/<region>`` path prefix says otherwise
    host_mode: HostMode = "q"
    #: the region the OIDC endpoints pretend to serve, unless the Host header
    #: ``oidc.<region>.amazonaws.com`` or a ``/oidc/<region>`` path prefix says otherwise
    region: str = "us-east-1"
    seed: int = 0
    #: keep every request in ``FakeUpstream.requests`` (off for long benchmarks)
    record_requests: bool = True
    fragment_min_chars: int = 1
    fragment_max_chars: int = 24
    default_text: str = "Hello from the fake Kiro upstream. This answer arrives in small fragments."
    default_thinking: str = "The user sent a message. I will answer briefly and clearly."
    default_reasoning: str = "Native reasoning of the fake model: nothing to worry about."
    #: the default answer when chunking, so some cut can fall inside a multi-byte character
    unicode_text: str = "Grüße aus Köln — 日本語のテキスト, emoji 🎉🚀 and ✓ done."
    metering_usage: float = 0.0123
    #: pause between the writes of random TCP chunking
    chunk_interval_ms: float = 1.0
    chunk_max_bytes: int = 48
    access_token_ttl: int = 3600
    #: seconds a device-flow client must wait between polls (else ``slow_down``)
    device_interval: int = 1
    device_expires_in: int = 600
    #: approve every device code at its first poll (for demos; tests call approve_device)
    device_auto_approve: bool = False
    mcp_result_count: int = 3
    max_request_bytes: int = MAX_REQUEST_BYTES
