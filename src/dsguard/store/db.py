"""Open the dsguard store: one engine per process, schema migrated to head, SQLite tuned for
several writer processes (gateway, policy server, milter, web UI) sharing one file.

SECURITY: the URL comes from the configuration and may carry a password; it never appears in
an error message or log line (:func:`redact_url`). The SQLite file holds quarantined mail and
password hashes, so it is created mode 0600 (and missing directories 0700) before SQLite
opens it; SQLite gives its ``-wal``/``-shm`` files the same permissions. Deleted pages are
overwritten (``secure_delete``) so a deleted message does not linger in free pages.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.util import CommandError
from sqlalchemy import Engine, create_engine, event, func, select
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from dsguard.errors import ConfigError

__all__ = ["DEFAULT_URL", "Store", "open_store", "redact_url"]

DEFAULT_URL = "sqlite:///var/dsguard.sqlite3"

_CONFIG_KEY = "storage.url"
# How long a SQLite writer waits for another process's write lock before failing. Writes are
# short (one event, one quarantined message), so this only matters under heavy contention.
SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_CONNECT_TIMEOUT_S = 10
# Arbitrary but fixed: every dsguard process migrating the same PostgreSQL database takes this
# transaction-level advisory lock, so only one of them runs the DDL.
_PG_MIGRATION_LOCK_KEY = 0x64736775617264  # "dsguard"
# Execution option marking a connection whose transaction will write (see _sqlite_begin).
_WRITE_OPTION = "dsguard_write"

_USERINFO_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@]*):[^@/]*@")


def redact_url(url: str | URL) -> str:
    """The URL with its password replaced by ``***`` (also for strings that do not parse, and
    for ``?password=`` query arguments)."""
    if isinstance(url, URL):
        query = {k: ("***" if _is_secret(k) else v) for k, v in url.query.items()}
        shown = url.set(query=query).render_as_string(hide_password=True)
        return shown.replace("=%2A%2A%2A", "=***")
    return _USERINFO_RE.sub(r"\g<scheme>\g<user>:***@", url)


def _is_secret(key: str) -> bool:
    return "pass" in key.lower() or "secret" in key.lower()


def _secrets(url: URL) -> list[str]:
    values = [url.password] if url.password else []
    for key, value in url.query.items():
        if _is_secret(key):
            values.extend([value] if isinstance(value, str) else value)
    return [str(v) for v in values if v]


class Store:
    """An open store: the engine plus session factories. One per process; close() on exit.

    Do not share a Store across ``fork()``: open a new one in the child.
    """

    def __init__(self, engine: Engine, display_url: str) -> None:
        self.engine = engine
        self.url = display_url  # redacted, safe to show
        self._read_sessions = sessionmaker(bind=engine, expire_on_commit=False)
        self._write_sessions = sessionmaker(
            bind=engine.execution_options(**{_WRITE_OPTION: True}), expire_on_commit=False
        )

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.engine.dialect.name

    @contextmanager
    def session(self, *, write: bool = True) -> Iterator[Session]:
        """A session in one transaction: committed on normal exit, rolled back on an exception.

        ``write=True`` (the default) makes SQLite take the write lock when the transaction
        starts (``BEGIN IMMEDIATE``): a transaction that reads first and writes later could
        otherwise fail at once with "database is locked" when another process wrote in
        between, without waiting for ``busy_timeout``. Read-only callers (list pages) pass
        ``write=False`` so they do not queue behind writers. PostgreSQL ignores the flag.
        """
        maker = self._write_sessions if write else self._read_sessions
        with maker.begin() as session:
            yield session

    def close(self) -> None:
        if self.dialect == "sqlite":
            # SQLite has no autovacuum/autoanalyze: refresh the planner statistics the
            # filtered list queries depend on (https://sqlite.org/lang_analyze.html#pragopt).
            # Cheap when nothing changed; a busy database just skips it.
            with contextlib.suppress(DBAPIError), self.engine.connect() as connection:
                # analysis_limit keeps it fast on big tables; 0x10002 = consider every table,
                # not only those this connection queried (SQLite 3.46+; older ones ignore it).
                connection.exec_driver_sql("PRAGMA analysis_limit = 1000")
                connection.exec_driver_sql("PRAGMA optimize = 0x10002")
                connection.commit()
        self.engine.dispose()


def open_store(url: str) -> Store:
    """Open (creating if needed) the store at ``url`` and migrate it to the newest schema.

    Safe to call from several processes at once: migrations are serialised by a write
    transaction (SQLite) or an advisory lock (PostgreSQL), and a store already at head is left
    alone. Raises :class:`ConfigError` with one line, password redacted, when the URL is wrong
    or the database cannot be opened.
    """
    parsed, shown = _parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        # Two processes creating the same new file at once (gateway and web UI started
        # together) could meet "database is locked" while one switches it to WAL, before
        # busy_timeout applies everywhere: serialise opening with a lock file beside it.
        lock_path = Path(f"{parsed.database or ''}.lock")
        try:
            lock_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise _open_error(shown, exc, _secrets(parsed)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return _open(parsed, shown)
        finally:
            os.close(fd)  # releases the lock
    return _open(parsed, shown)


def _open(parsed: URL, shown: str) -> Store:
    secrets = _secrets(parsed)
    try:
        if parsed.get_backend_name() == "sqlite":
            engine = _sqlite_engine(parsed)
        else:
            engine = _postgres_engine(parsed)
    except ImportError:
        raise ConfigError(
            _CONFIG_KEY,
            [f"{shown}: PostgreSQL support needs psycopg: pip install 'dsguard[postgres]'"],
        ) from None
    except (OSError, NoSuchModuleError) as exc:
        raise _open_error(shown, exc, secrets) from None
    store = Store(engine, shown)
    try:
        _migrate(store)
    except (DBAPIError, OSError) as exc:
        store.engine.dispose()
        raise _open_error(shown, exc, secrets) from None
    except CommandError as exc:
        # Typically a schema written by a newer dsguard: its revision is unknown here.
        store.engine.dispose()
        raise ConfigError(
            _CONFIG_KEY,
            [
                f"cannot migrate database {shown}: {' '.join(str(exc).split())}"
                " (is it from a newer dsguard version?)"
            ],
        ) from None
    return store


def _parse_url(url: str) -> tuple[URL, str]:
    """The URL to connect with (driver pinned) and the URL as written, redacted for messages."""
    usage = "expected sqlite:///path/to/file.sqlite3 or postgresql://user:password@host/db"
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise ConfigError(
            _CONFIG_KEY, [f"not a database URL: {redact_url(url)!r} ({usage})"]
        ) from None
    shown = redact_url(parsed)
    driver = parsed.drivername
    if driver in ("sqlite", "sqlite+pysqlite"):
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            raise ConfigError(_CONFIG_KEY, [f"{shown}: SQLite needs a file path ({usage})"])
        if parsed.query:
            raise ConfigError(_CONFIG_KEY, [f"{shown}: SQLite URLs take no ?options"])
        return parsed.set(drivername="sqlite+pysqlite"), shown
    if driver in ("postgresql", "postgres", "postgresql+psycopg"):
        if not parsed.database:
            raise ConfigError(_CONFIG_KEY, [f"{shown}: no database name in the URL ({usage})"])
        # Plain postgresql:// would select psycopg2, which dsguard does not depend on.
        return parsed.set(drivername="postgresql+psycopg"), shown
    raise ConfigError(_CONFIG_KEY, [f"{shown}: unsupported database {driver!r} ({usage})"])


def _open_error(shown: str, exc: BaseException, secrets: list[str]) -> ConfigError:
    orig = exc.orig if isinstance(exc, DBAPIError) else None
    reason = str(orig if orig is not None else exc)
    # One line; drivers write multi-line messages (psycopg adds hints).
    reason = " ".join(reason.split()) or type(exc).__name__
    for secret in secrets:
        reason = reason.replace(secret, "***")
    return ConfigError(_CONFIG_KEY, [f"cannot open database {shown}: {reason}"])


def _sqlite_engine(url: URL) -> Engine:
    path = Path(url.database or "")
    _create_private_file(path)
    engine = create_engine(
        url,
        pool_pre_ping=True,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
    )
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _create_private_file(path: Path) -> None:
    """Create the database file 0600 (and its directories 0700) unless it exists."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN itself (see _sqlite_begin): the sqlite3
    # module's own implicit BEGIN is always DEFERRED.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # busy_timeout first: switching to WAL needs a lock another process may hold.
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        # WAL: readers (web UI) never block the writers (gateway, milter) and vice versa.
        cursor.execute("PRAGMA journal_mode = WAL")
        # FULL: a committed quarantine entry survives power loss; the spool file may already
        # be gone by then (design.md: acknowledged mail is delivered or quarantined).
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA secure_delete = ON")
    finally:
        cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    mode = "IMMEDIATE" if conn.get_execution_options().get(_WRITE_OPTION) else "DEFERRED"
    conn.exec_driver_sql(f"BEGIN {mode}")


def _postgres_engine(url: URL) -> Engine:
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", "dsguard.store:migrations")
    config.attributes["connection"] = connection
    return config


def _migrate(store: Store) -> None:
    """Upgrade to head inside one locked transaction (DDL is transactional on both backends)."""
    engine = store.engine.execution_options(**{_WRITE_OPTION: True})
    with engine.connect() as connection, connection.begin():
        if store.dialect == "postgresql":
            connection.execute(select(func.pg_advisory_xact_lock(_PG_MIGRATION_LOCK_KEY)))
        # On SQLite the BEGIN IMMEDIATE of this transaction is the lock: a second process
        # waits (busy_timeout) and then finds the schema at head.
        command.upgrade(_alembic_config(connection), "head")


def schema_revision(store: Store) -> str | None:
    """The Alembic revision the store is at (None before the first migration)."""
    with store.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
