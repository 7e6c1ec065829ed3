"""Item 5 of the app's issue: 20 annotators x 50 submissions against one real server on loopback store
exactly 1,000 records, none lost or duplicated; a server killed mid-run and restarted loses no
acknowledged submission. On SQLite and on a local PostgreSQL server."""

from __future__ import annotations

import pytest

from annotate_helpers import DATABASES, database_url
from finegrain.annotate.loadgen import ServerProcess, free_port, run_load, setup, stored

ANNOTATORS, EACH = 20, 50


@pytest.mark.slow
@pytest.mark.parametrize("kind", DATABASES)
@pytest.mark.parametrize("kill", [False, True], ids=["steady", "killed-and-restarted"])
def test_twenty_annotators_fifty_each_store_exactly_1000(tmp_path, kill, kind):
    url = database_url(kind, tmp_path)
    tokens = setup(url, ANNOTATORS, EACH)
    server = ServerProcess(url, free_port(), log=tmp_path / "server.log")
    server.start()
    try:
        result = run_load(server, tokens, kill_after=400 if kill else None, deadline_s=600)
    finally:
        server.stop()
    assert result.errors == [], (result.errors[:5], (tmp_path / "server.log").read_text()[-2000:])
    assert len(result.acknowledged) == ANNOTATORS * EACH
    rows = stored(url)  # raises if any (user, key) was stored twice
    assert len(rows) == ANNOTATORS * EACH
    lost = [k for k, rid in result.acknowledged.items() if rows.get(k) != rid]
    assert lost == []
    assert result.duplicates_answered == ANNOTATORS * EACH // 10
    if kill:
        assert result.retries > 0, "the kill did not interrupt any request; the test proved nothing"
    print(f"\n{ANNOTATORS}x{EACH} {kind} kill={kill}: {result.throughput:.0f} submissions/s, "
          f"p50 {1000 * result.percentile(0.5):.0f} ms, p99 {1000 * result.percentile(0.99):.0f} ms, retries {result.retries}")
