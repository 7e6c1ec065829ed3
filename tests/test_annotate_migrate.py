"""A database made by the previous release (schema version 1) upgrades in place, losing nothing, on
SQLite and on PostgreSQL; a database newer than the code is refused."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

import annotate_db_schema1 as v1
from annotate_helpers import DATABASES, database_url
from finegrain.annotate import db, store
from finegrain.annotate.export import build_examples
from finegrain.config import ConfigError

TABLES = ("settings", "users", "sessions", "examples", "tasks", "assignments", "submissions", "drafts")


def _fill_v1(url: str) -> dict[str, list[tuple]]:
    """A schema-1 database with a row in every table, written with the release's own module."""
    engine = v1.make_engine(url)
    data = {"prompt": "Is tea hot?", "passages": [{"title": "Tea", "sentences": ["Tea is hot."]}],
            "responses": ["Tea is hot. 🍵", "No."], "reference": None, "meta": {"k": 1}}
    payload = {"response_index": 0, "spans": [{"start": 12, "end": 13, "category": "Irrelevant", "text": "🍵", "explanation": "emoji"}],
               "missing": [], "corrected": "Tea is hot.", "no_error": False}
    with v1.write_tx(engine) as conn:
        conn.execute(v1.users.insert().values(id=1, name="alice", role="annotator", token_hash="a" * 64, created_at=1.0))
        conn.execute(v1.users.insert().values(id=2, name="boss", role="admin", token_hash="b" * 64, created_at=1.0, revoked_at=2.0))
        conn.execute(v1.sessions.insert().values(id_hash="s" * 64, user_id=1, csrf_token="c", created_at=1.0, expires_at=9e12))
        conn.execute(v1.examples.insert().values(id=1, ext_id="ex-1", data=json.dumps(data, ensure_ascii=False), created_at=1.0))
        conn.execute(v1.tasks.insert().values(id=1, example_id=1, kind="annotate", response_index=0, created_at=1.0))
        conn.execute(v1.tasks.insert().values(id=2, example_id=1, kind="compare", response_index=None, created_at=1.0))
        for t in (1, 2):
            conn.execute(v1.assignments.insert().values(task_id=t, user_id=1, created_at=1.0))
        conn.execute(v1.submissions.insert().values(task_id=1, user_id=1, version=1, idempotency_key="k1", body_hash="h",
                                                    payload=json.dumps(payload, ensure_ascii=False), created_at=3.0))
        conn.execute(v1.drafts.insert().values(task_id=2, user_id=1, base_version=0, payload='{"judgements": []}', updated_at=4.0))
    rows = _dump(engine, v1.metadata)
    engine.dispose()
    return rows


def _dump(engine, metadata) -> dict[str, list[tuple]]:
    """Every row of the schema-1 tables, in schema 1's columns."""
    with engine.connect() as conn:
        return {t: sorted(tuple(r) for r in conn.execute(select(*[metadata.tables[t].c[c.name] for c in v1.metadata.tables[t].columns])))
                for t in TABLES}


@pytest.mark.parametrize("kind", DATABASES)
def test_a_schema_1_database_upgrades_without_loss(tmp_path, kind):
    url = database_url(kind, tmp_path)
    before = _fill_v1(url)
    assert ("schema_version", "1") in before["settings"]
    engine = db.make_engine(url, create=False)
    after = _dump(engine, db.metadata)
    assert after["settings"] == [("schema_version", str(db.SCHEMA_VERSION))]
    for table in TABLES[1:]:
        assert after[table] == before[table], table
    with engine.connect() as conn:
        assert [r.version for r in conn.execute(select(db.migrations))] == [2]
        assert conn.execute(select(db.adjudications)).all() == []
        assert conn.execute(select(db.tasks.c.priority)).scalars().all() == [None, None]
    # the upgraded database works: its submission exports, a new version appends
    (ex,) = build_examples(engine)
    assert ex.responses[0].annotation.spans[0].explanation == "emoji" and ex.meta["k"] == 1
    body = {"response_index": 0, "spans": [], "missing": [], "no_error": True, "corrected": None, "idempotency_key": "k2", "base_version": 1}
    assert store.submit(engine, 1, 1, "alice", body).version == 2
    engine.dispose()
    again = db.make_engine(url, create=False)  # opening an up-to-date database changes nothing
    with again.connect() as conn:
        assert [r.version for r in conn.execute(select(db.migrations))] == [2]
    again.dispose()


def test_a_database_newer_than_the_code_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'n.db'}"
    engine = db.make_engine(url)
    with db.write_tx(engine) as conn:
        conn.execute(db.settings.update().values(value=str(db.SCHEMA_VERSION + 1)))
    engine.dispose()
    with pytest.raises(ConfigError, match="newer than this finegrain"):
        db.make_engine(url)
