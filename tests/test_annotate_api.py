"""The annotation app's HTTP surface: login, sessions, CSRF, access control, validation, versions."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from annotate_helpers import DATABASES, EMOJI, XSS, database_url, login, page_data, write_examples
from finegrain.annotate import auth, db, store
from finegrain.annotate.export import build_examples, export
from finegrain.annotate.importer import import_file
from finegrain.annotate.server import CSP, ServerConfig, create_app
from finegrain.data.load import load_examples, read_examples

ORIGIN = "http://testserver"


@pytest.fixture(params=DATABASES)
def env(request, tmp_path):
    url = database_url(request.param, tmp_path)
    engine = db.make_engine(url)
    tokens = {
        "alice": auth.create_token(engine, "alice"),
        "bob": auth.create_token(engine, "bob"),
        "boss": auth.create_token(engine, "boss", "admin"),
    }
    import_file(engine, write_examples(tmp_path / "in.jsonl"), assign_all=False)
    store.assign(engine, ["alice"])  # bob gets only the last example, below
    with db.write_tx(engine) as conn:
        bob = conn.execute(select(db.users.c.id).where(db.users.c.name == "bob")).scalar_one()
        last = conn.execute(select(func.max(db.tasks.c.example_id))).scalar_one()
        for t in conn.execute(select(db.tasks.c.id).where(db.tasks.c.example_id == last)).scalars().all():
            conn.execute(db.assignments.insert().values(task_id=t, user_id=bob, created_at=0.0))
    app = create_app(ServerConfig(db_url=url, trusted_origins=("https://proxy.example.org",)), engine)
    yield {"engine": engine, "tokens": tokens, "app": app, "url": url, "tmp": tmp_path}
    engine.dispose()  # a PostgreSQL server has a connection limit; give this test's back


def client_for(env, name: str | None) -> TestClient:
    c = TestClient(env["app"], headers={"Origin": ORIGIN})
    if name is not None:
        assert login(c, env["tokens"][name]).status_code == 303
    return c


def tasks_of(c: TestClient) -> list[dict]:
    return c.get("/api/queue").json()["tasks"]


def first(c: TestClient, kind: str, title_part: str = "") -> dict:
    t = next(t for t in tasks_of(c) if t["kind"] == kind and title_part in t["title"])
    return c.get(f"/api/tasks/{t['id']}").json()


def span_body(task: dict, spans=(), key="k1", base=0, **extra) -> dict:
    body = {"response_index": task["responses"][0]["index"], "spans": list(spans), "missing": [], "corrected": None,
            "no_error": not spans and not extra.get("missing"), "idempotency_key": key, "base_version": base}
    return {**body, **extra}


def post(c: TestClient, url: str, body, csrf: str, **kw):
    return c.post(url, json=body, headers={"X-CSRF-Token": csrf}, **kw)


# --- login, sessions, headers ----------------------------------------------------------------


def test_login_sets_a_strict_httponly_session_cookie(env):
    c = TestClient(env["app"], headers={"Origin": ORIGIN})
    page = c.get("/login")
    assert page.status_code == 200 and 'name="token"' in page.text
    assert "fg_login_csrf" in page.headers["set-cookie"]
    r = login(c, env["tokens"]["alice"])
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith("fg_session="))
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and "Secure" not in cookie
    assert c.get("/").status_code == 200


def test_secure_cookie_when_configured(env):
    app = create_app(ServerConfig(db_url=env["url"], secure_cookies=True), env["engine"])
    c = TestClient(app, base_url="https://testserver", headers={"Origin": "https://testserver"})
    r = login(c, env["tokens"]["alice"])
    assert r.status_code == 303
    cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith("fg_session="))
    assert "Secure" in cookie


def test_bad_token_bad_form_csrf_and_foreign_origin_are_refused(env):
    c = TestClient(env["app"], headers={"Origin": ORIGIN})
    assert login(c, "fg_not-a-token").status_code == 401
    c.get("/login")
    assert c.post("/login", data={"token": env["tokens"]["alice"], "csrf": "forged"}, follow_redirects=False).status_code == 403
    evil = TestClient(env["app"], headers={"Origin": "https://evil.example"})
    assert login(evil, env["tokens"]["alice"]).status_code == 403
    assert "fg_session" not in c.cookies and "fg_session" not in evil.cookies


def test_everything_needs_a_session(env):
    c = TestClient(env["app"])
    for page in ("/", "/admin", "/task/1"):
        r = c.get(page, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login"
    assert c.get("/api/queue").status_code == 401
    assert c.get("/api/tasks/1").status_code == 401
    r = c.post("/api/tasks/1/submit", json={}, headers={"Origin": ORIGIN, "X-CSRF-Token": "x"})
    assert r.status_code == 401 and "error" in r.json()


def test_security_headers_on_pages(env):
    c = client_for(env, "alice")
    task = tasks_of(c)[0]
    for url in ("/login", "/", task["url"]):
        r = c.get(url)
        assert r.status_code == 200
        assert r.headers["content-security-policy"] == CSP
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "same-origin"


def test_revoked_token_ends_sessions(env):
    c = client_for(env, "alice")
    auth.revoke_token(env["engine"], "alice")
    assert c.get("/api/queue").status_code == 401
    assert login(TestClient(env["app"], headers={"Origin": ORIGIN}), env["tokens"]["alice"]).status_code == 401


def test_logout_needs_csrf_and_ends_the_session(env):
    c = client_for(env, "alice")
    csrf = c.get("/api/queue").json()["csrf_token"]
    assert c.post("/logout", json={}, follow_redirects=False).status_code == 403
    r = c.post("/logout", json={}, headers={"X-CSRF-Token": csrf}, follow_redirects=False)
    assert r.status_code == 303
    assert c.get("/api/queue").status_code == 401


# --- pages and escaping ----------------------------------------------------------------------


def test_model_text_is_served_escaped_in_page_data(env):
    c = client_for(env, "alice")
    task = next(t for t in tasks_of(c) if t["kind"] == "annotate" and "odd" in t["title"])
    html = c.get(task["url"]).text
    assert "<script>alert(1)" not in html and "<b>bold" not in html and "<odd>" not in html
    assert "\\u003c/script\\u003e\\u003cscript\\u003ealert(1)" in html
    data = page_data(html)
    assert data["responses"][0]["text"] == XSS and data["prompt"] == "Say something <odd>"
    assert data["kind"] == "annotate" and data["csrf_token"]


def test_queue_page_lists_only_own_tasks_with_status(env):
    alice, bob = client_for(env, "alice"), client_for(env, "bob")
    data = page_data(alice.get("/").text)
    assert data["user"] == "alice" and data["role"] == "annotator"
    assert data["progress"] == {"done": 0, "total": len(data["tasks"])} and len(data["tasks"]) == 6
    assert {t["kind"] for t in data["tasks"]} == {"annotate", "compare"}
    assert all(t["status"] == "todo" and t["url"] == f"/task/{t['id']}" for t in data["tasks"])
    bob_ids = {t["id"] for t in tasks_of(bob)}
    alice_only = next(t["id"] for t in data["tasks"] if t["id"] not in bob_ids)
    assert bob.get(f"/api/tasks/{alice_only}").status_code == 404
    assert bob.get(f"/task/{alice_only}").status_code == 404
    assert post(bob, f"/api/tasks/{alice_only}/submit", {}, bob.get("/api/queue").json()["csrf_token"]).status_code in (404, 422)


def test_admin_page_is_for_admins_only(env):
    assert client_for(env, "alice").get("/admin").status_code == 403
    assert client_for(env, "alice").get("/api/admin/progress").status_code == 403
    r = client_for(env, "boss").get("/admin")
    assert r.status_code == 200
    data = page_data(r.text)
    alice = next(a for a in data["annotators"] if a["name"] == "alice")
    assert alice == {"name": "alice", "role": "annotator", "revoked": False, "done": 0, "total": 6}
    assert data["overall"]["total"] == 8


# --- CSRF --------------------------------------------------------------------------------------


def test_posts_need_the_session_csrf_token_and_an_allowed_origin(env):
    c = client_for(env, "alice")
    task = first(c, "annotate", "tea")
    body = span_body(task)
    url = f"/api/tasks/{task['id']}/submit"
    assert c.post(url, json=body).status_code == 403
    assert post(c, url, body, "wrong").status_code == 403
    other = client_for(env, "bob").get("/api/queue").json()["csrf_token"]
    assert post(c, url, body, other).status_code == 403  # another session's token
    no_origin = TestClient(env["app"], cookies=dict(c.cookies))
    assert no_origin.post(url, json=body, headers={"X-CSRF-Token": task["csrf_token"]}).status_code == 403
    evil = {"X-CSRF-Token": task["csrf_token"], "Origin": "https://evil.example"}
    assert c.post(url, json=body, headers=evil).status_code == 403
    via_proxy = {"X-CSRF-Token": task["csrf_token"], "Origin": "https://proxy.example.org"}
    assert c.post(url, json=body, headers=via_proxy).status_code == 200
    referer_only = TestClient(env["app"], cookies=dict(c.cookies))
    r = referer_only.post(url, json={**body, "idempotency_key": "k2", "base_version": 1},
                          headers={"X-CSRF-Token": task["csrf_token"], "Referer": f"{ORIGIN}/task/1"})
    assert r.status_code == 200


# --- validation --------------------------------------------------------------------------------


def test_emoji_offsets_are_code_points_into_the_nfc_text(env):
    c = client_for(env, "alice")
    task = first(c, "annotate", "tea")
    text = task["responses"][0]["text"]
    assert text == "Tea 🍵 is hot, café too."  # NFC: the decomposed é became one code point
    start = text.index("🍵")
    good = {"start": start, "end": start + 1, "category": "Irrelevant", "text": "🍵"}
    r = post(c, f"/api/tasks/{task['id']}/submit", span_body(task, [good]), task["csrf_token"])
    assert r.status_code == 200, r.text
    utf16 = {**good, "end": start + 2, "text": "🍵 "}  # offsets of the UTF-16 world are caught by the quote
    r = post(c, f"/api/tasks/{task['id']}/submit", span_body(task, [{**utf16, "text": "🍵"}], key="k2", base=1), task["csrf_token"])
    assert r.status_code == 422 and "spans[0].text" in r.json()["error"]


BAD = [
    ({"spans": [{"start": 3, "end": 3, "category": "Irrelevant", "text": ""}]}, "spans[0].end"),
    ({"spans": [{"start": 0, "end": 999, "category": "Irrelevant", "text": "x"}]}, "spans[0].end"),
    ({"spans": [{"start": -1, "end": 2, "category": "Irrelevant", "text": "x"}]}, "spans[0].start"),
    ({"spans": [{"start": 0, "end": 3, "category": "Spicy", "text": "Tea"}]}, "Spicy"),
    ({"spans": [{"start": 0, "end": 3, "category": "Irrelevant", "text": "Tee"}]}, "spans[0].text"),
    ({"spans": [{"start": 0, "end": 3, "category": "Irrelevant", "text": "Tea"}], "no_error": True}, "no_error"),
    ({"missing": [{"type": "Missing-Answer", "passage": 3, "sentences": [1]}]}, "missing[0].passage"),
    ({"missing": [{"type": "Missing-Answer", "passage": 1, "sentences": [7]}]}, "missing[0].sentences[0]"),
    ({"missing": [{"type": "Missing-Everything", "passage": 1, "sentences": [1]}]}, "missing[0].type"),
    ({"response_index": 2}, "response_index"),
    ({"base_version": "0"}, "base_version"),
    ({"idempotency_key": ""}, "idempotency_key"),
    ({"surprise": 1}, "surprise"),
]


@pytest.mark.parametrize(("change", "named"), BAD)
def test_bad_submissions_are_refused_naming_the_field(env, change, named):
    c = client_for(env, "alice")
    task = first(c, "annotate", "tea")
    body = {**span_body(task), "no_error": False, **change}
    r = post(c, f"/api/tasks/{task['id']}/submit", body, task["csrf_token"])
    assert r.status_code == 422, r.text
    assert named in r.json()["error"]
    assert c.get(f"/api/tasks/{task['id']}").json()["version"] == 0


def test_oversized_and_malformed_bodies(env):
    c = client_for(env, "alice")
    task = first(c, "annotate", "tea")
    url = f"/api/tasks/{task['id']}/submit"
    r = post(c, url, span_body(task, corrected="x" * 300_000), task["csrf_token"])
    assert r.status_code == 413 and "body" in r.json()["error"]
    r = c.post(url, content=b"{not json", headers={"X-CSRF-Token": task["csrf_token"], "Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    missing = {"type": "Missing-Answer", "passage": 1, "sentences": [0, 2], "note": "the title"}
    r = post(c, url, span_body(task, missing=[missing], corrected="Tea is hot."), task["csrf_token"])
    assert r.status_code == 200


# --- versions, idempotency, drafts -------------------------------------------------------------


def test_resubmitting_appends_versions_and_a_repeated_key_writes_nothing(env):
    c = client_for(env, "alice")
    task = first(c, "annotate", "coffee")
    url, csrf = f"/api/tasks/{task['id']}/submit", task["csrf_token"]
    text = task["responses"][0]["text"]
    dup = text.rindex("It is brewed.")
    spans = [{"start": dup, "end": len(text), "category": "Redundant", "text": text[dup:]}]
    r1 = post(c, url, span_body(task, spans, key="a"), csrf).json()
    assert r1["version"] == 1
    assert post(c, url, span_body(task, spans, key="a"), csrf).json() == r1  # a retry: same answer
    r = post(c, url, span_body(task, spans, key="b", base=0), csrf)
    assert r.status_code == 409 and "base_version" in r.json()["error"]
    r = post(c, url, span_body(task, [], key="a", base=1), csrf)  # same key, other body
    assert r.status_code == 409 and "idempotency_key" in r.json()["error"]
    r2 = post(c, url, span_body(task, [], key="b", base=1), csrf).json()
    assert r2["version"] == 2 and r2["record_id"] != r1["record_id"]
    latest = c.get(f"/api/tasks/{task['id']}").json()
    assert latest["version"] == 2 and latest["latest"]["no_error"] is True
    with db.read_tx(env["engine"]) as conn:
        assert conn.execute(select(func.count()).select_from(db.submissions)).scalar_one() == 2
    # history is kept: both versions export with --all-versions, the latest alone otherwise
    every = build_examples(env["engine"], all_versions=True)
    assert sorted(e.meta["version"] for e in every) == [1, 2]
    (only,) = build_examples(env["engine"])
    assert only.responses[0].annotation.spans == ()


def test_drafts_last_write_wins_and_never_hide_a_submission(env):
    c = client_for(env, "alice")
    task = first(c, "annotate", "coffee")
    base = f"/api/tasks/{task['id']}"
    csrf = task["csrf_token"]
    assert post(c, f"{base}/draft", span_body(task, key="d1", corrected="one"), csrf).json() == {"saved": True}
    assert post(c, f"{base}/draft", span_body(task, key="d2", corrected="two"), csrf).json() == {"saved": True}
    now = c.get(base).json()
    assert now["latest"]["corrected"] == "two" and now["latest_is_draft"] and now["version"] == 0
    assert tasks_of(c)[-2:][0]["status"] in ("draft", "todo")
    assert next(t for t in tasks_of(c) if t["id"] == task["id"])["status"] == "draft"
    assert post(c, f"{base}/submit", span_body(task, key="s1", corrected="final"), csrf).status_code == 200
    stale = post(c, f"{base}/draft", span_body(task, key="d3", corrected="late"), csrf)
    assert stale.status_code == 409
    now = c.get(base).json()
    assert now["latest"]["corrected"] == "final" and not now["latest_is_draft"] and now["version"] == 1
    assert next(t for t in tasks_of(c) if t["id"] == task["id"])["status"] == "done"


def test_compare_pairs_are_all_pairs_shuffled_per_annotator_and_stored_as_shown(env):
    alice, bob = client_for(env, "alice"), client_for(env, "bob")
    a_task = first(alice, "compare", "coffee")
    b_task = bob.get(f"/api/tasks/{a_task['id']}").json()
    assert a_task["pairs"] == alice.get(f"/api/tasks/{a_task['id']}").json()["pairs"]  # stable per annotator
    assert len(a_task["pairs"]) == 1 and {a_task["pairs"][0]["a"], a_task["pairs"][0]["b"]} == {0, 1}
    four = first(alice, "compare", "tea")
    assert sorted((p["a"], p["b"]) for p in four["pairs"]) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert all({p["left"], p["right"]} == {p["a"], p["b"]} for p in four["pairs"])
    url, csrf = f"/api/tasks/{four['id']}/submit", four["csrf_token"]
    judgements = [{"a": p["a"], "b": p["b"], "outcome": 1, "shown_left": p["left"]} for p in four["pairs"]]
    r = post(alice, url, {"judgements": judgements[:5], "idempotency_key": "c", "base_version": 0}, csrf)
    assert r.status_code == 422 and "not judged" in r.json()["error"]
    flipped = [{**judgements[0], "shown_left": four["pairs"][0]["right"]}, *judgements[1:]]
    r = post(alice, url, {"judgements": flipped, "idempotency_key": "c", "base_version": 0}, csrf)
    assert r.status_code == 422 and "shown_left" in r.json()["error"]
    r = post(alice, url, {"judgements": judgements + judgements[:1], "idempotency_key": "c", "base_version": 0}, csrf)
    assert r.status_code == 422 and "twice" in r.json()["error"]
    assert post(alice, url, {"judgements": judgements, "idempotency_key": "c", "base_version": 0}, csrf).status_code == 200
    stored = alice.get(f"/api/tasks/{four['id']}").json()["latest"]
    assert stored["shown"] == four["pairs"] and stored["judgements"] == judgements
    assert b_task["pairs"] is not None


def test_pair_order_differs_between_annotators():
    from finegrain.annotate.validate import shown_pairs

    orders = {tuple((p["left"], p["right"]) for p in shown_pairs(7, name, 4)) for name in ("alice", "bob", "carol", "dan")}
    assert len(orders) > 1
    assert shown_pairs(7, "alice", 4) == shown_pairs(7, "alice", 4)


# --- export ------------------------------------------------------------------------------------


def test_export_is_clean_finegrain_jsonl_with_annotations_and_preferences(env):
    c = client_for(env, "alice")
    ann = first(c, "annotate", "tea")
    text = ann["responses"][0]["text"]
    span = {"start": 0, "end": 3, "category": "Unverifiable", "text": text[:3]}
    missing = [{"type": "Missing-Major-Auxiliary", "passage": 2, "sentences": [1]}]
    assert post(c, f"/api/tasks/{ann['id']}/submit", span_body(ann, [span], missing=missing, corrected="Tea is hot."), ann["csrf_token"]).status_code == 200
    cmp_ = first(c, "compare", "tea")
    judgements = [{"a": p["a"], "b": p["b"], "outcome": (p["a"] + p["b"]) % 3, "shown_left": p["left"]} for p in cmp_["pairs"]]
    assert post(c, f"/api/tasks/{cmp_['id']}/submit", {"judgements": judgements, "idempotency_key": "c", "base_version": 0}, cmp_["csrf_token"]).status_code == 200
    out = env["tmp"] / "export.jsonl"
    assert export(env["engine"], out).records == 1
    examples, problems = read_examples(out)
    assert problems == []
    (ex,) = load_examples(out)
    assert ex.id == "ex-emoji#alice" and ex.prompt == "Is tea hot?" and len(ex.responses) == 4
    a = ex.responses[0].annotation
    assert a.annotator == "alice" and a.corrected == "Tea is hot."
    assert [(s.start, s.end, s.category) for s in a.spans] == [(0, 3, "Unverifiable")]
    assert [(m.kind, m.passage, m.sentences) for m in a.missing] == [("Missing-Major-Auxiliary", 2, (1,))]
    assert all(r.annotation is None for r in ex.responses[1:])
    assert sorted((p.a, p.b, p.outcome) for p in ex.preferences) == sorted((j["a"], j["b"], j["outcome"]) for j in judgements)
    assert ex.responses[3].text == XSS and ex.responses[0].text.startswith(EMOJI[:5])
    line = json.loads(out.read_text().splitlines()[0])
    assert line["meta"]["annotator"] == "alice" and line["meta"]["example_id"] == "ex-emoji"


def test_a_submission_that_fails_midway_leaves_nothing_behind(env):
    """One transaction per submission: the insert is rolled back when a later statement fails."""
    from sqlalchemy import event

    c = client_for(env, "alice")
    task = first(c, "annotate", "coffee")
    assert post(c, f"/api/tasks/{task['id']}/draft", span_body(task, key="d"), task["csrf_token"]).status_code == 200

    def fail_on_draft_delete(conn, cursor, statement, params, context, executemany):
        if statement.lstrip().upper().startswith("DELETE FROM DRAFTS"):
            raise RuntimeError("disk unplugged")

    event.listen(env["engine"], "before_cursor_execute", fail_on_draft_delete)
    try:
        with pytest.raises(RuntimeError):
            store.submit(env["engine"], task["id"], 1, "alice", span_body(task, key="s"))
    finally:
        event.remove(env["engine"], "before_cursor_execute", fail_on_draft_delete)
    with db.read_tx(env["engine"]) as conn:
        assert conn.execute(select(func.count()).select_from(db.submissions)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(db.drafts)).scalar_one() == 1
    assert post(c, f"/api/tasks/{task['id']}/submit", span_body(task, key="s"), task["csrf_token"]).json()["version"] == 1
