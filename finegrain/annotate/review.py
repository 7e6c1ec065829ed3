"""Review and adjudication: a reviewer sees every annotator's latest annotation of a response and
accepts, edits or rejects each of their spans (and may add spans, missing-information notes and a
correction) into one adjudicated version. Adjudications are append-only, one row per (task,
version), with optimistic locking on `base_version`; the latest one exports as a record marked
`meta.adjudicated`. The adjudicated annotation obeys the same rules as any other
(`finegrain.data.annotations.check_annotation`)."""

from __future__ import annotations

import json

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError

from finegrain.annotate import db
from finegrain.annotate.store import Conflict, NotFound, Stored, categories_json
from finegrain.annotate.validate import Invalid, TaskView, _int, _list, _only, _show, _str, annotate_payload
from finegrain.data.categories import DEFAULT_TAXONOMY, Taxonomy

REVIEW_ROLES = ("reviewer", "admin")
DECISIONS = ("accept", "edit", "reject")


def _task(conn, task_id: int):
    row = conn.execute(
        select(db.tasks, db.examples.c.ext_id, db.examples.c.data)
        .join(db.examples, db.examples.c.id == db.tasks.c.example_id)
        .where(db.tasks.c.id == task_id, db.tasks.c.kind == "annotate")
    ).first()
    if row is None:
        raise NotFound(f"task {task_id}: no span-annotation task with this id")
    return row


def _latest_by_annotator(conn, task_id: int) -> dict[str, dict]:
    """annotator -> {"version", "payload"}: each annotator's latest submission of the task."""
    rows = conn.execute(
        select(db.submissions.c.version, db.submissions.c.payload, db.users.c.name)
        .join(db.users, db.users.c.id == db.submissions.c.user_id)
        .where(db.submissions.c.task_id == task_id)
        .order_by(db.users.c.name, db.submissions.c.version)
    ).all()
    out: dict[str, dict] = {}
    for r in rows:
        out[r.name] = {"version": r.version, "payload": json.loads(r.payload)}
    return out


def _latest_adjudication(conn, task_id: int):
    return conn.execute(
        select(db.adjudications, db.users.c.name.label("reviewer"))
        .join(db.users, db.users.c.id == db.adjudications.c.reviewer_id)
        .where(db.adjudications.c.task_id == task_id)
        .order_by(db.adjudications.c.version.desc())
        .limit(1)
    ).first()


def review_queue(engine: Engine) -> list[dict]:
    """Span-annotation tasks with at least one submission: who annotated them, and whether (and in
    which version) they have been adjudicated. Tasks with most annotators first, then import order."""
    with db.read_tx(engine) as conn:
        rows = conn.execute(
            select(db.tasks.c.id, db.tasks.c.response_index, db.examples.c.ext_id, db.examples.c.data, db.users.c.name)
            .join(db.submissions, db.submissions.c.task_id == db.tasks.c.id)
            .join(db.users, db.users.c.id == db.submissions.c.user_id)
            .join(db.examples, db.examples.c.id == db.tasks.c.example_id)
            .where(db.tasks.c.kind == "annotate")
            .distinct()
        ).all()
        adjudicated = dict(
            conn.execute(select(db.adjudications.c.task_id, func.max(db.adjudications.c.version)).group_by(db.adjudications.c.task_id)).all()
        )
    tasks: dict[int, dict] = {}
    for r in rows:
        t = tasks.get(r.id)
        if t is None:
            prompt = json.loads(r.data)["prompt"]
            t = tasks[r.id] = {"id": r.id, "example_id": r.ext_id, "response_index": r.response_index,
                               "title": prompt if len(prompt) <= 80 else prompt[:79] + "…", "annotators": [],
                               "adjudicated": adjudicated.get(r.id, 0), "url": f"/review/{r.id}"}
        t["annotators"].append(r.name)
    out = sorted(tasks.values(), key=lambda t: (-len(t["annotators"]), t["id"]))
    for t in out:
        t["annotators"].sort()
    return out


def review_json(engine: Engine, task_id: int, csrf_token: str, taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> dict:
    """What the merge view shows: the response, every annotator's latest annotation, the latest
    adjudication (or null) and its version (0: none)."""
    with db.read_tx(engine) as conn:
        row = _task(conn, task_id)
        by = _latest_by_annotator(conn, task_id)
        adj = _latest_adjudication(conn, task_id)
    data = json.loads(row.data)
    return {
        "id": row.id,
        "example_id": row.ext_id,
        "prompt": data["prompt"],
        "passages": data["passages"],
        "response": {"index": row.response_index, "text": data["responses"][row.response_index]},
        "categories": categories_json(taxonomy),
        "missing_kinds": list(taxonomy.missing_kinds),
        "annotations": [{"annotator": name, "version": v["version"], **v["payload"]} for name, v in sorted(by.items())],
        "adjudication": None if adj is None else {**json.loads(adj.payload), "reviewer": adj.reviewer},
        "version": 0 if adj is None else adj.version,
        "csrf_token": csrf_token,
    }


def _decided_spans(body: dict, by: dict[str, dict]) -> list[dict]:
    """The adjudicated spans from the decisions: every annotator span decided exactly once; accepted
    and edited spans kept (identical ones merged, their sources pooled), rejected ones dropped."""
    decisions = _list(body, "decisions", "")
    seen: dict[tuple[str, int], int] = {}
    kept: list[dict] = []
    for i, d in enumerate(decisions):
        w = f"decisions[{i}]."
        if not isinstance(d, dict):
            raise Invalid(f"decisions[{i}]: expected an object, got {_show(d)}")
        _only(d, {"annotator", "index", "decision", "span"}, w)
        who = _str(d, "annotator", w, limit=64)
        index = _int(d, "index", w)
        decision = _str(d, "decision", w, limit=16)
        if who not in by:
            raise Invalid(f"{w}annotator: {who!r} has not annotated this task (annotators: {', '.join(sorted(by))})")
        spans = by[who]["payload"]["spans"]
        if not 0 <= index < len(spans):
            raise Invalid(f"{w}index: {who} marked {len(spans)} span(s); there is no span {index}")
        if decision not in DECISIONS:
            raise Invalid(f"{w}decision: {decision!r} is not one of {', '.join(DECISIONS)}")
        if (who, index) in seen:
            raise Invalid(f"{w}index: span {index} of {who} was already decided in decisions[{seen[(who, index)]}]")
        seen[(who, index)] = i
        if decision == "reject":
            if "span" in d:
                raise Invalid(f"{w}span: a rejected span takes no replacement")
            continue
        if decision == "edit":
            span = d.get("span")
            if not isinstance(span, dict):
                raise Invalid(f"{w}span: an edit needs the edited span, got {_show(span)}")
        else:
            if "span" in d:
                raise Invalid(f"{w}span: only an edit carries a span (accept keeps {who}'s as marked)")
            span = spans[index]
        kept.append({**{k: span.get(k) for k in ("start", "end", "category", "text", "explanation") if k in span},
                     "_source": who, "_decision": decision})
    undecided = [f"{who}[{j}]" for who, v in sorted(by.items()) for j in range(len(v["payload"]["spans"])) if (who, j) not in seen]
    if undecided:
        raise Invalid(f"decisions: {len(undecided)} span(s) not decided (accept, edit or reject each): {', '.join(undecided[:10])}")
    return kept


def adjudicate(engine: Engine, task_id: int, reviewer_id: int, body: dict, taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> Stored:
    """Store a new adjudicated version of a task. Raises Invalid, NotFound or Conflict."""
    if not isinstance(body, dict):
        raise Invalid(f"body: expected a JSON object, got {type(body).__name__}")
    _only(body, {"decisions", "added", "missing", "corrected", "no_error", "base_version"}, "")
    base = _int(body, "base_version", "")
    if not 0 <= base < 2**31:
        raise Invalid(f"base_version: must be between 0 and {2**31 - 1}, got {_show(base)}")
    try:
        with db.write_tx(engine) as conn:
            row = _task(conn, task_id)
            by = _latest_by_annotator(conn, task_id)
            if not by:
                raise Invalid(f"task {task_id}: nobody has annotated it yet; nothing to adjudicate")
            kept = _decided_spans(body, by)
            added = _list(body, "added", "")
            merged: dict[tuple, dict] = {}
            for s in kept + [{**a, "_source": None, "_decision": "add"} if isinstance(a, dict) else a for a in added]:
                if not isinstance(s, dict):
                    raise Invalid(f"added: expected span objects, got {_show(s)}")
                key = (s.get("start"), s.get("end"), s.get("category"))
                if key in merged:  # the same span from several annotators: one adjudicated span
                    if s["_source"]:
                        merged[key]["_sources"].append(s["_source"])
                    continue
                merged[key] = {**s, "_sources": [s["_source"]] if s["_source"] else []}
            spans = sorted(merged.values(), key=lambda s: (s.get("start") or 0, s.get("end") or 0))
            data = json.loads(row.data)
            view = TaskView(row.id, "annotate", tuple(data["responses"]),
                            tuple((p["title"], tuple(p["sentences"])) for p in data["passages"]), row.response_index)
            checked = annotate_payload(
                {"response_index": row.response_index,
                 "spans": [{k: v for k, v in s.items() if not k.startswith("_")} for s in spans],
                 "missing": body.get("missing", []), "corrected": body.get("corrected"), "no_error": body.get("no_error", False)},
                view, taxonomy,
            )
            for out, s in zip(checked["spans"], spans):
                out["sources"], out["decision"] = s["_sources"], s["_decision"]
            checked["decisions"] = body.get("decisions", [])
            checked["based_on"] = {who: v["version"] for who, v in by.items()}
            latest = _latest_adjudication(conn, task_id)
            current = 0 if latest is None else latest.version
            if base != current:
                raise Conflict(f"base_version: {base}, but the latest adjudication of task {task_id} is version {current}; reload")
            new_id = conn.execute(db.adjudications.insert().values(
                task_id=task_id, reviewer_id=reviewer_id, version=current + 1,
                payload=json.dumps(checked, ensure_ascii=False), created_at=db.now())).inserted_primary_key[0]
            return Stored(current + 1, new_id)
    except IntegrityError:
        raise Conflict(f"base_version: {base} was superseded by a concurrent adjudication of task {task_id}; reload") from None


def latest_adjudications(engine: Engine) -> list:
    """The latest adjudication of every task, with its task, example and reviewer."""
    with db.read_tx(engine) as conn:
        newest = select(db.adjudications.c.task_id, func.max(db.adjudications.c.version).label("v")).group_by(
            db.adjudications.c.task_id).subquery()
        return conn.execute(
            select(db.adjudications, db.users.c.name.label("reviewer"), db.tasks.c.response_index,
                   db.examples.c.id.label("example_pk"), db.examples.c.ext_id, db.examples.c.data)
            .join(newest, (newest.c.task_id == db.adjudications.c.task_id) & (newest.c.v == db.adjudications.c.version))
            .join(db.users, db.users.c.id == db.adjudications.c.reviewer_id)
            .join(db.tasks, db.tasks.c.id == db.adjudications.c.task_id)
            .join(db.examples, db.examples.c.id == db.tasks.c.example_id)
            .order_by(db.examples.c.id, db.tasks.c.id)
        ).all()
