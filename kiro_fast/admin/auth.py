"""Who may use the admin API: the admin key, or an admin login with an expiring token.

What this module owns (kiro-auth.md §10.1, §10.2):

* The admin key check: ``x-api-key`` first, then ``Authorization: Bearer``, compared in
  constant time with ``adminApiKey`` (kiro.rs). The client key (``apiKey``) is never an
  admin credential: an ``adminApiKey`` equal to it is ignored (with a warning).
* Admin users (the SQLite variant's login): passwords stored as scrypt hashes
  (``scrypt$N$r$p$salt$hash``, stdlib :func:`hashlib.scrypt`, hashed off the event loop);
  the first user is created at start from ``adminUsername``/``adminPassword`` when it
  does not exist yet (later changes go through the API).
* Login tokens: JWT HS256 (``header.payload.signature``) with ``sub``/``username``,
  ``iat``, ``exp`` (``jwtExpiryHours``) and ``pv``, a fingerprint of the password hash,
  so changing the password ends every token issued before. The signing secret is
  ``jwtSecret``, else a random one generated once and kept in the state store, so every
  worker process accepts the tokens of the others.
* Login rate limiting per client address (the state store's sliding window, so it
  holds across workers): :data:`LOGIN_ATTEMPTS` per :data:`LOGIN_WINDOW` seconds.

The admin API is enabled when an admin key is configured or an admin user exists;
otherwise every admin request is refused with 403 and a message saying how to enable it.

Nothing here logs a key, a password, a hash or a token.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any, Final

import orjson

from ..config import Config
from ..errors import AuthenticationError, InvalidRequest, PermissionDenied, RateLimited
from ..protocol import Request
from ..state import StateStore

#: scrypt cost: 2**14 × 8 × 128 bytes = 16 MiB and ~50 ms per hash; OWASP's minimum.
SCRYPT_N: Final = 2**14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
SCRYPT_SALT_BYTES: Final = 16
SCRYPT_KEY_BYTES: Final = 32
#: Login attempts per client address and window (successful ones count too).
LOGIN_ATTEMPTS: Final = 5
LOGIN_WINDOW: Final = 60.0
#: Passwords shorter than this are refused when set through the API.
MIN_PASSWORD_LENGTH: Final = 8
#: Where the generated token secret lives in the state store's settings (private key).
SECRET_SETTING: Final = "_adminJwtSecret"
SECRET_LOCK: Final = "admin:jwt-secret"
_HEADER: Final = {"alg": "HS256", "typ": "JWT"}

log = logging.getLogger("kiro_fast.admin")


# --------------------------------------------------------------------------- passwords


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, dklen=SCRYPT_KEY_BYTES, maxmem=64 << 20
    )


def hash_password(password: str) -> str:
    """The stored form of a password (blocking: call it in a thread)."""
    salt = secrets.token_bytes(SCRYPT_SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return "$".join(
        ("scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(digest))
    )


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a :func:`hash_password` value (blocking)."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return False
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, expected = _unb64(parts[4]), _unb64(parts[5])
        digest = _scrypt(password, salt, n, r, p)
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(digest, expected)


def password_version(stored_hash: str) -> str:
    """A short fingerprint of a password hash, put in tokens (not the hash itself)."""
    return hashlib.sha256(stored_hash.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- tokens


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_token(claims: dict[str, Any], secret: bytes) -> str:
    """A JWT (HS256) carrying ``claims``."""
    head = _b64(orjson.dumps(_HEADER)) + "." + _b64(orjson.dumps(claims))
    signature = hmac.new(secret, head.encode(), hashlib.sha256).digest()
    return head + "." + _b64(signature)


def read_token(token: str, secret: bytes, now: float) -> dict[str, Any] | None:
    """The claims of a valid, unexpired HS256 token signed with ``secret``; else ``None``."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    head = (parts[0] + "." + parts[1]).encode()
    expected = hmac.new(secret, head, hashlib.sha256).digest()
    try:
        if not hmac.compare_digest(_unb64(parts[2]), expected):
            return None
        header = orjson.loads(_unb64(parts[0]))
        claims = orjson.loads(_unb64(parts[1]))
    except (ValueError, orjson.JSONDecodeError):
        return None
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        return None
    if not isinstance(claims, dict):
        return None
    expires = claims.get("exp")
    if not isinstance(expires, int | float) or isinstance(expires, bool) or expires <= now:
        return None
    return claims


# --------------------------------------------------------------------------- the gate


@dataclass(frozen=True, slots=True)
class Principal:
    """Who an admin request comes from: ``method`` is ``key`` or ``password``."""

    username: str
    method: str


def presented_key(request: Request) -> str | None:
    """``x-api-key``, else the ``Authorization: Bearer`` value (kiro.rs's order)."""
    value = request.header("x-api-key")
    if value:
        return value.strip()
    authorization = request.header("authorization") or ""
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return None


class AdminAuth:
    """Admin credentials of one process (see the module docstring)."""

    def __init__(self, config: Config, state: StateStore) -> None:
        self.config = config
        self.state = state
        self._admin_key = (config.admin_api_key or "").strip().encode()
        if self._admin_key and self._admin_key == (config.api_key or "").strip().encode():
            # The client key must never open the admin API, even when it is the same text.
            log.warning("adminApiKey equals apiKey: it is ignored; set a different admin key")
            self._admin_key = b""
        self._secret: bytes | None = (config.jwt_secret or "").encode() or None
        self._has_users: bool | None = None

    # ------------------------------------------------------------------ start-up

    async def bootstrap(self) -> bool:
        """Create the configured first admin user if it does not exist yet; returns
        whether one was created."""
        password = self.config.admin_password
        username = self.config.admin_username
        if not password or await self.state.get_admin_user(username) is not None:
            return False
        stored = await asyncio.to_thread(hash_password, password)
        await self.state.put_admin_user(username, stored)
        self._has_users = True
        return True

    async def enabled(self) -> bool:
        if self._admin_key:
            return True
        if not self._has_users:
            self._has_users = bool(await self.state.list_admin_users())
        return self._has_users

    # ------------------------------------------------------------------ requests

    async def check(self, request: Request) -> Principal:
        """The principal of an admin request.

        Raises:
            PermissionDenied: the admin API is not enabled.
            AuthenticationError: no admin credential, or a wrong or expired one.
        """
        if not await self.enabled():
            raise PermissionDenied(
                "the admin API is off: set adminApiKey (or ADMIN_PASSWORD for a login)"
            )
        presented = presented_key(request)
        if not presented:
            raise AuthenticationError("Invalid or missing admin API key")
        if self._admin_key and hmac.compare_digest(presented.encode(), self._admin_key):
            return Principal("admin", "key")
        if presented.count(".") == 2:
            principal = await self._from_token(presented)
            if principal is not None:
                return principal
        raise AuthenticationError("Invalid or missing admin API key")

    async def _from_token(self, token: str) -> Principal | None:
        claims = read_token(token, await self.secret(), time.time())
        if claims is None:
            return None
        username = claims.get("sub")
        if not isinstance(username, str):
            return None
        user = await self.state.get_admin_user(username)
        if user is None or claims.get("pv") != password_version(user["password_hash"]):
            return None  # the user is gone or changed the password since
        return Principal(username, "password")

    async def secret(self) -> bytes:
        """The token signing secret: configured, or generated once per deployment."""
        if self._secret is not None:
            return self._secret
        async with self.state.lock(SECRET_LOCK, lease=10.0, wait=15.0):
            stored = (await self.state.get_settings()).get(SECRET_SETTING)
            if not isinstance(stored, str) or not stored:
                stored = secrets.token_urlsafe(48)
                await self.state.set_settings({SECRET_SETTING: stored})
        self._secret = stored.encode()
        return self._secret

    # ------------------------------------------------------------------ login

    async def login(self, username: Any, password: Any, address: str) -> tuple[str, float]:
        """A token for a correct password: (token, expiry as Unix seconds).

        Raises:
            RateLimited: too many attempts from ``address`` (429 with retry-after).
            InvalidRequest: username or password missing.
            AuthenticationError: wrong username or password.
        """
        allowed, retry_after = await self.state.hit_rate(
            f"admin-login:{address}", LOGIN_ATTEMPTS, LOGIN_WINDOW
        )
        if not allowed:
            seconds = max(1, int(-(-retry_after // 1)))
            raise RateLimited(
                f"too many login attempts; try again in {seconds} s",
                headers={"retry-after": str(seconds)},
            )
        if not isinstance(username, str) or not isinstance(password, str) or not password:
            raise InvalidRequest("username and password are required")
        user = await self.state.get_admin_user(username)
        stored = user["password_hash"] if user is not None else _DUMMY_HASH
        # A missing user costs the same hash as a wrong password: no user enumeration.
        good = await asyncio.to_thread(verify_password, password, stored)
        if user is None or not good:
            raise AuthenticationError("wrong username or password")
        return await self.issue(username, stored)

    async def issue(self, username: str, stored_hash: str) -> tuple[str, float]:
        now = time.time()
        expires = now + self.config.jwt_expiry_hours * 3600.0
        claims = {
            "sub": username,
            "username": username,
            "iat": int(now),
            "exp": int(expires),
            "pv": password_version(stored_hash),
        }
        return sign_token(claims, await self.secret()), float(int(expires))

    async def change_password(
        self, principal: Principal, username: Any, old: Any, new: Any
    ) -> None:
        """Set an admin user's password. A password login must give the old password;
        the admin key may set any user's (and create it).

        Raises:
            InvalidRequest: a missing or too short password.
            AuthenticationError: the old password is wrong.
        """
        name = username if isinstance(username, str) and username else principal.username
        if principal.method == "password":
            name = principal.username
        if not isinstance(new, str) or len(new) < MIN_PASSWORD_LENGTH:
            raise InvalidRequest(f"newPassword must have at least {MIN_PASSWORD_LENGTH} characters")
        user = await self.state.get_admin_user(name)
        if principal.method == "password":
            if user is None or not isinstance(old, str):
                raise AuthenticationError("oldPassword is wrong")
            if not await asyncio.to_thread(verify_password, old, user["password_hash"]):
                raise AuthenticationError("oldPassword is wrong")
        stored = await asyncio.to_thread(hash_password, new)
        await self.state.put_admin_user(name, stored)
        self._has_users = True


#: Verified against when the user does not exist (scrypt of a random password).
_DUMMY_HASH: Final = "$".join(
    (
        "scrypt",
        str(SCRYPT_N),
        str(SCRYPT_R),
        str(SCRYPT_P),
        _b64(b"\0" * SCRYPT_SALT_BYTES),
        _b64(b"\0" * SCRYPT_KEY_BYTES),
    )
)
