"""`finegrain annotate export`: submissions as finegrain JSONL, one record per (example, annotator).

A record holds the example's prompt, passages and all K responses; the responses this annotator
annotated carry their annotation (no spans = "no error"), and their pairwise judgements become
`preferences`. By default the latest version of each (task, annotator) is used; `--all-versions`
writes one record per submitted version instead, with the version in `meta`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, select

from finegrain.annotate import db
from finegrain.config import ConfigError
from finegrain.data.categories import DEFAULT_TAXONOMY, Taxonomy
from finegrain.data.jsonl import to_jsonl_line
from finegrain.data.problems import Collector
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


def build_examples(engine: Engine, *, all_versions: bool = False, taxonomy: Taxonomy = DEFAULT_TAXONOMY,
                   skipped: list[str] | None = None) -> list[Example]:
    """One record per (example, annotator), from the latest (or every) version of their submissions.
    A span annotation that today's rules refuse (stored by an older app) is left out, and named in
    `skipped` when given."""
    rows = _rows(engine)
    groups: dict[tuple[int, str], list] = {}
    info: dict[int, tuple[str, dict]] = {}
    for r in rows:
        if r.example_pk not in info:
            info[r.example_pk] = (r.ext_id, json.loads(r.data))
        if r.kind == "annotate":
            problem = _payload_problem(r, info[r.example_pk][1], taxonomy)
            if problem is not None:
                if skipped is not None:
                    skipped.append(f"{r.ext_id} task {r.task_id} by {r.annotator}, version {r.version}: {problem}")
                continue
        groups.setdefault((r.example_pk, r.annotator), []).append(r)
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


@dataclass
class ExportResult:
    records: int
    skipped: list[str]  # submissions left out, and why


def check_destination(out: str | Path, *, force: bool) -> Path:
    """`out` may be written: a new file, or with `force` an existing regular file. Never a symbolic
    link (not followed, not replaced), a device, a FIFO or a folder."""
    path = Path(out)
    if path.is_symlink():
        raise ConfigError(f"--out {out}: is a symbolic link; refusing to write through or over it (give the real path)")
    if path.exists():
        if path.is_dir():
            raise ConfigError(f"--out {out}: is a directory; give a file name, e.g. {path / 'feedback.jsonl'}")
        if not path.is_file():
            raise ConfigError(f"--out {out}: is not a regular file (a device, FIFO or socket); refusing to write to it")
        if not force:
            raise ConfigError(f"--out {out}: already exists; choose a new file, or pass --force to replace it")
    if not path.parent.is_dir():
        raise ConfigError(f"--out {out}: folder {path.parent} does not exist")
    return path


def write_new_file(out: str | Path, data: bytes, *, force: bool) -> None:
    """Write atomically (finegrain.io). Without `force` the file is only ever created, never
    replaced, even if the name appeared meanwhile; with it, a regular file (re-checked just
    before the move) is replaced, and nothing else."""
    from finegrain.io import atomic_write_bytes

    path = check_destination(out, force=force)
    if force:
        check_destination(path, force=True)
        atomic_write_bytes(path, data)
        return
    try:
        atomic_write_bytes(path, data, clobber=False)
    except FileExistsError:
        raise ConfigError(f"--out {out}: already exists; choose a new file, or pass --force to replace it") from None


def export(engine: Engine, out: str | Path, *, all_versions: bool = False, force: bool = False,
           taxonomy: Taxonomy = DEFAULT_TAXONOMY, adjudicated: str = "with") -> ExportResult:
    """Write the export atomically to a new file (or, with `force`, over a regular file); returns the
    number of records and the submissions left out because today's rules refuse them (made by an
    older version of the app, e.g. an empty annotation without an explicit no_error)."""
    check_destination(out, force=force)
    examples, skipped = build_checked(engine, all_versions=all_versions, taxonomy=taxonomy, adjudicated=adjudicated)
    write_new_file(out, "".join(to_jsonl_line(ex) for ex in examples).encode("utf-8"), force=force)
    return ExportResult(len(examples), skipped)


def _payload_problem(row, data: dict, taxonomy: Taxonomy) -> str | None:
    """Why today's rules refuse a stored span annotation (None: they accept it)."""
    from finegrain.data.annotations import check_annotation
    from finegrain.data.records import MissingInfo, Passage, Span

    p = json.loads(row.payload)
    c = Collector("export")
    spans = [(Span(s["start"], s["end"], s["category"], s.get("explanation", "")), s.get("text")) for s in p["spans"]]
    missing = [MissingInfo(m["type"], m["passage"], tuple(m["sentences"]), m.get("note", "")) for m in p["missing"]]
    passages = tuple(Passage(x["title"], tuple(x["sentences"])) for x in data["passages"])
    if check_annotation(c, spans, missing, bool(p.get("no_error")), data["responses"][row.response_index], passages, taxonomy):
        return None
    return f"{c.problems[0].field}: {c.problems[0].message}"


def adjudicated_examples(engine: Engine) -> list[Example]:
    """One record per example with an adjudicated response: id `<example id>#adjudicated`, the
    latest adjudication of each of its tasks as the annotation (annotator: the reviewer), and
    `meta.adjudicated: true` with the reviewer, the version and the annotator versions it merged."""
    from finegrain.annotate.review import latest_adjudications

    by_example: dict[int, list] = {}
    for r in latest_adjudications(engine):
        by_example.setdefault(r.example_pk, []).append(r)
    out = []
    for rows in by_example.values():
        data = json.loads(rows[0].data)
        annotations = {r.response_index: _annotation(json.loads(r.payload), r.reviewer) for r in rows}
        responses = tuple(Response(t, annotations.get(i)) for i, t in enumerate(data["responses"]))
        passages = tuple(Passage(p["title"], tuple(p["sentences"])) for p in data["passages"])
        meta = {
            **(data.get("meta") or {}),
            "example_id": rows[0].ext_id,
            "adjudicated": True,
            "adjudications": [
                {"task": r.task_id, "version": r.version, "reviewer": r.reviewer, "record_id": r.id, "adjudicated_at": r.created_at,
                 "based_on": json.loads(r.payload).get("based_on", {})}
                for r in rows
            ],
        }
        out.append(Example(f"{rows[0].ext_id}#adjudicated", data["prompt"], responses, passages, (), data.get("reference"), meta))
    return out


def build_checked(engine: Engine, *, all_versions: bool = False, taxonomy: Taxonomy = DEFAULT_TAXONOMY,
                  adjudicated: str = "with") -> tuple[list[Example], list[str]]:
    """build_examples (and adjudicated_examples: `adjudicated` "with", "only" or "without"), each
    record checked by the rules `finegrain data check` applies; a record that fails is left out and
    named, so the file always passes the check."""
    from finegrain.data.jsonl import example_to_json, parse_example

    good, skipped = [], []
    records = [] if adjudicated == "only" else build_examples(engine, all_versions=all_versions, taxonomy=taxonomy, skipped=skipped)
    if adjudicated != "without":
        records += adjudicated_examples(engine)
    for ex in records:
        c = Collector("export")
        if parse_example(c, example_to_json(ex), taxonomy) is None:
            subs = ", ".join(f"task {s['task']} v{s['version']}" for s in ex.meta.get("submissions", []))
            skipped.append(f"{ex.id} ({subs}): {c.problems[0].field}: {c.problems[0].message}")
        else:
            good.append(ex)
    return good, skipped
