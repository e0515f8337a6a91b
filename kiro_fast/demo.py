"""``kiro-fast demo``: the proxy and the built-in fake Kiro upstream, with no credentials.

Starts :class:`kiro_fast.testing.FakeUpstream` on a free loopback port, registers one
fake social account there, points every upstream base URL of the configuration at it and
runs kiro_fast as usual, so the whole path — token refresh, request conversion, the
binary event stream, SSE back to the client — is exercised end to end. It prints a
``curl`` line that works as printed.
"""

from __future__ import annotations

import secrets
from typing import TextIO

from .config import Config
from .credentials import Credential
from .runtime import Runtime
from .testing import FakeSettings, FakeUpstream

DEMO_API_KEY = "kiro-fast-demo-key"


def demo_credential(refresh_token: str) -> Credential:
    # No access token: the first request refreshes it through the fake auth service.
    return Credential(id=1, auth_method="social", refresh_token=refresh_token)


def curl_line(host: str, port: int, api_key: str) -> str:
    return (
        f"curl -N http://{host}:{port}/v1/messages "
        f"-H 'x-api-key: {api_key}' -H 'content-type: application/json' "
        """-d '{"model":"claude-sonnet-4-5","max_tokens":256,"stream":true,"""
        """"messages":[{"role":"user","content":"Hello!"}]}'"""
    )


async def run(config: Config, out: TextIO) -> int:
    fake = FakeUpstream(settings=FakeSettings())
    await fake.start()
    refresh_token = "aorDEMO" + secrets.token_urlsafe(96)
    fake.accounts.add_social(refresh_token)
    api_key = config.api_key or DEMO_API_KEY
    demo_config = config.replace(
        kiro_api_base=fake.url,
        kiro_auth_base=fake.url,
        oidc_base=fake.url,
        api_key=api_key,
    )
    runtime = Runtime(demo_config, [demo_credential(refresh_token)])
    try:
        await runtime.start()
        host = "127.0.0.1" if demo_config.host in ("0.0.0.0", "::") else demo_config.host
        base = f"http://{host}:{runtime.port}"
        print(f"kiro_fast demo: proxy on {base}, fake Kiro upstream on {fake.url}", file=out)
        print("Try it:\n\n  " + curl_line(host, runtime.port, api_key) + "\n", file=out)
        print(f"or: ANTHROPIC_BASE_URL={base} ANTHROPIC_API_KEY={api_key} claude", file=out)
        print("Press Ctrl-C to stop.", file=out, flush=True)
        await runtime.run_until_signalled()
    finally:
        await fake.stop()
    return 0
