"""HTTP helpers for the admin tests: a small stdlib client that keeps every answer.

:class:`Http` talks to a kiro_fast on loopback with ``http.client`` (a new connection per
call) and records every response body, so a test can scan all of them for secrets at the
end. :class:`Admin` adds an admin credential to each call.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

MODEL = "claude-sonnet-4-6"


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class Http:
    url: str
    bodies: list[bytes] = field(default_factory=list)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        *,
        raw: bytes | None = None,
    ) -> Response:
        parts = urlsplit(self.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        sent = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            sent.setdefault("content-type", "application/json")
        try:
            conn.request(method, path, body=data, headers=sent)
            answer = conn.getresponse()
            content = answer.read()
            result = Response(
                answer.status, {k.lower(): v for k, v in answer.getheaders()}, content
            )
        finally:
            conn.close()
        self.bodies.append(content)
        return result

    def chat(self, key: str, text: str = "hello", model: str = MODEL) -> Response:
        """One non-streaming ``/v1/messages`` call."""
        body = {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": text}]}
        return self.request("POST", "/v1/messages", body, {"x-api-key": key})

    def openai_chat(self, key: str, text: str = "hello", model: str = MODEL) -> Response:
        body = {"model": model, "messages": [{"role": "user", "content": text}]}
        return self.request(
            "POST", "/v1/chat/completions", body, {"authorization": f"Bearer {key}"}
        )


@dataclass
class Admin:
    """Admin API calls with one credential (``x-api-key``, or ``Bearer`` if asked)."""

    http: Http
    key: str
    bearer: bool = False

    def _headers(self) -> dict[str, str]:
        if self.bearer:
            return {"authorization": f"Bearer {self.key}"}
        return {"x-api-key": self.key}

    def call(self, method: str, path: str, body: Any = None) -> Response:
        return self.http.request(method, "/api/admin" + path, body, self._headers())

    def get(self, path: str) -> Response:
        return self.call("GET", path)

    def post(self, path: str, body: Any = None) -> Response:
        return self.call("POST", path, body)

    def put(self, path: str, body: Any = None) -> Response:
        return self.call("PUT", path, body)

    def delete(self, path: str) -> Response:
        return self.call("DELETE", path)

    def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        answer = self.call(method, path, body)
        assert answer.status == status, (answer.status, answer.body[:500])
        return answer.json

    def credentials(self) -> dict[int, dict[str, Any]]:
        return {c["id"]: c for c in self.ok("GET", "/credentials")["credentials"]}


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait (bounded) until ``check()`` holds: for effects recorded after an answer left."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:.1f} s")
        time.sleep(0.02)


def jwt_decode(token: str, secret: str) -> dict[str, Any]:
    """Verify an HS256 JWT the way any JWT library does, and return its claims."""
    head, payload, signature = token.split(".")

    def unb64(text: str) -> bytes:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

    expected = hmac.new(secret.encode(), f"{head}.{payload}".encode(), hashlib.sha256).digest()
    assert hmac.compare_digest(unb64(signature), expected), "signature does not verify"
    assert json.loads(unb64(head)) == {"alg": "HS256", "typ": "JWT"}
    claims: dict[str, Any] = json.loads(unb64(payload))
    return claims


def jwt_encode(claims: dict[str, Any], secret: str) -> str:
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), f"{head}.{payload}".encode(), hashlib.sha256).digest()
    return f"{head}.{payload}.{b64(signature)}"
