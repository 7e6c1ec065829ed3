"""Review and adjudication, and the admin API (tokens, agreement, export), on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from annotate_helpers import DATABASES, database_url, login, page_data
from finegrain.annotate import auth, db
from finegrain.annotate.export import build_checked, export
from finegrain.annotate.importer import import_file
from finegrain.annotate.server import ServerConfig, create_app
from finegrain.cli import main
from finegrain.data.jsonl import write_jsonl
from finegrain.data.load import load_examples
from finegrain.data.records import Example, Passage, Response

ORIGIN = "http://testserver"
TEXT = "Tea is hot. It is green. Cats like milk."


@pytest.fixture(params=DATABASES)
def env(request, tmp_path):
    url = database_url(request.param, tmp_path)
    engine = db.make_engine(url)
    tokens = {n: auth.create_token(engine, n) for n in ("alice", "bob")}
    tokens["rita"] = auth.create_token(engine, "rita", "reviewer")
    tokens["boss"] = auth.create_token(engine, "boss", "admin")
    passages = (Passage("Tea", ("Tea is hot.", "Tea is green.")),)
    write_jsonl(tmp_path / "in.jsonl", [Example("ex-1", "Tell me about tea", (Response(TEXT), Response("Tea.")), passages)])
    import_file(engine, tmp_path / "in.jsonl", compare=False)
    app = create_app(ServerConfig(db_url=url), engine)
    yield {"engine": engine, "tokens": tokens, "app": app, "url": url, "tmp": tmp_path}
    engine.dispose()


def client_for(env, name: str) -> TestClient:
    c = TestClient(env["app"], headers={"Origin": ORIGIN})
    assert login(c, env["tokens"][name]).status_code == 303
    return c


def sp(sub: str, category: str, explanation: str = "") -> dict:
    start = TEXT.index(sub)
    return {"start": start, "end": start + len(sub), "category": category, "text": sub, "explanation": explanation}


def annotate(env, name: str, spans: list[dict], corrected: str | None = None) -> int:
    c = client_for(env, name)
    t = c.get("/api/queue").json()["tasks"][0]
    task = c.get(f"/api/tasks/{t['id']}").json()
    body = {"response_index": 0, "spans": spans, "missing": [{"type": "Missing-Answer", "passage": 1, "sentences": [2], "note": name}],
            "corrected": corrected, "no_error": False, "idempotency_key": name, "base_version": 0}
    r = c.post(f"/api/tasks/{task['id']}/submit", json=body, headers={"X-CSRF-Token": task["csrf_token"]})
    assert r.status_code == 200, r.text
    return task["id"]


def test_reviewer_adjudicates_by_accepting_editing_and_rejecting(env, capsys):
    task_id = annotate(env, "alice", [sp("It is green.", "Wrong-Grounding", "tea is not green"), sp("Cats like milk.", "Irrelevant")])
    annotate(env, "bob", [sp("Cats like milk.", "Irrelevant"), sp("Tea is hot.", "Unverifiable")], corrected="Tea is hot.")
    assert client_for(env, "alice").get("/review").status_code == 403  # annotators do not review
    assert client_for(env, "alice").get(f"/api/review/{task_id}").status_code == 403
    rita = client_for(env, "rita")
    assert rita.get("/", follow_redirects=False).headers["location"] == "/review"  # no queue of her own
    listing = page_data(rita.get("/review").text)
    assert [(t["id"], t["annotators"], t["adjudicated"]) for t in listing["tasks"]] == [(task_id, ["alice", "bob"], 0)]
    view = rita.get(f"/api/review/{task_id}").json()
    assert [a["annotator"] for a in view["annotations"]] == ["alice", "bob"] and view["version"] == 0
    assert page_data(rita.get(f"/review/{task_id}").text)["response"]["text"] == TEXT
    url, csrf = f"/api/review/{task_id}/adjudicate", {"X-CSRF-Token": view["csrf_token"]}
    edited = sp("green", "Wrong-Grounding", "the passage says green tea exists, not that all tea is")
    decisions = [
        {"annotator": "alice", "index": 0, "decision": "edit", "span": edited},
        {"annotator": "alice", "index": 1, "decision": "accept"},
        {"annotator": "bob", "index": 0, "decision": "accept"},  # the same span as alice's: kept once
    ]
    body = {"decisions": decisions, "added": [], "missing": view["annotations"][0]["missing"], "corrected": "Tea is hot.",
            "no_error": False, "base_version": 0}
    r = rita.post(url, json=body, headers=csrf)
    assert r.status_code == 422 and "not decided" in r.json()["error"] and "bob[1]" in r.json()["error"]
    overlapping = {**body, "decisions": decisions + [{"annotator": "bob", "index": 1, "decision": "accept"}],
                   "added": [sp("Tea", "Irrelevant")]}
    r = rita.post(url, json=overlapping, headers=csrf)
    assert r.status_code == 422 and "overlaps" in r.json()["error"]
    final = {**body, "decisions": decisions + [{"annotator": "bob", "index": 1, "decision": "reject"}]}
    r = rita.post(url, json=final, headers=csrf)
    assert r.status_code == 200 and r.json()["version"] == 1, r.text
    assert rita.post(url, json=final, headers=csrf).status_code == 409  # stale base_version
    stored = rita.get(f"/api/review/{task_id}").json()
    adj = stored["adjudication"]
    assert stored["version"] == 1 and adj["reviewer"] == "rita" and adj["based_on"] == {"alice": 1, "bob": 1}
    assert [(s["text"], s["decision"], s["sources"]) for s in adj["spans"]] == [
        ("green", "edit", ["alice"]), ("Cats like milk.", "accept", ["alice", "bob"])]
    # export marks it; data check passes; --adjudicated only writes just that record
    out = env["tmp"] / "all.jsonl"
    assert export(env["engine"], out).records == 3
    records = {e.id: e for e in load_examples(out)}
    adjudicated = records["ex-1#adjudicated"]
    assert adjudicated.meta["adjudicated"] is True and adjudicated.meta["adjudications"][0]["reviewer"] == "rita"
    ann = adjudicated.responses[0].annotation
    assert ann.annotator == "rita" and [(s.category, TEXT[s.start:s.end]) for s in ann.spans] == [("Wrong-Grounding", "green"), ("Irrelevant", "Cats like milk.")]
    assert ann.corrected == "Tea is hot." and "adjudicated" not in records["ex-1#alice"].meta
    only = env["tmp"] / "only.jsonl"
    assert main(["annotate", "export", "--db", env["url"], "--out", str(only), "--adjudicated", "only"]) == 0
    assert [e.id for e in load_examples(only)] == ["ex-1#adjudicated"]
    assert main(["data", "check", str(only)]) == 0
    capsys.readouterr()


def test_admin_api_tokens_agreement_and_export_with_the_clis_checks(env):
    annotate(env, "alice", [sp("Cats like milk.", "Irrelevant")])
    annotate(env, "bob", [sp("Cats like milk.", "Irrelevant")])
    boss = client_for(env, "boss")
    csrf = {"X-CSRF-Token": page_data(boss.get("/admin").text)["csrf_token"]}
    assert client_for(env, "rita").post("/api/admin/tokens", json={"name": "x"}, headers=csrf).status_code == 403
    r = boss.post("/api/admin/tokens", json={"name": "carol", "role": "annotator"}, headers=csrf)
    assert r.status_code == 200 and r.json()["token"].startswith("fg_")
    assert login(TestClient(env["app"], headers={"Origin": ORIGIN}), r.json()["token"]).status_code == 303
    for bad, named in (({"name": "carol"}, "already has a token"), ({"name": "bad name!"}, "bad name!"),
                       ({"name": "dan", "role": "root"}, "root"), ({"name": 3}, "body")):
        r = boss.post("/api/admin/tokens", json=bad, headers=csrf)
        assert r.status_code == 422 and named in r.json()["error"], (bad, r.text)
    assert boss.post("/api/admin/tokens", json={"name": "x"}).status_code == 403  # CSRF still applies
    assert boss.post("/api/admin/tokens/revoke", json={"name": "carol"}, headers=csrf).json() == {"revoked": "carol"}
    assert boss.post("/api/admin/tokens/revoke", json={"name": "nobody"}, headers=csrf).status_code == 422
    assert boss.post("/api/admin/tokens/revoke", json={"name": "boss"}, headers=csrf).status_code == 422
    admin = page_data(boss.get("/admin").text)
    assert [a["annotator"] for a in admin["agreement"]] == ["alice", "bob"] and admin["agreement"][0]["f1_exact"] == 1.0
    rows = boss.get("/api/admin/agreement?by=item").json()["rows"]
    assert len(rows) == 1 and rows[0]["annotators"] == ["alice", "bob"] and rows[0]["segment_alpha"] == pytest.approx(1.0)
    assert boss.get("/api/admin/agreement?by=nonsense").status_code == 422
    r = boss.get("/api/admin/export")
    assert r.status_code == 200 and r.headers["x-records"] == "2" and "attachment" in r.headers["content-disposition"]
    lines = [json.loads(x) for x in r.text.splitlines()]
    assert sorted(x["id"] for x in lines) == ["ex-1#alice", "ex-1#bob"]
    assert [e.id for e in build_checked(env["engine"])[0]] == sorted(x["id"] for x in lines)
    assert client_for(env, "alice").get("/api/admin/export").status_code == 403
