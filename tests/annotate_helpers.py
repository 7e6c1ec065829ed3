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

from finegrain.annotate.localpg import PostgresServer  # noqa: E402

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
