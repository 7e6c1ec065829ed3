"""`finegrain annotate ...` and `finegrain sample` end to end, in-process, on a temporary database."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from sqlalchemy import select

from annotate_helpers import sample_examples, write_examples
from finegrain.annotate import db, store
from finegrain.annotate.agreement import agreement, agreement_by, cohen_kappa, edit_distance, krippendorff_alpha
from finegrain.annotate.export import build_examples
from finegrain.cli import main
from finegrain.data.load import load_examples
from finegrain.data.qa_feedback import write_qa_feedback
from finegrain.data.records import Annotation


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture()
def dburl(tmp_path):
    return f"sqlite:///{tmp_path / 'cli.db'}"


def make_token(capsys, dburl, name, role="annotator") -> str:
    code, out, _ = run(capsys, "annotate", "token", "create", name, "--role", role, "--db", dburl, "--create")
    assert code == 0
    return out.strip()


def test_tokens_are_shown_once_stored_hashed_and_revocable(capsys, dburl, tmp_path):
    token = make_token(capsys, dburl, "ann1")
    assert token.startswith("fg_") and len(token) > 40
    assert token.encode() not in (tmp_path / "cli.db").read_bytes()
    code, _, err = run(capsys, "annotate", "token", "create", "ann1", "--db", dburl)
    assert code == 2 and "already has a token" in err
    code, _, err = run(capsys, "annotate", "token", "create", "bad name!", "--db", dburl)
    assert code == 2 and "bad name!" in err
    assert run(capsys, "annotate", "token", "revoke", "ann1", "--db", dburl)[0] == 0
    code, out, _ = run(capsys, "annotate", "users", "--db", dburl)
    assert "ann1\tannotator (revoked)" in out
    assert make_token(capsys, dburl, "ann1") != token  # a revoked name can be issued a new token
    code, _, err = run(capsys, "annotate", "token", "revoke", "nobody", "--db", dburl)
    assert code == 2 and "nobody" in err


def test_import_qa_feedback_and_assign_per_task(capsys, dburl, tmp_path):
    for name in ("a", "b", "c"):
        make_token(capsys, dburl, name)
    qa = tmp_path / "qa.json"
    # QA-Feedback files carry feedback on prediction 1; the app imports the questions and predictions
    examples = [replace(e, responses=(replace(e.responses[0], annotation=Annotation()), *e.responses[1:])) for e in sample_examples()]
    write_qa_feedback(qa, examples)
    code, out, _ = run(capsys, "annotate", "import", str(qa), "--db", dburl, "--no-assign")
    assert code == 0 and "imported 3 examples as 6 tasks; 0 new assignments" in out
    assert "kept the file's own feedback: 3 annotations and 0 preferences" in out
    again = run(capsys, "annotate", "import", str(qa), "--db", dburl, "--no-assign")[1]
    assert "imported 0 examples" in again and "skipped 3 examples already in the database" in again
    code, out, _ = run(capsys, "annotate", "assign", "--annotators", "a,b", "--per-task", "1", "--db", dburl)
    assert code == 0 and out.startswith("6 new assignments")
    engine = db.make_engine(dburl)
    with db.read_tx(engine) as conn:
        rows = conn.execute(select(db.users.c.name, db.tasks.c.example_id).join(db.assignments, db.assignments.c.user_id == db.users.c.id)
                            .join(db.tasks, db.tasks.c.id == db.assignments.c.task_id)).all()
    by_example: dict[int, set[str]] = {}
    for name, ex in rows:
        by_example.setdefault(ex, set()).add(name)
    assert all(len(v) == 1 for v in by_example.values())  # one annotator per example, both of its tasks
    assert {n for v in by_example.values() for n in v} == {"a", "b"}
    code, out, _ = run(capsys, "annotate", "assign", "--db", dburl)  # default: everything to everyone
    assert out.startswith(f"{3 * 6 - 6} new assignments")
    code, _, err = run(capsys, "annotate", "assign", "--annotators", "zed", "--db", dburl)
    assert code == 2 and "zed" in err


def test_import_refuses_a_bad_file_listing_the_problem(capsys, dburl, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "prompt": 3, "responses": [{"text": "t"}]}\n')
    code, _, err = run(capsys, "annotate", "import", str(bad), "--db", dburl, "--create")
    assert code == 2 and "prompt" in err and "bad.jsonl" in err


def _annotate_all(engine, who: list[str], spans_for) -> None:
    """Submit through the store for each annotator: spans from spans_for(name, text), all pairs 'a better'."""
    with db.read_tx(engine) as conn:
        users = dict(conn.execute(select(db.users.c.name, db.users.c.id)).all())
    for name in who:
        for t in store.queue(engine, users[name]):
            task = store.task_json(engine, t["id"], users[name], name, "csrf")
            if task["kind"] == "annotate":
                text = task["responses"][0]["text"]
                spans = spans_for(name, text)
                body = {"response_index": task["responses"][0]["index"], "spans": spans, "missing": [], "corrected": None,
                        "no_error": not spans}
            else:
                body = {"judgements": [{"a": p["a"], "b": p["b"], "outcome": 1 if name == "a" or p["a"] else 2,
                                        "shown_left": p["left"]} for p in task["pairs"]]}
            store.submit(engine, t["id"], users[name], name, {**body, "idempotency_key": f"{name}{t['id']}", "base_version": 0})


def test_export_checks_clean_and_agreement_reports(capsys, dburl, tmp_path):
    for name in ("a", "b"):
        make_token(capsys, dburl, name)
    assert run(capsys, "annotate", "import", str(write_examples(tmp_path / "in.jsonl")), "--db", dburl)[0] == 0
    engine = db.make_engine(dburl)

    def spans_for(name, text):
        first_word = text.split()[0] if text.split() else ""
        if not first_word or (name == "b" and "Coffee" in text):
            return []
        return [{"start": 0, "end": len(first_word), "category": "Irrelevant", "text": first_word}]

    _annotate_all(engine, ["a", "b"], spans_for)
    out = tmp_path / "export.jsonl"
    code, msg, _ = run(capsys, "annotate", "export", "--db", dburl, "--out", str(out))
    assert code == 0 and "wrote 6 records" in msg
    assert run(capsys, "data", "check", str(out))[0] == 0
    examples = load_examples(out)
    assert {e.meta["annotator"] for e in examples} == {"a", "b"}
    assert all(e.preferences and e.responses[0].annotation is not None for e in examples)

    report = agreement(engine)
    assert report["annotate_tasks"] == 3 and report["compare_tasks"] == 3
    irrelevant = next(c for c in report["categories"] if c["category"] == "Irrelevant")
    # a and b agree on two responses and differ on the third ("Coffee ..."): 2 shared spans of 5
    assert irrelevant["f1_exact"] == pytest.approx(2 * 2 / 5)
    assert irrelevant["f1_overlap"] == pytest.approx(2 * (2 / 2) * (2 / 3) / (1 + 2 / 3))
    assert -1 <= irrelevant["kappa"] <= 1 and irrelevant["segments"] > 3
    redundant = next(c for c in report["categories"] if c["category"] == "Redundant")
    assert redundant["spans"] == 0 and redundant["kappa"] is None and redundant["f1_exact"] is None
    assert report["pairwise_judgements"] == 6 + 1 + 1
    code, text, _ = run(capsys, "annotate", "agreement", "--db", dburl)
    assert code == 0 and "Irrelevant" in text and "pairwise choices: 8 shared judgements" in text
    code, text, _ = run(capsys, "annotate", "agreement", "--db", dburl, "--json")
    assert json.loads(text)["pairwise_judgements"] == 8
    people = agreement_by(engine, "annotator")
    assert [p["annotator"] for p in people] == ["a", "b"] and all(p["tasks"] == 6 for p in people)
    assert all(p["f1_exact"] == pytest.approx(2 * 2 / 5) and p["pairwise_judgements"] == 8 for p in people)
    assert all(p["edit_distance"] == 0.0 and p["corrections"] == 3 for p in people)  # nobody corrected anything
    items = agreement_by(engine, "item")
    annotated = [i for i in items if i["kind"] == "annotate"]
    assert len(items) == 6 and len(annotated) == 3
    coffee = next(i for i in annotated if i["example_id"] == "ex-plain")
    assert coffee["f1_exact"] == 0.0 and coffee["spans"] == 1 and coffee["annotators"] == ["a", "b"]
    assert all(i["f1_exact"] == 1.0 for i in annotated if i is not coffee)
    code, text, _ = run(capsys, "annotate", "agreement", "--db", dburl, "--by", "item")
    assert code == 0 and "ex-plain" in text and "seg alpha" in text
    code, text, _ = run(capsys, "annotate", "agreement", "--db", dburl, "--by", "annotator", "--json")
    assert [r["annotator"] for r in json.loads(text)] == ["a", "b"]
    copy = tmp_path / "backup.db"
    assert run(capsys, "annotate", "backup", "--db", dburl, "--out", str(copy))[0] == 0
    assert len(build_examples(db.make_engine(f"sqlite:///{copy}"))) == 6
    assert run(capsys, "annotate", "backup", "--db", dburl, "--out", str(copy))[0] == 2  # never overwrites


def test_krippendorff_alpha_by_hand():
    # coincidences: o11 = 2, o00 = 4, o10 = o01 = 1; n = 8, n1 = 3, n0 = 5
    # D_o = 2, D_e = (5 * 3 + 3 * 5) / 7 = 30 / 7 -> alpha = 1 - 2 * 7 / 30 = 8 / 15
    units = [[1, 1], [1, 0], [0, 0], [0, 0]]
    assert krippendorff_alpha(units) == pytest.approx(8 / 15)
    assert krippendorff_alpha(units + [[1], []]) == pytest.approx(8 / 15)  # unpairable units add nothing
    assert krippendorff_alpha([[0, 0], [0, 0]]) is None  # one label used: undefined
    assert krippendorff_alpha([[0, 1], [1, 0]]) == pytest.approx(1 - 4 / (2 * 2 * 2 / 3))
    # three coders agree perfectly on two labels
    assert krippendorff_alpha([[1, 1, 1], [0, 0, 0]]) == pytest.approx(1.0)


def test_edit_distance_by_hand():
    assert edit_distance(list("kitten"), list("sitting")) == 3
    assert edit_distance("tea is hot".split(), "tea is very hot".split()) == 1
    assert edit_distance([], ["a", "b"]) == 2 and edit_distance(["a"], ["a"]) == 0


def test_cohen_kappa_by_hand():
    # 10 items: observed agreement 0.7; rater 1 says 1 five times, rater 2 six times:
    # expected = 0.5*0.6 + 0.5*0.4 = 0.5 -> kappa = (0.7 - 0.5) / 0.5 = 0.4
    pairs = [(1, 1)] * 4 + [(1, 0)] + [(0, 1)] * 2 + [(0, 0)] * 3
    assert cohen_kappa(pairs) == pytest.approx(0.4)
    assert cohen_kappa([(1, 1), (1, 1)]) is None
    assert cohen_kappa([(0, 1), (1, 0)]) == pytest.approx(-1.0)


@pytest.mark.embedded
def test_sample_keeps_passages_and_writes_importable_jsonl(capsys, tmp_path, dburl):
    prompts = tmp_path / "qa.json"
    prompts.write_text(json.dumps([
        {"question": "Who wrote Hamlet?", "passages": [["Hamlet", "Hamlet is a tragedy.", "Shakespeare wrote it."]], "answer": ["Shakespeare"]},
        {"question": "What is tea?", "passages": [{"content": "Tea\n\nTea is a drink. It is brewed."}]},
    ]))
    out = tmp_path / "sampled.jsonl"
    code, msg, _ = run(capsys, "sample", "--prompts", str(prompts), "--k", "2", "--max-new-tokens", "6", "--out", str(out))
    assert code == 0 and "wrote 2 prompts x 2 responses" in msg
    first, second = load_examples(out)
    assert first.prompt == "Who wrote Hamlet?" and first.reference == "Shakespeare"
    assert first.passages[0].sentences == ("Hamlet is a tragedy.", "Shakespeare wrote it.")
    assert second.passages[0].title == "Tea" and second.passages[0].sentences == ("Tea is a drink.", "It is brewed.")
    assert len(first.responses) == 2 and first.meta["sampling"]["k"] == 2
    make_token(capsys, dburl, "a")
    code, msg, _ = run(capsys, "annotate", "import", str(out), "--annotate", "all", "--db", dburl)
    assert code == 0 and "as 6 tasks" in msg
