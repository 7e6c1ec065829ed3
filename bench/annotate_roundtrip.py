"""QA-Feedback through the annotation app and back: import (the file's own feedback kept as the
`source` account), two annotators re-enter it over the HTTP API (ann1 as it is, ann2 dropping every
third span and its explanation), export, `data check`, and agreement per annotator and per item.

    nice -n 15 .venv/bin/python bench/annotate_roundtrip.py [--data ../shared/data/qa_feedback/feedback.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "qa_feedback" / "feedback.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DATA))
    args = p.parse_args()

    from fastapi.testclient import TestClient

    from finegrain.annotate import auth, db
    from finegrain.annotate.agreement import agreement_by, format_by
    from finegrain.annotate.export import export
    from finegrain.annotate.importer import import_file
    from finegrain.annotate.server import ServerConfig, create_app
    from finegrain.cli import main as cli
    from finegrain.data.load import load_examples

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'rt.db'}"
        engine = db.make_engine(url)
        tokens = {n: auth.create_token(engine, n) for n in ("ann1", "ann2")}
        t0 = time.monotonic()
        report = import_file(engine, args.data, compare=True)
        print("\n".join(report.lines()) + f" ({time.monotonic() - t0:.1f} s)")
        truth = {e.id: e for e in load_examples(args.data)}
        app = create_app(ServerConfig(db_url=url, login_failures=1000), engine)
        t0 = time.monotonic()
        n = 0
        for name, drop in (("ann1", False), ("ann2", True)):
            c = TestClient(app, headers={"Origin": "http://testserver"})
            page = c.get("/login")
            csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
            assert c.post("/login", data={"token": tokens[name], "csrf": csrf}, follow_redirects=False).status_code == 303
            pages = c.get("/api/queue").json()["pages"]
            tasks = [t for k in range(1, pages + 1) for t in c.get(f"/api/queue?page={k}").json()["tasks"]]
            for t in tasks:
                task = c.get(f"/api/tasks/{t['id']}").json()
                ex = truth[task["example_id"]]
                if task["kind"] == "annotate":
                    text = task["responses"][0]["text"]
                    ann = ex.responses[0].annotation
                    spans = [s for k, s in enumerate(ann.spans) if not (drop and k % 3 == 2)]
                    body = {"response_index": 0,
                            "spans": [{"start": s.start, "end": s.end, "category": s.category, "text": text[s.start:s.end],
                                       "explanation": s.explanation} for s in spans],
                            "missing": [{"type": m.kind, "passage": m.passage, "sentences": list(m.sentences), "note": m.note} for m in ann.missing],
                            "corrected": ann.corrected, "no_error": not spans and not ann.missing}
                else:
                    outcome = {(pr.a, pr.b): pr.outcome for pr in ex.preferences}
                    body = {"judgements": [{"a": q["a"], "b": q["b"], "outcome": outcome[(q["a"], q["b"])], "shown_left": q["left"]}
                                           for q in task["pairs"]]}
                r = c.post(f"/api/tasks/{t['id']}/submit", json={**body, "idempotency_key": f"{name}-{t['id']}", "base_version": 0},
                           headers={"X-CSRF-Token": task["csrf_token"]})
                assert r.status_code == 200, r.text
                n += 1
        print(f"{n} submissions over the API in {time.monotonic() - t0:.1f} s")
        out = Path(tmp) / "export.jsonl"
        result = export(engine, out)
        print(f"exported {result.records} records ({len(result.skipped)} skipped)")
        code = cli(["data", "check", str(out)])
        print(f"finegrain data check: exit {code}")
        people = agreement_by(engine, "annotator")
        print(format_by(people, "annotator"))
        items = [r for r in agreement_by(engine, "item") if r["kind"] == "annotate"]

        def summary(key):
            xs = [r[key] for r in items if r[key] is not None]
            return f"{key}: mean {statistics.mean(xs):.3f}, median {statistics.median(xs):.3f}, min {min(xs):.3f} over {len(xs)} items"

        print("per item (span tasks):")
        for key in ("f1_exact", "f1_overlap", "segment_kappa", "segment_alpha", "edit_distance"):
            print("  " + summary(key))
        print(f"  items where all three agree exactly: {sum(r['f1_exact'] == 1.0 for r in items)} of {len(items)}", file=sys.stdout)
        engine.dispose()


if __name__ == "__main__":
    main()
