"""`finegrain annotate export`: submissions as finegrain JSONL, one record per (example, annotator).

A record holds the example's prompt, passages and all K responses; the responses this annotator
annotated carry their annotation (no spans = "no error"), and their pairwise judgements become
`preferences`. By default the latest version of each (task, annotator) is used; `--all-versions`
writes one record per submitted version instead, with the version in `meta`.
"""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import Engine, select

from finegrain.annotate import db
from finegrain.data.jsonl import write_jsonl
from finegrain.data.records import Annotation, Example, MissingInfo, Passage, Preference, Response, Span


def _rows(engine: Engine):
    with db.read_tx(engine) as conn:
        return conn.execute(
            select(
                db.submissions.c.id,
                db.submissions.c.version,
                db.submissions.c.payload,
                db.submissions.c.created_at,
                db.tasks.c.id.label("task_id"),
                db.tasks.c.kind,
                db.tasks.c.response_index,
                db.examples.c.id.label("example_pk"),
                db.examples.c.ext_id,
                db.examples.c.data,
                db.users.c.name.label("annotator"),
            )
            .join(db.tasks, db.tasks.c.id == db.submissions.c.task_id)
            .join(db.examples, db.examples.c.id == db.tasks.c.example_id)
            .join(db.users, db.users.c.id == db.submissions.c.user_id)
            .order_by(db.examples.c.id, db.users.c.name, db.tasks.c.id, db.submissions.c.version)
        ).all()


def _annotation(payload: dict, annotator: str) -> Annotation:
    spans = tuple(Span(s["start"], s["end"], s["category"], s.get("explanation", "")) for s in payload["spans"])
    missing = tuple(MissingInfo(m["type"], m["passage"], tuple(m["sentences"]), m.get("note", "")) for m in payload["missing"])
    return Annotation(spans, missing, payload.get("corrected"), annotator)


def _example(ext_id: str, data: dict, annotator: str, subs: list, record_id: str, meta_extra: dict) -> Example:
    annotations: dict[int, Annotation] = {}
    preferences: list[Preference] = []
    for row in subs:
        payload = json.loads(row.payload)
        if row.kind == "annotate":
            annotations[row.response_index] = _annotation(payload, annotator)
        else:
            preferences.extend(Preference(j["a"], j["b"], j["outcome"], annotator) for j in payload["judgements"])
    responses = tuple(Response(t, annotations.get(i)) for i, t in enumerate(data["responses"]))
    passages = tuple(Passage(p["title"], tuple(p["sentences"])) for p in data["passages"])
    meta = {
        **(data.get("meta") or {}),
        "example_id": ext_id,
        "annotator": annotator,
        "submissions": [
            {"task": r.task_id, "kind": r.kind, "version": r.version, "record_id": r.id, "submitted_at": r.created_at} for r in subs
        ],
        **meta_extra,
    }
    return Example(record_id, data["prompt"], responses, passages, tuple(preferences), data.get("reference"), meta)


def build_examples(engine: Engine, *, all_versions: bool = False) -> list[Example]:
    rows = _rows(engine)
    groups: dict[tuple[int, str], list] = {}
    info: dict[int, tuple[str, dict]] = {}
    for r in rows:
        groups.setdefault((r.example_pk, r.annotator), []).append(r)
        if r.example_pk not in info:
            info[r.example_pk] = (r.ext_id, json.loads(r.data))
    out = []
    for (ex_pk, annotator), subs in groups.items():
        ext_id, data = info[ex_pk]
        if all_versions:
            for r in subs:
                rid = f"{ext_id}#{annotator}#task{r.task_id}v{r.version}"
                out.append(_example(ext_id, data, annotator, [r], rid, {"version": r.version}))
        else:
            latest: dict[int, object] = {}
            for r in subs:  # ordered by version: the last one wins
                latest[r.task_id] = r
            out.append(_example(ext_id, data, annotator, list(latest.values()), f"{ext_id}#{annotator}", {}))
    return out


def export(engine: Engine, out: str | Path, *, all_versions: bool = False) -> int:
    """Write the export atomically; returns the number of records."""
    examples = build_examples(engine, all_versions=all_versions)
    write_jsonl(out, examples)
    return len(examples)
