"""The defects of the app's second-round issue, each with the test that failed before its fix:
one set of annotation rules for the server and `finegrain data check`, explanations and notes that
survive a resubmission, a safe `export --out`, `--create`, no 500s, login limits, import reports,
the queue's pages and filters, and where an admin lands."""

from __future__ import annotations

import json
import logging
import os

import pytest
from fastapi.testclient import TestClient

from annotate_helpers import login, page_data
from finegrain.annotate import auth, db, store
from finegrain.annotate.export import build_examples, export
from finegrain.annotate.importer import import_file
from finegrain.annotate.server import ServerConfig, create_app
from finegrain.cli import main
from finegrain.data.annotations import grapheme_bounds
from finegrain.data.jsonl import write_jsonl
from finegrain.data.load import read_examples
from finegrain.data.records import Example, Passage, Response

ORIGIN = "http://testserver"
# a ZWJ family emoji (5 code points), a flag (2 regional indicators), q + combining dot (no NFC form)
FAMILY, FLAG, QDOT = "\U0001F468\u200d\U0001F469\u200d\U0001F467", "\U0001F1EB\U0001F1F7", "q\u0307"
TEXT = f"Family {FAMILY} and flag {FLAG} and {QDOT}x end."
PASSAGES = (Passage("Tea", ("Tea is a drink.", "It is served hot.")),)


def at(sub: str, extra: int = 0) -> tuple[int, int]:
    start = TEXT.index(sub)
    return start, start + len(sub) + extra


def span(sub: str, category: str = "Irrelevant", *, cut_end: int = 0, cut_start: int = 0) -> dict:
    start, end = at(sub)
    start, end = start + cut_start, end - cut_end
    return {"start": start, "end": end, "category": category, "text": TEXT[start:end]}


# (name, annotation, the field a refusal names or None when all accept it)
CASES = [
    ("empty without no_error", {"spans": [], "missing": [], "no_error": False}, "no_error"),
    ("explicit no error", {"spans": [], "missing": [], "no_error": True}, None),
    ("no_error with a span", {"spans": [span("Family")], "missing": [], "no_error": True}, "no_error"),
    ("three identical spans", {"spans": [span("Family")] * 3, "missing": [], "no_error": False}, "spans[1]"),
    ("overlap, other category", {"spans": [span("Family"), span("mily", "Redundant")], "missing": [], "no_error": False}, "spans[1]"),
    ("adjacent spans", {"spans": [span("Family"), span(" and flag", "Redundant")], "missing": [], "no_error": False}, None),
    ("missing note without evidence", {"spans": [], "missing": [{"type": "Missing-Answer", "passage": 1, "sentences": []}], "no_error": False}, "missing[0].sentences"),
    ("missing note with evidence", {"spans": [], "missing": [{"type": "Missing-Answer", "passage": 1, "sentences": [2], "note": "hot"}], "no_error": False}, None),
    ("whole ZWJ emoji", {"spans": [span(FAMILY)], "missing": [], "no_error": False}, None),
    ("half a ZWJ emoji", {"spans": [span(FAMILY, cut_end=2)], "missing": [], "no_error": False}, "spans[0].end"),
    ("whole flag", {"spans": [span(FLAG)], "missing": [], "no_error": False}, None),
    ("half a flag", {"spans": [span(FLAG, cut_start=1)], "missing": [], "no_error": False}, "spans[0].start"),
    ("letter and its combining mark", {"spans": [span(QDOT + "x")], "missing": [], "no_error": False}, None),
    ("combining mark cut off", {"spans": [span(QDOT, cut_end=1)], "missing": [], "no_error": False}, "spans[0].end"),
]


def test_grapheme_bounds_by_hand():
    assert grapheme_bounds("e\u0301x") == {0, 2, 3}
    assert grapheme_bounds(FLAG + "!") == {0, 2, 3}
    assert grapheme_bounds("a" + FAMILY) == {0, 1, 6}


@pytest.fixture()
def env(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    engine = db.make_engine(url)
    tokens = {"alice": auth.create_token(engine, "alice"), "boss": auth.create_token(engine, "boss", "admin")}
    examples = [Example("ex-g", "Which family?", (Response(TEXT), Response("Other.")), PASSAGES)]
    examples += [Example(f"ex-{i:03d}", f"Question {i}?", (Response(f"Answer {i}."), Response("No.")), PASSAGES) for i in range(60)]
    write_jsonl(tmp_path / "in.jsonl", examples)
    import_file(engine, tmp_path / "in.jsonl")
    app = create_app(ServerConfig(db_url=url, login_failures=3, login_window_s=60), engine)
    return {"engine": engine, "tokens": tokens, "app": app, "url": url, "tmp": tmp_path}


def client_for(env, name: str) -> TestClient:
    c = TestClient(env["app"], headers={"Origin": ORIGIN})
    assert login(c, env["tokens"][name]).status_code == 303
    return c


def grapheme_task(c: TestClient) -> dict:
    t = next(t for t in c.get("/api/queue?kind=annotate&q=family").json()["tasks"])
    return c.get(f"/api/tasks/{t['id']}").json()


def submit(c: TestClient, task: dict, ann: dict, key: str = "k", base: int = 0):
    body = {"response_index": task["responses"][0]["index"], "corrected": None, **ann, "idempotency_key": key, "base_version": base}
    return c.post(f"/api/tasks/{task['id']}/submit", json=body, headers={"X-CSRF-Token": task["csrf_token"]})


def data_check(capsys, path) -> tuple[int, str]:
    code = main(["data", "check", str(path)])
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.mark.parametrize(("name", "ann", "field"), CASES, ids=[c[0] for c in CASES])
def test_server_and_data_check_apply_the_same_rules(env, capsys, name, ann, field):
    c = client_for(env, "alice")
    task = grapheme_task(c)
    r = submit(c, task, ann)
    record = {"id": "x", "prompt": "q", "passages": [{"title": "Tea", "sentences": list(PASSAGES[0].sentences)}],
              "responses": [{"text": TEXT, "annotation": {k: v for k, v in ann.items()}}]}
    path = env["tmp"] / "check.jsonl"
    path.write_text(json.dumps(record) + "\n")
    code, err = data_check(capsys, path)
    if field is None:
        assert r.status_code == 200, r.text
        assert code == 0, err
    else:
        assert r.status_code == 422, r.text
        assert r.json()["error"].startswith(field), r.json()
        assert code != 0 and f"field responses[0].annotation.{field}" in err, err


def test_qa_feedback_with_overlapping_spans_is_refused_by_data_check(tmp_path, capsys):
    item = {"question": "q", "passages": [["T", "s1."]], "prediction 1": "abc def", "prediction 2": "x",
            "feedback": {"errors": [{"error type": "Irrelevant", "start": 0, "end": 5}, {"error type": "Redundant", "start": 4, "end": 7}],
                         "missing-info": [], "corrected-prediction": "abc"}, "preference": [1]}
    path = tmp_path / "fb.json"
    path.write_text(json.dumps([item]))
    code, err = data_check(capsys, path)
    assert code != 0 and "feedback.errors[1]" in err and "overlaps" in err
    item["feedback"]["errors"] = []  # QA-Feedback's explicit "no error": an empty list
    path.write_text(json.dumps([item]))
    assert data_check(capsys, path)[0] == 0


def test_old_jsonl_without_explicit_no_error_is_refused(tmp_path, capsys):
    record = {"id": "x", "prompt": "q", "responses": [{"text": "t", "annotation": {"spans": [], "missing": []}}]}
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps(record) + "\n")
    code, err = data_check(capsys, path)
    assert code != 0 and "no_error" in err and "nothing is marked" in err


def test_explanations_and_notes_are_stored_and_exported(env):
    c = client_for(env, "alice")
    task = grapheme_task(c)
    s = {**span("Family"), "explanation": "not asked"}
    missing = [{"type": "Missing-Answer", "passage": 1, "sentences": [1], "note": "say it is a drink"}]
    assert submit(c, task, {"spans": [s], "missing": missing, "no_error": False}).status_code == 200
    latest = c.get(f"/api/tasks/{task['id']}").json()["latest"]
    assert latest["spans"][0]["explanation"] == "not asked" and latest["missing"][0]["note"] == "say it is a drink"
    (ex,) = [e for e in build_examples(env["engine"]) if e.meta["example_id"] == "ex-g"]
    ann = ex.responses[0].annotation
    assert ann.spans[0].explanation == "not asked" and ann.missing[0].note == "say it is a drink"


# --- export --out ----------------------------------------------------------------------------------


def test_export_never_overwrites_follows_links_or_writes_devices(env, capsys):
    engine, tmp = env["engine"], env["tmp"]
    out = tmp / "out.jsonl"
    out.write_text("precious\n")
    args = ["annotate", "export", "--db", env["url"], "--out"]
    assert main([*args, str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_text() == "precious\n"
    assert main([*args, str(out), "--force"]) == 0
    assert out.read_text() == "" and "wrote 0 records" in capsys.readouterr().out
    target = tmp / "target.txt"
    target.write_text("keep\n")
    link = tmp / "link.jsonl"
    link.symlink_to(target)
    for extra in ([], ["--force"]):
        assert main([*args, str(link), *extra]) == 2
        assert "symbolic link" in capsys.readouterr().err
    assert link.is_symlink() and target.read_text() == "keep\n"
    assert main([*args, os.devnull, "--force"]) == 2
    assert "not a regular file" in capsys.readouterr().err
    assert main([*args, str(tmp)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert not [p for p in tmp.iterdir() if p.name.endswith(".tmp")]  # no temporary file left behind
    assert export(engine, tmp / "new.jsonl").records == 0


def test_export_skips_what_todays_rules_refuse_and_says_so(env, capsys):
    """A submission stored by the first release (empty, no_error false) is not exported as "no error"."""
    c = client_for(env, "alice")
    task = grapheme_task(c)
    with db.write_tx(env["engine"]) as conn:
        uid = conn.execute(db.users.select().where(db.users.c.name == "alice")).first().id
        conn.execute(db.submissions.insert().values(
            task_id=task["id"], user_id=uid, version=1, idempotency_key="old", body_hash="x", created_at=0.0,
            payload=json.dumps({"response_index": 0, "spans": [], "missing": [], "corrected": None, "no_error": False})))
    out = env["tmp"] / "e.jsonl"
    assert main(["annotate", "export", "--db", env["url"], "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "skipped: ex-g task" in captured.err and "nothing is marked" in captured.err
    assert read_examples(out)[1] == []


# --- a database that does not exist ------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["annotate", "users"], ["annotate", "export", "--out", "{tmp}/x.jsonl"], ["annotate", "agreement"],
    ["annotate", "assign"], ["annotate", "token", "revoke", "a"], ["annotate", "token", "create", "a"],
    ["annotate", "import", "{tmp}/in.jsonl"], ["annotate", "serve", "--port", "1"],
])
def test_every_command_refuses_a_missing_database_unless_create(env, capsys, argv):
    missing = env["tmp"] / "typo.db"
    argv = [a.replace("{tmp}", str(env["tmp"])) for a in argv]
    assert main([*argv, "--db", f"sqlite:///{missing}"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "--create" in err
    assert not missing.exists()


def test_create_makes_the_database_and_every_command_names_it(env, capsys, tmp_path):
    fresh = tmp_path / "fresh.db"
    assert main(["annotate", "token", "create", "a", "--db", f"sqlite:///{fresh}", "--create"]) == 0
    assert f"database {fresh}" in capsys.readouterr().err and fresh.is_file()
    assert main(["annotate", "users", "--db", f"sqlite:///{fresh}"]) == 0
    assert f"database {fresh}" in capsys.readouterr().err


# --- no 500s ---------------------------------------------------------------------------------------------


def test_huge_numbers_deep_json_and_bad_origins_get_4xx_not_500(env):
    c = client_for(env, "alice")
    task = grapheme_task(c)
    csrf = {"X-CSRF-Token": task["csrf_token"]}
    huge = 10**20
    assert c.get(f"/api/tasks/{huge}").status_code == 404
    assert c.get(f"/task/{huge}").status_code == 404
    assert c.post(f"/api/tasks/{huge}/submit", json={}, headers=csrf).status_code == 404
    r = submit(c, task, {"spans": [], "missing": [], "no_error": True}, base=huge)
    assert r.status_code == 422 and "base_version" in r.json()["error"]
    r = submit(c, task, {"spans": [{"start": huge, "end": huge + 1, "category": "Irrelevant", "text": "x"}], "missing": []})
    assert r.status_code == 422 and "spans[0]" in r.json()["error"]
    deep = b"[" * 50_000 + b"]" * 50_000
    r = c.post(f"/api/tasks/{task['id']}/submit", content=deep, headers={**csrf, "Content-Type": "application/json"})
    assert r.status_code in (400, 413)
    r = c.post(f"/api/tasks/{task['id']}/submit", content=b'{"a": ' + b"9" * 5000 + b"}", headers={**csrf, "Content-Type": "application/json"})
    assert r.status_code == 400
    for origin in ("http://[::1", "http://host:99999", "http://[::1]:x", "\x00"):
        r = c.post(f"/api/tasks/{task['id']}/submit", json={}, headers={**csrf, "Origin": origin})
        assert r.status_code == 403, origin
    assert c.get("/api/queue?page=99999999999999999999").status_code == 422


def test_login_and_logout_bodies_are_limited_before_reading(env):
    c = TestClient(env["app"], headers={"Origin": ORIGIN})
    c.get("/login")
    big = b"token=" + b"x" * 1_000_000
    r = c.post("/login", content=big, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413
    alice = client_for(env, "alice")
    r = alice.post("/logout", content=big, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413
    assert alice.get("/api/queue").status_code == 200  # still logged in


def test_bad_logins_are_rate_limited_and_logged(env, caplog):
    c = TestClient(env["app"], headers={"Origin": ORIGIN})
    with caplog.at_level(logging.WARNING, logger="finegrain.annotate"):
        codes = [login(c, f"fg_wrong{i}").status_code for i in range(4)]
    assert codes == [401, 401, 401, 429]
    assert sum("bad or revoked token" in r.getMessage() for r in caplog.records) == 3
    assert any("too many bad logins" in r.getMessage() for r in caplog.records)
    assert login(c, env["tokens"]["alice"]).status_code == 429  # the address waits out the window


# --- import ------------------------------------------------------------------------------------------------


def test_import_keeps_qa_feedback_and_says_what_it_skipped(tmp_path, capsys):
    from finegrain.data.qa_feedback import write_qa_feedback
    from finegrain.data.records import Annotation, Preference, Span

    text = "Tea is hot. It is green."
    ann = Annotation((Span(12, 24, "Unverifiable", "not in the passage"),), corrected="Tea is hot.")
    ex = Example("q1", "Is tea hot?", (Response(text, ann), Response("Yes."), Response("No.")), PASSAGES,
                 (Preference(0, 1, 2), Preference(0, 2, 1), Preference(1, 2, 1)))
    path = tmp_path / "qa.json"
    write_qa_feedback(path, [ex])
    url = f"sqlite:///{tmp_path / 'q.db'}"
    assert main(["annotate", "import", str(path), "--db", url, "--create"]) == 0
    out = capsys.readouterr().out
    assert "kept the file's own feedback: 1 annotations and 3 preferences" in out
    assert main(["annotate", "import", str(path), "--db", url]) == 0
    out = capsys.readouterr().out
    assert "imported 0 examples" in out and "skipped 1 examples already in the database" in out
    (back,) = build_examples(db.make_engine(url))
    assert back.meta["annotator"] == "source"
    a = back.responses[0].annotation
    assert [(s.start, s.end, s.category, s.explanation) for s in a.spans] == [(12, 24, "Unverifiable", "not in the passage")]
    assert a.corrected == "Tea is hot."
    assert sorted((p.a, p.b, p.outcome) for p in back.preferences) == [(0, 1, 2), (0, 2, 1), (1, 2, 1)]
    assert login(TestClient(create_app(ServerConfig(db_url=url))), "source").status_code in (401, 403)
    fresh = f"sqlite:///{tmp_path / 'n.db'}"
    assert main(["annotate", "import", str(path), "--db", fresh, "--create", "--no-feedback"]) == 0
    assert "did not keep the file's own feedback (4 annotations and preferences)" in capsys.readouterr().out


# --- queue, admin ------------------------------------------------------------------------------------------


def test_queue_pages_filters_and_distinct_titles(env):
    c = client_for(env, "alice")
    first = c.get("/api/queue").json()
    assert first["progress"]["total"] == 122 and len(first["tasks"]) == 50 and first["pages"] == 3
    titles = [t["title"] for t in first["tasks"]]
    assert len(set(titles)) == len(titles)  # the annotate and compare rows of a prompt differ
    assert titles[0].endswith("response 1 of 2") and titles[1].endswith("compare 2 responses")
    last = c.get("/api/queue?page=3").json()
    assert len(last["tasks"]) == 22 and last["page"] == 3
    only = c.get("/api/queue?kind=compare&q=question 1").json()
    assert only["matching"] == 11 and all(t["kind"] == "compare" and "Question 1" in t["title"] for t in only["tasks"])
    task = c.get(f"/api/tasks/{first['tasks'][0]['id']}").json()
    assert submit(c, task, {"spans": [], "missing": [], "no_error": True}).status_code == 200
    done = c.get("/api/queue?status=done").json()
    assert [t["id"] for t in done["tasks"]] == [task["id"]] and done["counts"]["done"] == 1
    assert c.get("/api/queue?status=bogus").status_code == 422
    page = page_data(c.get("/?kind=annotate&page=2").text)
    assert page["page"] == 2 and page["filter"]["kind"] == "annotate"


def test_admin_lands_on_the_admin_page_and_is_not_an_annotator(env):
    boss = TestClient(env["app"], headers={"Origin": ORIGIN})
    r = login(boss, env["tokens"]["boss"])
    assert r.status_code == 303 and r.headers["location"] == "/admin"
    r = boss.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/admin"
    progress = store.progress(env["engine"])
    assert [a["name"] for a in progress["annotators"]] == ["alice"]
    assert [s["name"] for s in progress["staff"]] == ["boss"]
    assert progress["overall"]["total"] == 122


def test_a_draft_may_be_unfinished_but_not_wrong(env):
    """Drafts skip the rules about finishing (explicit no error, evidence), not the others."""
    c = client_for(env, "alice")
    task = grapheme_task(c)
    url, csrf = f"/api/tasks/{task['id']}/draft", {"X-CSRF-Token": task["csrf_token"]}
    base = {"response_index": 0, "corrected": "Family.", "idempotency_key": "d", "base_version": 0}
    r = c.post(url, json={**base, "spans": [], "missing": [{"type": "Missing-Answer", "passage": 1, "sentences": []}], "no_error": False}, headers=csrf)
    assert r.status_code == 200, r.text
    r = c.post(url, json={**base, "spans": [span(FAMILY, cut_end=2)], "missing": [], "no_error": False}, headers=csrf)
    assert r.status_code == 422 and "spans[0].end" in r.json()["error"]
    r = submit(c, task, {"spans": [], "missing": [], "no_error": False, "corrected": "Family."})
    assert r.status_code == 422 and "no_error" in r.json()["error"]
