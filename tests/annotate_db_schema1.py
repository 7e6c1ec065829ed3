# The annotation database module as released at commit 29b5084 (schema version 1), kept verbatim so
# that tests/test_annotate_migrate.py can build a database of the previous schema and upgrade it.
"""Tables and the engine: SQLite in WAL mode with a busy timeout and foreign keys, or any SQLAlchemy URL.

SQLAlchemy Core rather than the ORM: every write is one explicit transaction (`write_tx`), which is
what the reliability guarantees rest on. On SQLite a write transaction starts with BEGIN IMMEDIATE,
so two writers queue on the busy timeout instead of deadlocking on a read-to-write lock upgrade.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 30_000

metadata = MetaData()

settings = Table(
    "settings",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),  # annotator | admin
    Column("token_hash", String(64), nullable=False, unique=True),  # sha256 of the token, never the token
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),  # sha256 of the cookie value
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)

examples = Table(
    "examples",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("ext_id", String(256), nullable=False, unique=True),  # the id in the imported file
    Column("data", Text, nullable=False),  # JSON: prompt, passages, responses (NFC), reference, meta
    Column("created_at", Float, nullable=False),
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("example_id", Integer, ForeignKey("examples.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("kind", String(16), nullable=False),  # annotate | compare
    Column("response_index", Integer),  # annotate tasks: the response to annotate
    Column("created_at", Float, nullable=False),
    UniqueConstraint("example_id", "kind", "response_index", name="uq_task"),
)

assignments = Table(
    "assignments",
    metadata,
    Column("task_id", Integer, ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True),
    Column("created_at", Float, nullable=False),
)

# Append-only: rows are inserted, never updated or deleted. (task, user, version) is unique, and so is
# (user, idempotency_key), so a retried request can never make a second record.
submissions = Table(
    "submissions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("task_id", Integer, ForeignKey("tasks.id"), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("idempotency_key", String(128), nullable=False),
    Column("body_hash", String(64), nullable=False),  # sha256 of the canonical request body
    Column("payload", Text, nullable=False),  # JSON, validated and normalised
    Column("created_at", Float, nullable=False),
    UniqueConstraint("task_id", "user_id", "version", name="uq_submission_version"),
    UniqueConstraint("user_id", "idempotency_key", name="uq_submission_key"),
)

drafts = Table(
    "drafts",
    metadata,
    Column("task_id", Integer, ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("base_version", Integer, nullable=False),
    Column("payload", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)


def make_engine(url: str) -> Engine:
    """An engine for `url`, with tables created. SQLite gets WAL, a busy timeout, foreign keys and
    synchronous=FULL (an acknowledged commit survives a killed process and a power cut)."""
    is_sqlite = url.startswith("sqlite")
    kwargs: dict = {}
    if is_sqlite:
        kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        kwargs["pool_size"] = 32
        kwargs["max_overflow"] = 32
    engine = create_engine(url, **kwargs)
    if is_sqlite:
        _configure_sqlite(engine)
    metadata.create_all(engine)
    with write_tx(engine) as conn:
        found = conn.execute(settings.select().where(settings.c.key == "schema_version")).first()
        if found is None:
            conn.execute(settings.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
        elif int(found.value) != SCHEMA_VERSION:
            from finegrain.config import ConfigError

            raise ConfigError(f"--db {url}: schema version {found.value}; this finegrain uses {SCHEMA_VERSION}")
    return engine


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        # take transaction control away from the sqlite3 module so BEGIN is ours (see write_tx)
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=FULL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("fg_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


# SQLite has one writer at a time. Inside one server process, writers queue on this lock, which
# wakes the next one the moment the last commits; the busy timeout (which polls with sleeps of up
# to 100 ms) then only arbitrates between processes, e.g. a CLI import while the server runs.
_SQLITE_WRITE_LOCKS: dict[int, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _write_lock(engine: Engine) -> threading.Lock | None:
    if engine.dialect.name != "sqlite":
        return None
    with _LOCKS_GUARD:
        return _SQLITE_WRITE_LOCKS.setdefault(id(engine), threading.Lock())


@contextmanager
def write_tx(engine: Engine) -> Iterator[Connection]:
    """One write transaction: committed as a whole when the block ends, rolled back on any error."""
    lock = _write_lock(engine)
    if lock is not None:
        lock.acquire()
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(fg_write=True)
            with conn.begin():
                yield conn
    finally:
        if lock is not None:
            lock.release()


@contextmanager
def read_tx(engine: Engine) -> Iterator[Connection]:
    """A read transaction: one consistent snapshot for the whole block."""
    with engine.connect() as conn:
        with conn.begin():
            yield conn


def now() -> float:
    return time.time()


def backup_sqlite(url: str, out: str) -> None:
    """Copy a SQLite database with SQLite's online backup (a consistent snapshot, even mid-write)."""
    import sqlite3
    from pathlib import Path

    from sqlalchemy.engine import make_url

    from finegrain.config import ConfigError

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        raise ConfigError(f"--db {url}: backup copies SQLite files; for another database use its own tool (e.g. pg_dump)")
    if not Path(parsed.database).is_file():
        raise FileNotFoundError(f"--db {url}: no such database file")
    if Path(out).exists():
        raise ConfigError(f"--out {out}: already exists; choose a new file")
    src = sqlite3.connect(parsed.database, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        dst = sqlite3.connect(out)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()
