"""Accounts, sessions and CSRF.

- A token is made by an admin command, shown once, stored as its SHA-256 (tokens are 256 random bits,
  so a plain hash is enough: there is nothing to brute-force), and revocable.
- Logging in exchanges the token for a session: the cookie holds a random id whose hash is the key
  of the `sessions` row; the row also holds the session's CSRF token.
- Every POST must carry `X-CSRF-Token` equal to the session's token, and come from the server's own
  origin or a trusted one (Origin, else Referer).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy import Engine, delete, select, update

from finegrain.annotate import db
from finegrain.config import ConfigError

ROLES = ("annotator", "reviewer", "admin")
SESSION_COOKIE = "fg_session"
LOGIN_CSRF_COOKIE = "fg_login_csrf"
SESSION_SECONDS = 12 * 3600
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class Session:
    user: User
    csrf_token: str


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise ConfigError(f"annotator name {name!r}: use 1-64 letters, digits, '_', '.', '-' (starting with a letter or digit)")
    return name


def create_token(engine: Engine, name: str, role: str = "annotator") -> str:
    """Create (or re-issue, for a revoked name) an account; returns the token, which is stored only hashed."""
    check_name(name)
    if role not in ROLES:
        raise ConfigError(f"--role: {role!r} is not allowed; choose one of {', '.join(ROLES)}")
    token = "fg_" + secrets.token_urlsafe(32)
    with db.write_tx(engine) as conn:
        row = conn.execute(select(db.users).where(db.users.c.name == name)).first()
        if row is not None and row.revoked_at is None:
            raise ConfigError(f"user {name!r} already has a token; revoke it first (finegrain annotate token revoke {name})")
        if row is None:
            conn.execute(db.users.insert().values(name=name, role=role, token_hash=_hash(token), created_at=db.now()))
        else:
            conn.execute(
                update(db.users).where(db.users.c.id == row.id).values(token_hash=_hash(token), role=role, revoked_at=None)
            )
    return token


def revoke_token(engine: Engine, name: str) -> None:
    """Revoke a user's token and end their sessions; their submissions stay."""
    with db.write_tx(engine) as conn:
        row = conn.execute(select(db.users).where(db.users.c.name == name)).first()
        if row is None:
            raise ConfigError(f"no user named {name!r}")
        conn.execute(update(db.users).where(db.users.c.id == row.id).values(revoked_at=db.now()))
        conn.execute(delete(db.sessions).where(db.sessions.c.user_id == row.id))


def list_users(engine: Engine) -> list[dict]:
    with db.read_tx(engine) as conn:
        rows = conn.execute(select(db.users).order_by(db.users.c.name)).all()
    return [{"name": r.name, "role": r.role, "revoked": r.revoked_at is not None} for r in rows]


def login(engine: Engine, token: str) -> tuple[str, Session] | None:
    """Exchange a token for a new session; returns (cookie value, session) or None for a bad token."""
    if not token or len(token) > 256:
        return None
    # a bad token is answered from a read: a burst of them never queues on the write lock
    with db.read_tx(engine) as conn:
        found = conn.execute(select(db.users.c.id).where(db.users.c.token_hash == _hash(token), db.users.c.revoked_at.is_(None))).first()
    if found is None:
        return None
    with db.write_tx(engine) as conn:
        row = conn.execute(
            select(db.users).where(db.users.c.token_hash == _hash(token), db.users.c.revoked_at.is_(None))
        ).first()
        if row is None:
            return None
        cookie = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = db.now()
        conn.execute(delete(db.sessions).where(db.sessions.c.expires_at < now))
        conn.execute(
            db.sessions.insert().values(
                id_hash=_hash(cookie), user_id=row.id, csrf_token=csrf, created_at=now, expires_at=now + SESSION_SECONDS
            )
        )
    return cookie, Session(User(row.id, row.name, row.role), csrf)


def lookup_session(engine: Engine, cookie: str | None) -> Session | None:
    if not cookie or len(cookie) > 256:
        return None
    with db.read_tx(engine) as conn:
        row = conn.execute(
            select(db.sessions.c.csrf_token, db.sessions.c.expires_at, db.users.c.id, db.users.c.name, db.users.c.role)
            .join(db.users, db.users.c.id == db.sessions.c.user_id)
            .where(db.sessions.c.id_hash == _hash(cookie), db.users.c.revoked_at.is_(None))
        ).first()
    if row is None or row.expires_at < db.now():
        return None
    return Session(User(row.id, row.name, row.role), row.csrf_token)


def logout(engine: Engine, cookie: str | None) -> None:
    if cookie:
        with db.write_tx(engine) as conn:
            conn.execute(delete(db.sessions).where(db.sessions.c.id_hash == _hash(cookie)))


def same_secret(given: str | None, expected: str | None) -> bool:
    return bool(given) and bool(expected) and hmac.compare_digest(str(given), str(expected))


def normalise_origin(origin: str) -> str:
    """'https://Example.org:443/' -> 'https://example.org' (scheme://host[:port], default ports dropped)."""
    bad = ConfigError(f"--trusted-origin {origin!r}: expected scheme://host[:port], e.g. https://annotate.example.org")
    try:  # urlsplit and .port raise ValueError on e.g. "http://[::1" or "http://h:99999"
        parts = urlsplit(origin.strip())
        port_number = parts.port
    except ValueError:
        raise bad from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise bad
    default = {"http": 80, "https": 443}[parts.scheme]
    port = f":{port_number}" if port_number and port_number != default else ""
    return f"{parts.scheme}://{parts.hostname.lower()}{port}"


def origin_allowed(origin: str | None, referer: str | None, own: str, trusted: frozenset[str]) -> bool:
    """True when the request's Origin (else its Referer's origin) is `own` or trusted. A POST that
    carries neither is refused: every browser sends Origin on a cross-site or fetch POST."""
    source = origin if origin and origin != "null" else referer
    if not source:
        return False
    try:
        found = normalise_origin(source)
    except ConfigError:
        return False
    return found == own or found in trusted
