"""A throw-away local PostgreSQL server, for the annotation app's tests and benchmarks.

Debian's `postgresql` package provides the binaries (`make test` installs it when run as root).
"""

from __future__ import annotations

from pathlib import Path


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
