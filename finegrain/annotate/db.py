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

SCHEMA_VERSION = 2  # 1: the first release; 2: adjudications, the migrations table, tasks.priority
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
    Column("role", String(16), nullable=False),  # annotator | reviewer | admin
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
    Column("priority", Float),  # set by `annotate suggest`: the queue lists higher first; NULL: import order
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


# A reviewer's adjudicated version of a span-annotation task: append-only like submissions, one row
# per (task, version); the payload is an annotation plus, per span, where it came from and what the
# reviewer decided (accept | edit | reject of an annotator's span, or add).
adjudications = Table(
    "adjudications",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("task_id", Integer, ForeignKey("tasks.id"), nullable=False, index=True),
    Column("reviewer_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("payload", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("task_id", "version", name="uq_adjudication_version"),
)

# Which migrations ran, and when.
migrations = Table(
    "migrations",
    metadata,
    Column("version", Integer, primary_key=True),  # the schema version it brought the database to
    Column("applied_at", Float, nullable=False),
)


def _migrate_1_to_2(conn: Connection) -> None:
    """Version 2 adds two tables (adjudications, migrations) and one nullable column
    (tasks.priority); every existing row stays as it was."""
    from sqlalchemy import text

    for table in (adjudications, migrations):
        table.create(conn, checkfirst=True)
    conn.execute(text("ALTER TABLE tasks ADD COLUMN priority FLOAT"))


# from-version -> the step to the next version; each runs in the one transaction of the upgrade
MIGRATIONS = {1: _migrate_1_to_2}


class MissingDatabase(FileNotFoundError):
    """--db names a database that does not exist (and --create was not given)."""


def describe(url: str) -> str:
    """The database a URL names, for messages: an absolute path for SQLite, the URL (password
    hidden) otherwise."""
    from pathlib import Path

    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return str(Path(parsed.database).resolve())
    return parsed.render_as_string(hide_password=True)


def make_engine(url: str, *, create: bool = True) -> Engine:
    """An engine for `url`, its schema created or upgraded. `create=False` refuses a database that
    does not exist yet (a SQLite file that is not there, or a server database without our tables),
    so a mistyped --db or another working folder never silently starts an empty database.
    SQLite gets WAL, a busy timeout, foreign keys and synchronous=FULL (an acknowledged commit
    survives a killed process and a power cut)."""
    from pathlib import Path

    from sqlalchemy import inspect
    from sqlalchemy.engine import make_url

    from finegrain.config import ConfigError

    try:
        parsed = make_url(url)
    except Exception as err:  # sqlalchemy.exc.ArgumentError
        raise ConfigError(f"--db {url!r}: not a database URL ({err}); e.g. sqlite:///annotations.db") from None
    is_sqlite = parsed.get_backend_name() == "sqlite"
    if is_sqlite and parsed.database and parsed.database != ":memory:" and not create:
        path = Path(parsed.database)
        if path.is_dir():
            raise ConfigError(f"--db {url}: {path.resolve()} is a directory, not a database file")
        if not path.exists():
            raise MissingDatabase(
                f"--db {url}: no database file {path.resolve()}; pass --create to make a new one there "
                "(or run from the folder that holds it / give its full path)"
            )
    kwargs: dict = {}
    if is_sqlite:
        kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        kwargs["pool_size"] = 32
        kwargs["max_overflow"] = 32
    else:
        kwargs["pool_size"] = 32
        kwargs["max_overflow"] = 32
        kwargs["pool_pre_ping"] = True
    engine = create_engine(url, **kwargs)
    if is_sqlite:
        _configure_sqlite(engine)
    existing = set(inspect(engine).get_table_names())
    if "settings" not in existing and not create:
        engine.dispose()
        raise MissingDatabase(f"--db {describe(url)}: holds no finegrain annotation tables; pass --create to make them")
    with write_tx(engine) as conn:
        found = conn.execute(settings.select().where(settings.c.key == "schema_version")).first() if "settings" in existing else None
        if found is None:
            if existing - {"settings"}:
                raise ConfigError(f"--db {describe(url)}: has tables ({', '.join(sorted(existing)[:5])}) but no finegrain schema version")
            metadata.create_all(conn)
            conn.execute(settings.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
            conn.execute(migrations.insert().values(version=SCHEMA_VERSION, applied_at=now()))
        else:
            have = int(found.value)
            if have > SCHEMA_VERSION:
                raise ConfigError(f"--db {describe(url)}: schema version {have} is newer than this finegrain's ({SCHEMA_VERSION}); upgrade finegrain")
            while have < SCHEMA_VERSION:
                MIGRATIONS[have](conn)
                have += 1
                conn.execute(migrations.insert().values(version=have, applied_at=now()))
            conn.execute(settings.update().where(settings.c.key == "schema_version").values(value=str(have)))
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
