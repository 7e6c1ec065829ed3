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
from dataclasses import dataclass

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


def import_examples(engine: Engine, examples: list[Example], *, annotate: str = "first", compare: bool = True) -> tuple[int, int]:
    """Add examples and their tasks; an example id already present is skipped. `annotate`: which
    responses get a span-annotation task: "first" (QA-Feedback's practice), "all" or "none".
    Returns (examples added, tasks added). One transaction: all or nothing."""
    if annotate not in ("first", "all", "none"):
        raise ConfigError(f"--annotate: {annotate!r} is not allowed; choose one of 'first', 'all', 'none'")
    added = n_tasks = 0
    with db.write_tx(engine) as conn:
        have = set(conn.execute(select(db.examples.c.ext_id)).scalars())
        for ex in examples:
            if ex.id in have or not ex.responses:
                continue
            have.add(ex.id)
            now = db.now()
            ex_pk = conn.execute(
                db.examples.insert().values(ext_id=ex.id, data=json.dumps(example_data(ex), ensure_ascii=False), created_at=now)
            ).inserted_primary_key[0]
            added += 1
            indices = {"first": [0], "all": list(range(len(ex.responses))), "none": []}[annotate]
            for i in indices:
                conn.execute(db.tasks.insert().values(example_id=ex_pk, kind="annotate", response_index=i, created_at=now))
                n_tasks += 1
            if compare and len(ex.responses) >= 2:
                conn.execute(db.tasks.insert().values(example_id=ex_pk, kind="compare", response_index=None, created_at=now))
                n_tasks += 1
    return added, n_tasks


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


def queue(engine: Engine, user_id: int) -> list[dict]:
    """The user's tasks with status todo | draft | done, in import order."""
    with db.read_tx(engine) as conn:
        rows = conn.execute(
            select(db.tasks.c.id, db.tasks.c.kind, db.tasks.c.response_index, db.examples.c.data)
            .join(db.assignments, and_(db.assignments.c.task_id == db.tasks.c.id, db.assignments.c.user_id == user_id))
            .join(db.examples, db.examples.c.id == db.tasks.c.example_id)
            .order_by(db.tasks.c.example_id, db.tasks.c.id)
        ).all()
        done = set(
            conn.execute(select(db.submissions.c.task_id).where(db.submissions.c.user_id == user_id).distinct()).scalars()
        )
        drafted = set(conn.execute(select(db.drafts.c.task_id).where(db.drafts.c.user_id == user_id)).scalars())
    out = []
    for r in rows:
        prompt = json.loads(r.data)["prompt"]
        title = prompt if len(prompt) <= 90 else prompt[:89] + "…"
        status = "done" if r.id in done else "draft" if r.id in drafted else "todo"
        out.append({"id": r.id, "kind": r.kind, "title": title, "status": status, "url": f"/task/{r.id}"})
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
    rows = [
        {"name": u.name, "role": u.role, "revoked": u.revoked_at is not None, "done": done.get(u.id, 0), "total": assigned.get(u.id, 0)}
        for u in users
    ]
    return {
        "annotators": rows,
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
        return annotate_payload(body, view, taxonomy)
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
