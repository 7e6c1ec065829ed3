"""Examples, tasks, assignments, and the append-only store of submissions and drafts.

A submission is one row per (task, annotator, version), inserted in one transaction and never
updated. Optimistic locking: the body names the version it was based on; a stale base is a
conflict (409). Idempotency: (annotator, idempotency_key) is unique; the same key again returns the
first answer and writes nothing, so a client may retry any request whose answer it did not get.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, and_, func, select
from sqlalchemy.exc import IntegrityError

from finegrain.annotate import db
from finegrain.annotate.validate import Invalid, TaskView, annotate_payload, compare_payload, envelope
from finegrain.config import ConfigError
from finegrain.data.categories import DEFAULT_TAXONOMY, Taxonomy
from finegrain.data.records import Example

TASK_KINDS = ("annotate", "compare")


class NotFound(LookupError):
    """No such task for this user (404: an annotator cannot tell others' tasks from absent ones)."""


class Conflict(ValueError):
    """Stale base_version, or an idempotency key reused for another body (409)."""


@dataclass(frozen=True)
class Stored:
    version: int
    record_id: int


# --- import and assignment ------------------------------------------------------------------


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def example_data(ex: Example) -> dict:
    """What the app keeps of an example. Response texts are NFC-normalised once, here, and never
    change afterwards: every stored offset points into these strings."""
    return {
        "prompt": _nfc(ex.prompt),
        "passages": [{"title": _nfc(p.title), "sentences": [_nfc(s) for s in p.sentences]} for p in ex.passages],
        "responses": [_nfc(r.text) for r in ex.responses],
        "reference": ex.reference,
        "meta": ex.meta,
    }


SOURCE_ROLE = "source"  # the accounts that hold an imported file's own feedback; they cannot log in
SOURCE_DEFAULT = "source"  # the account for feedback that names no annotator (QA-Feedback's)


@dataclass
class ImportReport:
    added: int = 0  # examples
    tasks: int = 0
    duplicates: int = 0  # examples whose id was already in the database: skipped, feedback and all
    no_responses: int = 0  # examples without responses: nothing to annotate, skipped
    assignments: int = 0
    kept_annotations: int = 0  # the file's own annotations, stored as submissions of source accounts
    kept_preferences: int = 0
    dropped: list[str] = field(default_factory=list)  # feedback that could not be kept, and why
    not_kept: int = 0  # annotations + preferences left out because keep_feedback was off

    def lines(self) -> list[str]:
        out = [f"imported {self.added} examples as {self.tasks} tasks; {self.assignments} new assignments"]
        if self.duplicates:
            out.append(f"skipped {self.duplicates} examples already in the database (same id), with their feedback")
        if self.no_responses:
            out.append(f"skipped {self.no_responses} examples without responses")
        if self.kept_annotations or self.kept_preferences:
            out.append(
                f"kept the file's own feedback: {self.kept_annotations} annotations and {self.kept_preferences} preferences, "
                "as submissions of read-only source accounts (see `annotate users`)"
            )
        if self.not_kept:
            out.append(f"did not keep the file's own feedback ({self.not_kept} annotations and preferences): --no-feedback")
        out.extend(f"could not keep: {d}" for d in self.dropped)
        return out


def _source_user(conn: Connection, annotator: str | None, cache: dict[str, int]) -> int:
    """The read-only account holding imported feedback of `annotator` ('source' when unnamed)."""
    import re
    import secrets

    name = SOURCE_DEFAULT if not annotator else "source." + re.sub(r"[^A-Za-z0-9_.-]", "_", annotator)[:57]
    if name not in cache:
        row = conn.execute(select(db.users.c.id, db.users.c.role).where(db.users.c.name == name)).first()
        if row is None:
            # a random hash that no token has, revoked from the start: nobody can log in as a source
            dead = hashlib.sha256(secrets.token_bytes(32)).hexdigest()
            uid = conn.execute(
                db.users.insert().values(name=name, role=SOURCE_ROLE, token_hash=dead, created_at=db.now(), revoked_at=db.now())
            ).inserted_primary_key[0]
        elif row.role != SOURCE_ROLE:
            raise ConfigError(f"import: feedback by {annotator!r} would be kept as user {name!r}, which is a {row.role} account; "
                              "rename that user or import with --no-feedback")
        else:
            uid = row.id
        cache[name] = uid
    return cache[name]


def _keep_feedback(conn: Connection, ex: Example, ex_pk: int, data: dict, tasks: dict, report: ImportReport, users: dict) -> None:
    """Store the example's own annotations and preferences as version-1 submissions of source accounts."""
    now = db.now()

    def add(task_id: int, user_id: int, payload: dict) -> None:
        body = json.dumps(payload, ensure_ascii=False, sort_keys=True)
        conn.execute(db.submissions.insert().values(
            task_id=task_id, user_id=user_id, version=1, idempotency_key=f"import:{ex_pk}:{task_id}",
            body_hash=hashlib.sha256(body.encode("utf-8")).hexdigest(), payload=body, created_at=now))

    for i, r in ex.annotated:
        a = r.annotation
        if data["responses"][i] != r.text and (a.spans or a.corrected):
            report.dropped.append(f"{ex.id} response {i}: its text changes under Unicode NFC normalisation, so its span offsets would not hold")
            continue
        key = ("annotate", i)
        if key not in tasks:
            tasks[key] = conn.execute(db.tasks.insert().values(example_id=ex_pk, kind="annotate", response_index=i, created_at=now)).inserted_primary_key[0]
            report.tasks += 1
        text = data["responses"][i]
        add(tasks[key], _source_user(conn, a.annotator, users), {
            "response_index": i,
            "spans": [{"start": s.start, "end": s.end, "category": s.category, "text": text[s.start:s.end], "explanation": s.explanation} for s in a.spans],
            "missing": [{"type": m.kind, "passage": m.passage, "sentences": list(m.sentences), "note": m.note} for m in a.missing],
            "corrected": a.corrected,
            "no_error": not a.spans and not a.missing,
        })
        report.kept_annotations += 1
    by_annotator: dict[str | None, list] = {}
    for p in ex.preferences:
        by_annotator.setdefault(p.annotator, []).append(p)
    for annotator, prefs in by_annotator.items():
        key = ("compare", None)
        if key not in tasks:
            tasks[key] = conn.execute(db.tasks.insert().values(example_id=ex_pk, kind="compare", response_index=None, created_at=now)).inserted_primary_key[0]
            report.tasks += 1
        pairs = [(min(p.a, p.b), max(p.a, p.b), p.outcome if p.a < p.b else {0: 0, 1: 2, 2: 1}[p.outcome]) for p in prefs]
        add(tasks[key], _source_user(conn, annotator, users), {
            "judgements": [{"a": a, "b": b, "outcome": o, "shown_left": a} for a, b, o in pairs],
            "shown": [{"a": a, "b": b, "left": a, "right": b} for a, b, _ in pairs],
        })
        report.kept_preferences += len(prefs)


def import_examples(engine: Engine, examples: list[Example], *, annotate: str = "first", compare: bool = True,
                    keep_feedback: bool = True) -> ImportReport:
    """Add examples and their tasks; an example id already present is skipped (and counted).
    `annotate`: which responses get a span-annotation task: "first" (QA-Feedback's practice), "all"
    or "none". `keep_feedback`: the file's own annotations and preferences are stored as submissions
    of read-only source accounts (so they export, and agreement compares annotators with them).
    One transaction: all or nothing."""
    if annotate not in ("first", "all", "none"):
        raise ConfigError(f"--annotate: {annotate!r} is not allowed; choose one of 'first', 'all', 'none'")
    report = ImportReport()
    users: dict[str, int] = {}
    with db.write_tx(engine) as conn:
        have = set(conn.execute(select(db.examples.c.ext_id)).scalars())
        for ex in examples:
            if ex.id in have:
                report.duplicates += 1
                continue
            if not ex.responses:
                report.no_responses += 1
                continue
            have.add(ex.id)
            now = db.now()
            data = example_data(ex)
            ex_pk = conn.execute(
                db.examples.insert().values(ext_id=ex.id, data=json.dumps(data, ensure_ascii=False), created_at=now)
            ).inserted_primary_key[0]
            report.added += 1
            tasks: dict[tuple, int] = {}
            indices = {"first": [0], "all": list(range(len(ex.responses))), "none": []}[annotate]
            for i in indices:
                tasks[("annotate", i)] = conn.execute(
                    db.tasks.insert().values(example_id=ex_pk, kind="annotate", response_index=i, created_at=now)
                ).inserted_primary_key[0]
                report.tasks += 1
            if compare and len(ex.responses) >= 2:
                tasks[("compare", None)] = conn.execute(
                    db.tasks.insert().values(example_id=ex_pk, kind="compare", response_index=None, created_at=now)
                ).inserted_primary_key[0]
                report.tasks += 1
            if keep_feedback:
                _keep_feedback(conn, ex, ex_pk, data, tasks, report, users)
            else:
                report.not_kept += len(ex.annotated) + len(ex.preferences)
    return report


def assign(engine: Engine, annotators: list[str] | None = None, per_task: int | None = None) -> int:
    """Assign tasks to annotators; returns the number of new assignments. Default: every task to every
    active annotator. With `per_task`, each task goes to that many of them, the least loaded first
    (ties broken by name), counting assignments it already has."""
    with db.write_tx(engine) as conn:
        q = select(db.users.c.id, db.users.c.name).where(db.users.c.revoked_at.is_(None), db.users.c.role == "annotator")
        users = {r.name: r.id for r in conn.execute(q)}
        if annotators:
            unknown = [a for a in annotators if a not in users]
            if unknown:
                raise ConfigError(f"--annotators: no active annotator named {unknown[0]!r}; create one with `finegrain annotate token create NAME`")
            users = {a: users[a] for a in annotators}
        if not users:
            return 0
        if per_task is not None and not 1 <= per_task <= len(users):
            raise ConfigError(f"--per-task: {per_task} must be between 1 and the number of annotators ({len(users)})")
        existing: dict[int, set[int]] = {}
        for r in conn.execute(select(db.assignments.c.task_id, db.assignments.c.user_id)):
            existing.setdefault(r.task_id, set()).add(r.user_id)
        load = {uid: 0 for uid in users.values()}
        for holders in existing.values():
            for uid in holders & load.keys():
                load[uid] += 1
        made = 0
        # tasks of one example go to the same annotators, so an export record holds both kinds
        task_rows = conn.execute(select(db.tasks.c.id, db.tasks.c.example_id).order_by(db.tasks.c.example_id, db.tasks.c.id)).all()
        by_example: dict[int, list[int]] = {}
        for r in task_rows:
            by_example.setdefault(r.example_id, []).append(r.id)
        for task_ids in by_example.values():
            holders = set().union(*(existing.get(t, set()) for t in task_ids))
            if per_task is None:
                chosen = set(users.values())
            else:
                need = per_task - len(holders & load.keys())
                pool = sorted((uid for uid in users.values() if uid not in holders), key=lambda u: (load[u], u))
                chosen = holders | set(pool[: max(0, need)])
            for uid in chosen:
                for t in task_ids:
                    if uid not in existing.get(t, set()):
                        conn.execute(db.assignments.insert().values(task_id=t, user_id=uid, created_at=db.now()))
                        existing.setdefault(t, set()).add(uid)
                        made += 1
                if uid in load and uid not in holders:
                    load[uid] += 1
    return made


# --- reading tasks --------------------------------------------------------------------------


def _task_row(conn: Connection, task_id: int, user_id: int):
    row = conn.execute(
        select(db.tasks, db.examples.c.ext_id, db.examples.c.data)
        .join(db.examples, db.examples.c.id == db.tasks.c.example_id)
        .join(db.assignments, and_(db.assignments.c.task_id == db.tasks.c.id, db.assignments.c.user_id == user_id))
        .where(db.tasks.c.id == task_id)
    ).first()
    if row is None:
        raise NotFound(f"task {task_id}: no such task in your queue")
    return row


def task_view(row) -> TaskView:
    data = json.loads(row.data)
    passages = tuple((p["title"], tuple(p["sentences"])) for p in data["passages"])
    return TaskView(row.id, row.kind, tuple(data["responses"]), passages, row.response_index)


def _latest(conn: Connection, task_id: int, user_id: int):
    return conn.execute(
        select(db.submissions)
        .where(db.submissions.c.task_id == task_id, db.submissions.c.user_id == user_id)
        .order_by(db.submissions.c.version.desc())
        .limit(1)
    ).first()


def task_json(engine: Engine, task_id: int, user_id: int, user_name: str, csrf_token: str, taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> dict:
    """The task as the page and `GET /api/tasks/{id}` see it."""
    from finegrain.annotate.validate import shown_pairs

    with db.read_tx(engine) as conn:
        row = _task_row(conn, task_id, user_id)
        latest = _latest(conn, task_id, user_id)
        draft = conn.execute(
            select(db.drafts).where(db.drafts.c.task_id == task_id, db.drafts.c.user_id == user_id)
        ).first()
    data = json.loads(row.data)
    version = latest.version if latest else 0
    if row.kind == "annotate":
        responses = [{"index": row.response_index, "text": data["responses"][row.response_index]}]
    else:
        responses = [{"index": i, "text": t} for i, t in enumerate(data["responses"])]
    out = {
        "id": row.id,
        "kind": row.kind,
        "example_id": row.ext_id,
        "prompt": data["prompt"],
        "passages": data["passages"],
        "responses": responses,
        "categories": categories_json(taxonomy),
        "missing_kinds": list(taxonomy.missing_kinds),
        "csrf_token": csrf_token,
        "latest": None,
        "latest_is_draft": False,
        "version": version,
    }
    # a draft saved on top of the latest version is newer than it; an older one was superseded
    if draft is not None and draft.base_version >= version:
        out["latest"], out["latest_is_draft"] = json.loads(draft.payload), True
    elif latest is not None:
        out["latest"] = json.loads(latest.payload)
    if row.kind == "compare":
        out["pairs"] = shown_pairs(row.id, user_name, len(data["responses"]))
    return out


# Colours for up to nine categories (colour-blind-safe Okabe-Ito palette, then two greys).
_COLOURS = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#999999", "#666666")


def categories_json(taxonomy: Taxonomy) -> list[dict]:
    cats = taxonomy.span_categories[:9]
    return [
        {"name": c, "rm_category": taxonomy.span_to_rm[c], "key": str(i + 1), "color": _COLOURS[i]} for i, c in enumerate(cats)
    ]


QUEUE_STATUSES = ("todo", "draft", "done")
PER_PAGE = 50


def _title(prompt: str, kind: str, response_index: int | None, k: int) -> str:
    """A row's title: the prompt, shortened, and what the task is about, so that the annotate and
    compare rows of one prompt read differently."""
    what = f"response {response_index + 1} of {k}" if kind == "annotate" else f"compare {k} responses"
    head = prompt if len(prompt) <= 80 else prompt[:79] + "…"
    return f"{head} — {what}"


def queue_page(engine: Engine, user_id: int, *, status: str | None = None, kind: str | None = None, text: str = "",
               page: int = 1, per_page: int = PER_PAGE) -> dict:
    """One page of the user's queue, filtered by status, kind and a case-insensitive text match on
    the title or example id; with the counts over the whole queue (progress) and over the filter."""
    tasks = queue(engine, user_id)
    needle = text.casefold().strip()
    chosen = [
        t for t in tasks
        if (status is None or t["status"] == status) and (kind is None or t["kind"] == kind)
        and (not needle or needle in t["title"].casefold() or needle in t["example_id"].casefold())
    ]
    pages = max(1, -(-len(chosen) // per_page))
    page = min(max(1, page), pages)
    counts = {s: sum(t["status"] == s for t in tasks) for s in QUEUE_STATUSES}
    return {
        "tasks": chosen[(page - 1) * per_page : page * per_page],
        "matching": len(chosen),
        "page": page,
        "pages": pages,
        "per_page": per_page,
        "filter": {"status": status, "kind": kind, "q": text},
        "counts": counts,
        "progress": {"done": counts["done"], "total": len(tasks)},
        "next_url": next((t["url"] for s in ("draft", "todo") for t in tasks if t["status"] == s), None),
    }


def queue(engine: Engine, user_id: int) -> list[dict]:
    """The user's tasks with status todo | draft | done: by `annotate suggest` priority when set,
    else in import order."""
    with db.read_tx(engine) as conn:
        rows = conn.execute(
            select(db.tasks.c.id, db.tasks.c.kind, db.tasks.c.response_index, db.examples.c.data, db.examples.c.ext_id)
            .join(db.assignments, and_(db.assignments.c.task_id == db.tasks.c.id, db.assignments.c.user_id == user_id))
            .join(db.examples, db.examples.c.id == db.tasks.c.example_id)
            # `annotate suggest` priorities first (most uncertain first), then import order
            .order_by(db.tasks.c.priority.is_(None), db.tasks.c.priority.desc(), db.tasks.c.example_id, db.tasks.c.id)
        ).all()
        done = set(
            conn.execute(select(db.submissions.c.task_id).where(db.submissions.c.user_id == user_id).distinct()).scalars()
        )
        drafted = set(conn.execute(select(db.drafts.c.task_id).where(db.drafts.c.user_id == user_id)).scalars())
    out = []
    for r in rows:
        data = json.loads(r.data)
        title = _title(data["prompt"], r.kind, r.response_index, len(data["responses"]))
        status = "done" if r.id in done else "draft" if r.id in drafted else "todo"
        out.append({"id": r.id, "kind": r.kind, "title": title, "example_id": r.ext_id, "status": status, "url": f"/task/{r.id}"})
    return out


def progress(engine: Engine) -> dict:
    """Per-annotator and overall progress: tasks assigned and tasks with at least one submission."""
    with db.read_tx(engine) as conn:
        assigned = dict(
            conn.execute(select(db.assignments.c.user_id, func.count()).group_by(db.assignments.c.user_id)).all()
        )
        done_q = select(db.submissions.c.user_id, func.count(func.distinct(db.submissions.c.task_id))).group_by(
            db.submissions.c.user_id
        )
        done = dict(conn.execute(done_q).all())
        records = conn.execute(select(func.count()).select_from(db.submissions)).scalar_one()
        users = conn.execute(select(db.users).order_by(db.users.c.name)).all()
        n_tasks = conn.execute(select(func.count()).select_from(db.tasks)).scalar_one()
    # admins and reviewers do not annotate: they are listed as staff, not counted as annotators
    rows = [
        {"name": u.name, "role": u.role, "revoked": u.revoked_at is not None, "done": done.get(u.id, 0), "total": assigned.get(u.id, 0)}
        for u in users
        if u.role == "annotator"
    ]
    staff = [{"name": u.name, "role": u.role, "revoked": u.revoked_at is not None} for u in users if u.role != "annotator"]
    return {
        "annotators": rows,
        "staff": staff,
        "overall": {"done": sum(r["done"] for r in rows), "total": sum(r["total"] for r in rows)},
        "tasks": n_tasks,
        "records": records,
    }


# --- writing --------------------------------------------------------------------------------


def _body_hash(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def _payload(conn: Connection, body: dict, task_id: int, user_id: int, user_name: str, taxonomy: Taxonomy, *, partial: bool):
    view = task_view(_task_row(conn, task_id, user_id))
    if view.kind == "annotate":
        return annotate_payload(body, view, taxonomy, partial=partial)
    return compare_payload(body, view, user_name, partial=partial)


def submit(engine: Engine, task_id: int, user_id: int, user_name: str, body: dict, taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> Stored:
    """Store a new version of this user's annotation of this task, or return the answer already given
    for this idempotency key. Raises Invalid, NotFound or Conflict."""
    key, base = envelope(body)
    body_hash = _body_hash(body)
    try:
        with db.write_tx(engine) as conn:
            found = _by_key(conn, user_id, key)
            if found is not None:
                return _replay(found, task_id, body_hash, key)
            payload = _payload(conn, body, task_id, user_id, user_name, taxonomy, partial=False)
            latest = _latest(conn, task_id, user_id)
            current = latest.version if latest else 0
            if base != current:
                raise Conflict(
                    f"base_version: {base}, but the latest version of your annotation of task {task_id} is {current}; "
                    "reload the task to see it"
                )
            record_id = conn.execute(
                db.submissions.insert().values(
                    task_id=task_id,
                    user_id=user_id,
                    version=current + 1,
                    idempotency_key=key,
                    body_hash=body_hash,
                    payload=json.dumps(payload, ensure_ascii=False),
                    created_at=db.now(),
                )
            ).inserted_primary_key[0]
            conn.execute(db.drafts.delete().where(db.drafts.c.task_id == task_id, db.drafts.c.user_id == user_id))
            return Stored(current + 1, record_id)
    except IntegrityError:
        # a concurrent request with the same key (or version) won the race: answer as it did
        with db.read_tx(engine) as conn:
            found = _by_key(conn, user_id, key)
        if found is not None:
            return _replay(found, task_id, body_hash, key)
        raise Conflict(f"base_version: {base} was superseded by a concurrent submission to task {task_id}; reload the task") from None


def _by_key(conn: Connection, user_id: int, key: str):
    return conn.execute(
        select(db.submissions).where(db.submissions.c.user_id == user_id, db.submissions.c.idempotency_key == key)
    ).first()


def _replay(found, task_id: int, body_hash: str, key: str) -> Stored:
    if found.task_id != task_id or found.body_hash != body_hash:
        raise Conflict(f"idempotency_key: {key!r} was already used for a different submission (task {found.task_id})")
    return Stored(found.version, found.id)


def save_draft(engine: Engine, task_id: int, user_id: int, user_name: str, body: dict, taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> None:
    """Keep the user's work in progress (last write wins). A draft based on an older version than the
    latest submission is refused, so a late draft request never hides submitted work."""
    try:
        _write_draft(engine, task_id, user_id, user_name, body, taxonomy)
    except IntegrityError:
        # two drafts of one (task, user) inserted at once (PostgreSQL has no process lock): the
        # other one made the row; last write wins, so write again, as an update this time
        _write_draft(engine, task_id, user_id, user_name, body, taxonomy)


def _write_draft(engine: Engine, task_id: int, user_id: int, user_name: str, body: dict, taxonomy: Taxonomy) -> None:
    _key, base = envelope(body)
    with db.write_tx(engine) as conn:
        payload = _payload(conn, body, task_id, user_id, user_name, taxonomy, partial=True)
        latest = _latest(conn, task_id, user_id)
        current = latest.version if latest else 0
        if base < current:
            raise Conflict(f"base_version: {base}, but version {current} was submitted since; this draft is stale")
        values = {"base_version": base, "payload": json.dumps(payload, ensure_ascii=False), "updated_at": db.now()}
        where = and_(db.drafts.c.task_id == task_id, db.drafts.c.user_id == user_id)
        if conn.execute(select(db.drafts.c.task_id).where(where)).first() is None:
            conn.execute(db.drafts.insert().values(task_id=task_id, user_id=user_id, **values))
        else:
            conn.execute(db.drafts.update().where(where).values(**values))


__all__ = ["Conflict", "Invalid", "NotFound", "Stored", "assign", "import_examples", "queue", "save_draft", "submit", "task_json"]
