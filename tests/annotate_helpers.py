"""Shared set-up for the annotation-app tests: a database with users and tasks, and logged-in clients."""

from __future__ import annotations

import json
import re
from pathlib import Path

from finegrain.data.jsonl import write_jsonl
from finegrain.data.records import Example, Passage, Response

XSS = "</script><script>alert(1)</script> & <b>bold</b>"
EMOJI = "Tea 🍵 is hot, caf\u0065\u0301 too."  # an emoji outside the BMP and a decomposed é (NFC folds it)


def sample_examples() -> list[Example]:
    passages = (Passage("Tea", ("Tea is a drink.", "It is served hot.")), Passage("Coffee", ("Coffee is brewed.",)))
    return [
        Example("ex-emoji", "Is tea hot?", (Response(EMOJI), Response("Yes."), Response("No, never."), Response(XSS)), passages),
        Example("ex-xss", "Say something <odd>", (Response(XSS), Response("plain")), passages),
        Example("ex-plain", "What is coffee?", (Response("Coffee is a drink. It is brewed. It is brewed."), Response("A bean.")), passages),
    ]


def write_examples(path: Path) -> Path:
    write_jsonl(path, sample_examples())
    return path


def page_data(html: str) -> dict:
    found = re.search(r'<script type="application/json" id="page-data">(.*?)</script>', html, re.S)
    assert found, "page has no page-data block"
    return json.loads(found.group(1))


def login(client, token: str):
    """Log in the way a browser does: GET the form (pre-session CSRF cookie), POST it."""
    page = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    return client.post("/login", data={"token": token, "csrf": csrf}, follow_redirects=False)


# --- a local PostgreSQL server for the tests ------------------------------------------------------


class PostgresServer:
    """A throw-away PostgreSQL server: Debian's `postgresql` binaries (initdb, pg_ctl), a fresh data
    folder under the temporary directory, listening on 127.0.0.1 at a free port and a private
    socket folder, trust authentication for the `postgres` role on loopback only. PostgreSQL
    refuses to run as root, so under root every server command runs as the `postgres` system user
    (`runuser -u postgres --`), which owns the data folder. `durable=False` turns fsync off (the
    tests never kill the database server itself, only the app in front of it)."""

    def __init__(self, durable: bool = False):
        self.durable = durable
        self.root: Path | None = None
        self.port = 0
        self._n = 0

    @staticmethod
    def bin_dir() -> Path | None:
        import glob
        import shutil

        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
        if found:
            return Path(found[-1]).parent
        which = shutil.which("pg_ctl")
        return Path(which).parent if which else None

    def missing(self) -> str | None:
        """Why no server can start here (None: it can)."""
        import os

        if self.bin_dir() is None:
            return "PostgreSQL is not installed (make test installs Debian's postgresql as root)"
        if os.geteuid() == 0:
            import pwd

            try:
                pwd.getpwnam("postgres")
            except KeyError:
                return "running as root, and there is no `postgres` system user to run the server as"
        try:
            import psycopg  # noqa: F401
        except ImportError:
            return "the psycopg driver is not installed (pip install -e '.[app]')"
        return None

    def _run(self, *argv: str) -> None:
        import os
        import subprocess

        cmd = list(argv)
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-2000:] or done.stdout[-2000:]}")

    def start(self) -> None:
        import os
        import shutil
        import socket
        import tempfile

        self.root = Path(tempfile.mkdtemp(prefix="finegrain-pg-"))
        (self.root / "sock").mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.root / "sock", "postgres")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        bins = self.bin_dir()
        data = self.root / "data"
        self._run(str(bins / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync")
        opts = f"-p {self.port} -k {self.root / 'sock'} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if not self.durable:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(str(bins / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(self.root / "server.log"), "-w", "-t", "60", "start")

    def stop(self) -> None:
        import shutil

        if self.root is None:
            return
        try:
            self._run(str(self.bin_dir() / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def new_database(self) -> str:
        """A new empty database; its SQLAlchemy URL."""
        import psycopg

        self._n += 1
        name = f"t{self._n}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"


_PG: dict[str, PostgresServer] = {}


def postgres() -> PostgresServer:
    """The test session's one PostgreSQL server, started on first use and stopped when the test
    process exits; the calling test is skipped, saying why, where none can run."""
    import atexit

    import pytest

    if "server" not in _PG:
        server = PostgresServer()
        why = server.missing()
        if why:
            pytest.skip(why)
        server.start()
        atexit.register(server.stop)
        _PG["server"] = server
    return _PG["server"]


def database_url(kind: str, tmp_path: Path) -> str:
    """A fresh database of `kind` ("sqlite" or "postgresql") for one test."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'a.db'}"
    return postgres().new_database()


DATABASES = ["sqlite", "postgresql"]
