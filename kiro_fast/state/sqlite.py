"""Embedded SQLite state store: the default, shared by worker processes on one host.

Strategy:

* One stdlib ``sqlite3`` connection per store, used only from the store's own
  single-thread executor, so blocking calls never run on the event loop and the
  connection never crosses threads.
* WAL journal (readers never block the writer) and ``busy_timeout`` (a writer waits for
  another process's write instead of failing). Read-modify-write sequences run inside
  ``BEGIN IMMEDIATE``, which takes the write lock up front, so two processes can never
  both pass a "still free?" check.
* ``synchronous=NORMAL`` for per-request rows (slots, rate hits, counters: a power cut may
  lose the last moments, a process crash loses nothing); ``FULL`` for the transactions
  that carry secrets or configuration (credentials with rotated refresh tokens, settings,
  client keys, admin users), which are rare.
* Locks, slots and rate windows are rows with expiry times compared against the store's
  clock; all processes on one host share the wall clock. Expired rows are ignored at
  once and deleted by the periodic maintenance.
* Versioned schema: ``schema_version`` records each applied step of ``MIGRATIONS``;
  opening an older database upgrades it in one transaction, a newer one is refused.

Not for network file systems (WAL needs shared memory on one host); several hosts use
the Redis backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson

from ..errors import ConfigError, InvalidRequest
from .base import (
    RATE_WINDOW_MAX,
    RETENTION,
    USAGE_FLUSH_INTERVAL,
    Clock,
    GroupBy,
    StateStore,
    UsageTotals,
    check_budget,
    check_client_key_fields,
    check_credential_entry,
    group_field_for,
    minute_of,
    new_token,
    usage_bounds,
    usage_rows,
    utc_day,
)

T = TypeVar("T")

DEFAULT_PATH: Final = Path("data/kiro_fast.db")
#: How long a writer waits for another process's transaction before failing (ms). Every
#: transaction here is short, so reaching this means a stuck process, not contention.
BUSY_TIMEOUT_MS: Final = 10_000
#: Stored in place of a missing credential / client key id in usage rows: NULL would make
#: the primary key of ``usage_minutes`` useless for upserts (NULLs never collide).
_NONE_ID: Final = -1

#: Each step is a list of statements run in one transaction; step N brings the schema to
#: version N. Append new steps; never edit a released one.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE counters (
            name TEXT PRIMARY KEY,
            value INTEGER NOT NULL
        ) WITHOUT ROWID""",
        # ``entry`` is the kiro.rs credentials.json entry (spec kiro-auth.md §2.2) as JSON:
        # one shape for files, the admin API and this table, unknown keys kept.
        """CREATE TABLE credentials (
            id INTEGER PRIMARY KEY,
            entry TEXT NOT NULL,
            version INTEGER NOT NULL,
            updated_at REAL NOT NULL
        )""",
        """CREATE TABLE settings (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            updated_at REAL NOT NULL
        )""",
        """CREATE TABLE users (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            username TEXT NOT NULL UNIQUE,
            password_hash TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        """CREATE TABLE locks (
            name TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            expires_at REAL NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE cooldowns (
            credential_id INTEGER PRIMARY KEY,
            until REAL NOT NULL,
            reason TEXT NOT NULL
        )""",
    ),
    (
        """CREATE TABLE slots (
            scope TEXT NOT NULL,
            token TEXT NOT NULL,
            expires_at REAL NOT NULL,
            PRIMARY KEY (scope, token)
        ) WITHOUT ROWID""",
        """CREATE TABLE rate_hits (
            scope TEXT NOT NULL,
            ts REAL NOT NULL
        )""",
        "CREATE INDEX rate_hits_scope_ts ON rate_hits (scope, ts)",
        """CREATE TABLE token_counters (
            scope TEXT NOT NULL,
            day INTEGER NOT NULL,
            tokens INTEGER NOT NULL,
            PRIMARY KEY (scope, day)
        ) WITHOUT ROWID""",
        """CREATE TABLE client_keys (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            key_hash TEXT NOT NULL UNIQUE,
            key_prefix TEXT NOT NULL,
            rpm_limit INTEGER,
            tpd_limit INTEGER,
            models TEXT,
            enabled INTEGER NOT NULL DEFAULT 1,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        """CREATE TABLE usage_minutes (
            minute INTEGER NOT NULL,
            credential_id INTEGER NOT NULL,
            client_key_id INTEGER NOT NULL,
            model TEXT NOT NULL,
            requests INTEGER NOT NULL,
            errors INTEGER NOT NULL,
            input_tokens INTEGER NOT NULL,
            output_tokens INTEGER NOT NULL,
            duration_ms INTEGER NOT NULL,
            streams INTEGER NOT NULL,
            PRIMARY KEY (minute, credential_id, client_key_id, model)
        ) WITHOUT ROWID""",
    ),
)
SCHEMA_VERSION: Final = len(MIGRATIONS)

_CLIENT_KEY_COLUMNS: Final = (
    "id, name, key_hash, key_prefix, rpm_limit, tpd_limit, models, enabled, created_at, updated_at"
)
_USAGE_UPSERT: Final = """
    INSERT INTO usage_minutes (minute, credential_id, client_key_id, model, requests, errors,
        input_tokens, output_tokens, duration_ms, streams)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (minute, credential_id, client_key_id, model) DO UPDATE SET
        requests = requests + excluded.requests,
        errors = errors + excluded.errors,
        input_tokens = input_tokens + excluded.input_tokens,
        output_tokens = output_tokens + excluded.output_tokens,
        duration_ms = duration_ms + excluded.duration_ms,
        streams = streams + excluded.streams
"""


def schema_version(conn: sqlite3.Connection) -> int:
    """The version recorded in ``conn``'s database (0 for an empty one)."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if not exists:
        return 0
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def migrate(conn: sqlite3.Connection, *, target: int = SCHEMA_VERSION, now: float = 0.0) -> int:
    """Bring the database to ``target`` in one ``BEGIN IMMEDIATE`` transaction.

    Returns the version found before migrating.
    Raises:
        ConfigError: the database is newer than this code, or is not a kiro_fast database.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = schema_version(conn)
        if found > SCHEMA_VERSION:
            raise ConfigError(
                f"state database schema version {found} is newer than this kiro_fast "
                f"supports ({SCHEMA_VERSION}); upgrade kiro_fast or use another database"
            )
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            "version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        for version in range(found + 1, target + 1):
            for statement in MIGRATIONS[version - 1]:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version VALUES (?, ?)", (version, now))
    except sqlite3.OperationalError as exc:
        conn.execute("ROLLBACK")
        if _is_busy(exc):
            raise  # another process holds the database: the caller retries
        raise ConfigError(f"state database cannot be migrated (not kiro_fast's?): {exc}") from None
    except sqlite3.DatabaseError as exc:
        conn.execute("ROLLBACK")
        raise ConfigError(f"state database cannot be migrated (not kiro_fast's?): {exc}") from None
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return found


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def connect(path: Path) -> sqlite3.Connection:
    """An autocommit connection with the pragmas every process must use."""
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise ConfigError(f"state database {path}: WAL journal mode unavailable ({mode})")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _create_private(path: Path) -> None:
    """Create the file (and its directories) readable by the owner only: it holds tokens."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))


class SQLiteStore(StateStore):
    """:class:`StateStore` in one SQLite file (see the module docstring)."""

    kind = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_PATH,
        *,
        clock: Clock | None = None,
        usage_flush_interval: float = USAGE_FLUSH_INTERVAL,
    ) -> None:
        super().__init__(clock=clock, usage_flush_interval=usage_flush_interval)
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    def describe(self) -> str:
        return f"sqlite:{self.path} (schema v{SCHEMA_VERSION}, WAL)"

    async def _open(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="kiro-fast-sqlite")
        try:
            await self._call(self._open_sync)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    def _open_sync(self) -> None:
        _create_private(self.path)
        # Workers starting together race for the file: switching a new file to WAL and
        # migrating can report "locked" at once (SQLite skips the busy handler there), so
        # opening retries for as long as a busy statement would wait.
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        delay = 0.01
        while True:
            try:
                self._conn = self._connect_and_migrate()
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() + delay > deadline:
                    raise ConfigError(f"state database {self.path}: {exc}") from None
            time.sleep(delay)  # a blocking open, on the store's own thread
            delay = min(delay * 2, 0.25)

    def _connect_and_migrate(self) -> sqlite3.Connection:
        conn = connect(self.path)
        try:
            migrate(conn, now=self.clock())
        except BaseException:
            conn.close()
            raise
        return conn

    async def _close(self) -> None:
        if self._executor is None:
            return
        try:
            await self._call(self._close_sync)
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise RuntimeError("the state store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the state store is not open")
        return self._conn

    @contextlib.contextmanager
    def _tx(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``; ``durable`` fsyncs the commit."""
        conn = self._db
        if durable:
            conn.execute("PRAGMA synchronous = FULL")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            if durable:
                conn.execute("PRAGMA synchronous = NORMAL")

    def _one(self, sql: str, *args: Any) -> Any:
        row = self._db.execute(sql, args).fetchone()
        return None if row is None else row[0]

    @staticmethod
    def _bump(conn: sqlite3.Connection, name: str) -> int:
        conn.execute(
            "INSERT INTO counters VALUES (?, 1) ON CONFLICT (name) DO UPDATE SET value = value + 1",
            (name,),
        )
        return int(conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0])

    def _counter(self, name: str) -> int:
        return int(self._one("SELECT value FROM counters WHERE name = ?", name) or 0)

    # ------------------------------------------------------------------ credentials

    async def list_credentials(self) -> list[dict[str, Any]]:
        return await self._call(self._list_credentials)

    def _list_credentials(self) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT entry FROM credentials ORDER BY id").fetchall()
        return [orjson.loads(entry) for (entry,) in rows]

    async def get_credential(self, cred_id: int) -> dict[str, Any] | None:
        raw = await self._call(self._one, "SELECT entry FROM credentials WHERE id = ?", cred_id)
        return None if raw is None else orjson.loads(raw)

    async def put_credential(self, entry: Mapping[str, Any]) -> int:
        cred_id = check_credential_entry(entry)
        raw = orjson.dumps(dict(entry)).decode()
        return await self._call(self._put_credential, cred_id, raw)

    def _put_credential(self, cred_id: int, raw: str) -> int:
        with self._tx(durable=True) as conn:
            version = self._bump(conn, "credential_version")
            conn.execute(
                "INSERT INTO credentials VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "entry = excluded.entry, version = excluded.version, "
                "updated_at = excluded.updated_at",
                (cred_id, raw, version, self.clock()),
            )
            conn.execute(
                "INSERT INTO counters VALUES ('last_credential_id', ?) "
                "ON CONFLICT (name) DO UPDATE SET value = MAX(value, excluded.value)",
                (cred_id,),
            )
        return version

    async def delete_credential(self, cred_id: int) -> bool:
        return await self._call(self._delete_credential, cred_id)

    def _delete_credential(self, cred_id: int) -> bool:
        with self._tx(durable=True) as conn:
            gone = conn.execute("DELETE FROM credentials WHERE id = ?", (cred_id,)).rowcount > 0
            if gone:
                self._bump(conn, "credential_version")
        return gone

    async def allocate_credential_id(self) -> int:
        return await self._call(self._allocate_credential_id)

    def _allocate_credential_id(self) -> int:
        with self._tx(durable=True) as conn:
            top = conn.execute(
                "SELECT MAX(COALESCE((SELECT value FROM counters "
                "WHERE name = 'last_credential_id'), 0), "
                "COALESCE((SELECT MAX(id) FROM credentials), 0))"
            ).fetchone()[0]
            new_id = int(top) + 1
            conn.execute(
                "INSERT OR REPLACE INTO counters VALUES ('last_credential_id', ?)", (new_id,)
            )
        return new_id

    async def credential_version(self, cred_id: int) -> int:
        version = await self._call(
            self._one, "SELECT version FROM credentials WHERE id = ?", cred_id
        )
        return int(version or 0)

    async def credentials_version(self) -> int:
        return await self._call(self._counter, "credential_version")

    # ------------------------------------------------------------------ locks

    async def _lock_acquire(self, name: str, owner: str, lease: float) -> bool:
        return await self._call(self._lock_acquire_sync, name, owner, lease)

    def _lock_acquire_sync(self, name: str, owner: str, lease: float) -> bool:
        now = self.clock()
        cur = self._db.execute(
            "INSERT INTO locks VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
            "owner = excluded.owner, expires_at = excluded.expires_at "
            "WHERE locks.expires_at <= ?",
            (name, owner, now + lease, now),
        )
        return cur.rowcount > 0

    async def _lock_release(self, name: str, owner: str) -> None:
        await self._call(
            self._db.execute, "DELETE FROM locks WHERE name = ? AND owner = ?", (name, owner)
        )

    async def _lock_extend(self, name: str, owner: str, lease: float) -> bool:
        return await self._call(self._lock_extend_sync, name, owner, lease)

    def _lock_extend_sync(self, name: str, owner: str, lease: float) -> bool:
        now = self.clock()
        cur = self._db.execute(
            "UPDATE locks SET expires_at = ? WHERE name = ? AND owner = ? AND expires_at > ?",
            (now + lease, name, owner, now),
        )
        return cur.rowcount > 0

    # ------------------------------------------------------------------ cool-downs

    async def set_cooldown(self, cred_id: int, until: float, reason: str) -> None:
        await self._call(
            self._db.execute,
            "INSERT OR REPLACE INTO cooldowns VALUES (?, ?, ?)",
            (cred_id, float(until), reason),
        )

    async def clear_cooldown(self, cred_id: int) -> None:
        await self._call(
            self._db.execute, "DELETE FROM cooldowns WHERE credential_id = ?", (cred_id,)
        )

    async def cooldowns(self) -> dict[int, tuple[float, str]]:
        return await self._call(self._cooldowns)

    def _cooldowns(self) -> dict[int, tuple[float, str]]:
        rows = self._db.execute(
            "SELECT credential_id, until, reason FROM cooldowns WHERE until > ?", (self.clock(),)
        ).fetchall()
        return {int(cid): (float(until), reason) for cid, until, reason in rows}

    # ------------------------------------------------------------------ budgets

    async def acquire_slot(self, scope: str, limit: int, lease: float) -> str | None:
        check_budget(limit, lease)
        return await self._call(self._acquire_slot, scope, limit, lease)

    def _acquire_slot(self, scope: str, limit: int, lease: float) -> str | None:
        now = self.clock()
        with self._tx() as conn:
            conn.execute("DELETE FROM slots WHERE scope = ? AND expires_at <= ?", (scope, now))
            used = conn.execute("SELECT COUNT(*) FROM slots WHERE scope = ?", (scope,)).fetchone()
            if used[0] >= limit:
                return None
            token = new_token()
            conn.execute("INSERT INTO slots VALUES (?, ?, ?)", (scope, token, now + lease))
        return token

    async def release_slot(self, scope: str, token: str) -> None:
        await self._call(
            self._db.execute, "DELETE FROM slots WHERE scope = ? AND token = ?", (scope, token)
        )

    async def extend_slot(self, scope: str, token: str, lease: float) -> bool:
        return await self._call(self._extend_slot, scope, token, lease)

    def _extend_slot(self, scope: str, token: str, lease: float) -> bool:
        now = self.clock()
        cur = self._db.execute(
            "UPDATE slots SET expires_at = ? WHERE scope = ? AND token = ? AND expires_at > ?",
            (now + lease, scope, token, now),
        )
        return cur.rowcount > 0

    async def slots_in_use(self, scope: str) -> int:
        count = await self._call(
            self._one,
            "SELECT COUNT(*) FROM slots WHERE scope = ? AND expires_at > ?",
            scope,
            self.clock(),
        )
        return int(count)

    async def hit_rate(self, scope: str, limit: int, window: float) -> tuple[bool, float]:
        check_budget(limit, window, "window")
        return await self._call(self._hit_rate, scope, limit, window)

    def _hit_rate(self, scope: str, limit: int, window: float) -> tuple[bool, float]:
        now = self.clock()
        with self._tx() as conn:
            conn.execute("DELETE FROM rate_hits WHERE scope = ? AND ts <= ?", (scope, now - window))
            count, oldest = conn.execute(
                "SELECT COUNT(*), MIN(ts) FROM rate_hits WHERE scope = ?", (scope,)
            ).fetchone()
            if count < limit:
                conn.execute("INSERT INTO rate_hits VALUES (?, ?)", (scope, now))
                return True, 0.0
        return False, max(float(oldest) + window - now, 0.0)

    async def add_tokens(self, scope: str, n: int) -> int:
        return await self._call(self._add_tokens, scope, n)

    def _add_tokens(self, scope: str, n: int) -> int:
        day = utc_day(self.clock())
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO token_counters VALUES (?, ?, ?) "
                "ON CONFLICT (scope, day) DO UPDATE SET tokens = tokens + excluded.tokens",
                (scope, day, n),
            )
            row = conn.execute(
                "SELECT tokens FROM token_counters WHERE scope = ? AND day = ?", (scope, day)
            ).fetchone()
        return int(row[0])

    async def tokens_used(self, scope: str, since: float) -> int:
        total = await self._call(
            self._one,
            "SELECT SUM(tokens) FROM token_counters WHERE scope = ? AND day >= ?",
            scope,
            utc_day(since),
        )
        return int(total or 0)

    # ------------------------------------------------------------------ settings

    async def get_settings(self) -> dict[str, Any]:
        rows = await self._call(self._all, "SELECT key, value FROM settings")
        return {key: orjson.loads(value) for key, value in rows}

    def _all(self, sql: str, *args: Any) -> list[Any]:
        return self._db.execute(sql, args).fetchall()

    async def set_settings(self, changes: Mapping[str, Any]) -> int:
        encoded = {k: None if v is None else orjson.dumps(v).decode() for k, v in changes.items()}
        return await self._call(self._set_settings, encoded)

    def _set_settings(self, encoded: dict[str, str | None]) -> int:
        now = self.clock()
        with self._tx(durable=True) as conn:
            for key, value in encoded.items():
                if value is None:
                    conn.execute("DELETE FROM settings WHERE key = ?", (key,))
                else:
                    conn.execute(
                        "INSERT OR REPLACE INTO settings VALUES (?, ?, ?)", (key, value, now)
                    )
            return self._bump(conn, "settings_version")

    async def settings_version(self) -> int:
        return await self._call(self._counter, "settings_version")

    # ------------------------------------------------------------------ client keys

    async def create_client_key(
        self,
        name: str,
        *,
        key_hash: str,
        key_prefix: str,
        rpm_limit: int | None = None,
        tpd_limit: int | None = None,
        models: Sequence[str] | None = None,
        enabled: bool = True,
    ) -> dict[str, Any]:
        values = (name, key_hash, key_prefix, rpm_limit, tpd_limit, _models_json(models), enabled)
        return await self._call(self._create_client_key, values)

    def _create_client_key(self, values: tuple[Any, ...]) -> dict[str, Any]:
        now = self.clock()
        try:
            with self._tx(durable=True) as conn:
                cur = conn.execute(
                    "INSERT INTO client_keys (name, key_hash, key_prefix, rpm_limit, tpd_limit, "
                    "models, enabled, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*values, now, now),
                )
                key_id = cur.lastrowid
        except sqlite3.IntegrityError:
            raise InvalidRequest("a client key with this hash already exists") from None
        record = self._client_key("id = ?", key_id)
        assert record is not None
        return record

    def _client_key(self, where: str, arg: Any) -> dict[str, Any] | None:
        row = self._db.execute(
            f"SELECT {_CLIENT_KEY_COLUMNS} FROM client_keys WHERE {where}", (arg,)
        ).fetchone()
        return None if row is None else _client_key_record(row)

    async def list_client_keys(self) -> list[dict[str, Any]]:
        rows = await self._call(self._all, f"SELECT {_CLIENT_KEY_COLUMNS} FROM client_keys")
        return sorted((_client_key_record(r) for r in rows), key=lambda r: int(r["id"]))

    async def get_client_key(self, key_id: int) -> dict[str, Any] | None:
        return await self._call(self._client_key, "id = ?", key_id)

    async def get_client_key_by_hash(self, key_hash: str) -> dict[str, Any] | None:
        return await self._call(self._client_key, "key_hash = ?", key_hash)

    async def update_client_key(self, key_id: int, **fields: Any) -> dict[str, Any] | None:
        check_client_key_fields(fields)
        if "models" in fields:
            fields["models"] = _models_json(fields["models"])
        return await self._call(self._update_client_key, key_id, fields)

    def _update_client_key(self, key_id: int, fields: dict[str, Any]) -> dict[str, Any] | None:
        fields["updated_at"] = self.clock()
        # Column names come from CLIENT_KEY_FIELDS (checked above), never from callers' text.
        assignments = ", ".join(f"{name} = ?" for name in fields)
        try:
            with self._tx(durable=True) as conn:
                conn.execute(
                    f"UPDATE client_keys SET {assignments} WHERE id = ?", (*fields.values(), key_id)
                )
        except sqlite3.IntegrityError:
            raise InvalidRequest("a client key with this hash already exists") from None
        return self._client_key("id = ?", key_id)

    async def delete_client_key(self, key_id: int) -> bool:
        return await self._call(self._delete_client_key, key_id)

    def _delete_client_key(self, key_id: int) -> bool:
        with self._tx(durable=True) as conn:
            return conn.execute("DELETE FROM client_keys WHERE id = ?", (key_id,)).rowcount > 0

    # ------------------------------------------------------------------ admin users

    async def get_admin_user(self, username: str) -> dict[str, Any] | None:
        rows = await self._call(
            self._all,
            "SELECT username, password_hash, created_at, updated_at FROM users WHERE username = ?",
            username,
        )
        if not rows:
            return None
        name, password_hash, created_at, updated_at = rows[0]
        return {
            "username": name,
            "password_hash": password_hash,
            "created_at": created_at,
            "updated_at": updated_at,
        }

    async def put_admin_user(self, username: str, password_hash: str) -> None:
        await self._call(self._put_admin_user, username, password_hash)

    def _put_admin_user(self, username: str, password_hash: str) -> None:
        now = self.clock()
        with self._tx(durable=True) as conn:
            conn.execute(
                "INSERT INTO users (username, password_hash, created_at, updated_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (username) DO UPDATE SET "
                "password_hash = excluded.password_hash, updated_at = excluded.updated_at",
                (username, password_hash, now, now),
            )

    async def list_admin_users(self) -> list[str]:
        rows = await self._call(self._all, "SELECT username FROM users ORDER BY username")
        return [name for (name,) in rows]

    # ------------------------------------------------------------------ usage

    async def _write_usage(self, totals: UsageTotals) -> None:
        rows = [
            (minute, _NONE_ID if cred is None else cred, _NONE_ID if key is None else key, model,
             *values)
            for (minute, cred, key, model), values in totals.items()
        ]  # fmt: skip
        await self._call(self._write_usage_sync, rows)

    def _write_usage_sync(self, rows: list[tuple[Any, ...]]) -> None:
        with self._tx() as conn:
            conn.executemany(_USAGE_UPSERT, rows)

    async def _usage_summary(
        self, since: float, until: float, group_by: GroupBy | None, bucket: float | None
    ) -> list[dict[str, Any]]:
        group_field = group_field_for(group_by)
        bucket_sql = "NULL" if bucket is None else f"minute - minute % {int(bucket)}"
        group_sql = group_field or "NULL"
        lo, hi = usage_bounds(since, until)
        rows = await self._call(
            self._all,
            f"SELECT {bucket_sql} AS b, {group_sql} AS g, SUM(requests), SUM(errors), "
            "SUM(input_tokens), SUM(output_tokens), SUM(duration_ms), SUM(streams) "
            "FROM usage_minutes WHERE minute >= ? AND minute < ? GROUP BY b, g",
            lo,
            hi,
        )
        groups = [((b, _from_sentinel(g, group_field)), values) for b, g, *values in rows]
        return usage_rows(groups, group_field)

    async def _maintain(self) -> None:
        await self._call(self._maintain_sync)

    def _maintain_sync(self) -> None:
        now = self.clock()
        with self._tx() as conn:
            conn.execute("DELETE FROM locks WHERE expires_at <= ?", (now,))
            conn.execute("DELETE FROM slots WHERE expires_at <= ?", (now,))
            conn.execute("DELETE FROM rate_hits WHERE ts <= ?", (now - RATE_WINDOW_MAX,))
            conn.execute("DELETE FROM cooldowns WHERE until <= ?", (now,))
            conn.execute("DELETE FROM token_counters WHERE day < ?", (utc_day(now - RETENTION),))
            conn.execute(
                "DELETE FROM usage_minutes WHERE minute < ?", (minute_of(now - RETENTION),)
            )


def _models_json(models: Sequence[str] | None) -> str | None:
    return None if models is None else orjson.dumps(list(models)).decode()


def _client_key_record(row: Sequence[Any]) -> dict[str, Any]:
    (key_id, name, key_hash, key_prefix, rpm, tpd, models, enabled, created, updated) = row
    return {
        "id": key_id,
        "name": name,
        "key_hash": key_hash,
        "key_prefix": key_prefix,
        "rpm_limit": rpm,
        "tpd_limit": tpd,
        "models": None if models is None else orjson.loads(models),
        "enabled": bool(enabled),
        "created_at": created,
        "updated_at": updated,
    }


def _from_sentinel(value: Any, group_field: str | None) -> Any:
    if group_field in ("credential_id", "client_key_id") and value == _NONE_ID:
        return None
    return value
