"""Check a submission or draft body against its task; return the normalised payload or raise
`Invalid` with a message that names the field and the value.

Span offsets are Unicode code points into the NFC-normalised response (as stored at import), and
every span carries its quoted text, which must equal response[start:end]: offsets that drifted
anywhere between the browser and here are refused rather than stored.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Any

from finegrain.data.annotations import check_annotation
from finegrain.data.categories import Taxonomy
from finegrain.data.problems import Collector
from finegrain.data.records import MissingInfo, Passage, Span

MAX_BODY_BYTES = 256 * 1024
MAX_KEY_CHARS = 128
MAX_NOTE_CHARS = 4_000


class Invalid(ValueError):
    """A request body the server refuses (HTTP 422 with {"error": message})."""


@dataclass(frozen=True)
class TaskView:
    """What validation needs to know about a task."""

    id: int
    kind: str  # annotate | compare
    responses: tuple[str, ...]
    passages: tuple[tuple[str, tuple[str, ...]], ...]  # (title, sentences)
    response_index: int | None  # annotate tasks


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _int(obj: dict, key: str, where: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise Invalid(f"{where}{key}: expected an integer, got {_show(value)}")
    return value


def _str(obj: dict, key: str, where: str, *, optional: bool = False, limit: int = MAX_NOTE_CHARS) -> str | None:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise Invalid(f"{where}{key}: expected a string, got {_show(value)}")
    if len(value) > limit:
        raise Invalid(f"{where}{key}: longer than {limit} characters")
    return value


def _list(obj: dict, key: str, where: str) -> list:
    value = obj.get(key, [])
    if not isinstance(value, list):
        raise Invalid(f"{where}{key}: expected a list, got {_show(value)}")
    return value


def _only(obj: dict, allowed: set[str], where: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise Invalid(f"{where}{extra[0]}: unknown field (allowed: {', '.join(sorted(allowed))})")


def envelope(body: Any) -> tuple[str, int]:
    """(idempotency_key, base_version) from a body, checked."""
    if not isinstance(body, dict):
        raise Invalid(f"body: expected a JSON object, got {type(body).__name__}")
    key = _str(body, "idempotency_key", "", limit=MAX_KEY_CHARS)
    if not key:
        raise Invalid("idempotency_key: must not be empty")
    base = _int(body, "base_version", "")
    if not 0 <= base < 2**31:
        raise Invalid(f"base_version: must be between 0 and {2**31 - 1}, got {_show(base)}")
    return key, base


ANNOTATE_FIELDS = {"response_index", "spans", "missing", "corrected", "no_error", "idempotency_key", "base_version"}
COMPARE_FIELDS = {"judgements", "idempotency_key", "base_version"}


def annotate_payload(body: dict, task: TaskView, taxonomy: Taxonomy, *, partial: bool = False) -> dict:
    """The body's shape is checked here; what it says is checked by the rules every reader of
    annotations shares (`finegrain.data.annotations.check_annotation`)."""
    _only(body, ANNOTATE_FIELDS, "")
    idx = _int(body, "response_index", "")
    if idx != task.response_index:
        raise Invalid(f"response_index: {idx} is not this task's response ({task.response_index})")
    text = task.responses[idx]
    no_error = body.get("no_error", False)
    if not isinstance(no_error, bool):
        raise Invalid(f"no_error: expected true or false, got {_show(no_error)}")
    spans: list[tuple[Span, str]] = []
    for i, s in enumerate(_list(body, "spans", "")):
        w = f"spans[{i}]."
        if not isinstance(s, dict):
            raise Invalid(f"spans[{i}]: expected an object, got {_show(s)}")
        _only(s, {"start", "end", "category", "text", "explanation"}, w)
        start, end = _int(s, "start", w), _int(s, "end", w)
        cat = _str(s, "category", w, limit=64)
        quote = _str(s, "text", w, limit=len(text) + 1)
        expl = _str(s, "explanation", w, optional=True) or ""
        spans.append((Span(start, end, cat, expl), quote))
    missing: list[MissingInfo] = []
    for i, m in enumerate(_list(body, "missing", "")):
        w = f"missing[{i}]."
        if not isinstance(m, dict):
            raise Invalid(f"missing[{i}]: expected an object, got {_show(m)}")
        _only(m, {"type", "passage", "sentences", "note"}, w)
        kind = _str(m, "type", w, limit=64)
        passage = _int(m, "passage", w)
        sents = _list(m, "sentences", w)
        for j, x in enumerate(sents):
            if not isinstance(x, int) or isinstance(x, bool):
                raise Invalid(f"{w}sentences[{j}]: expected an integer, got {_show(x)}")
        note = _str(m, "note", w, optional=True) or ""
        missing.append(MissingInfo(kind, passage, tuple(sorted(set(sents))), note))
    corrected = _str(body, "corrected", "", optional=True, limit=MAX_BODY_BYTES)
    c = Collector("body")
    passages = tuple(Passage(title, sentences) for title, sentences in task.passages)
    if not check_annotation(c, spans, missing, no_error, text, passages, taxonomy, complete=not partial):
        p = c.problems[0]
        more = f" (and {len(c.problems) - 1} more)" if len(c.problems) > 1 else ""
        raise Invalid(f"{p.field}: {p.message}; value {_show(p.value)}{more}")
    return {
        "response_index": idx,
        "spans": [{"start": s.start, "end": s.end, "category": s.category, "text": q, "explanation": s.explanation} for s, q in spans],
        "missing": [{"type": m.kind, "passage": m.passage, "sentences": list(m.sentences), "note": m.note} for m in missing],
        "corrected": corrected,
        "no_error": no_error,
    }


def shown_pairs(task_id: int, annotator: str, k: int) -> list[dict]:
    """All pairs of the k responses, in an order and with sides drawn for this (task, annotator):
    the same every time they open the task, different between annotators."""
    rng = random.Random(f"finegrain-pairs:{task_id}:{annotator}")
    pairs = list(itertools.combinations(range(k), 2))
    rng.shuffle(pairs)
    shown = []
    for a, b in pairs:
        left, right = (a, b) if rng.random() < 0.5 else (b, a)
        shown.append({"a": a, "b": b, "left": left, "right": right})
    return shown


def compare_payload(body: dict, task: TaskView, annotator: str, *, partial: bool) -> dict:
    """Judgements in terms of (a, b), a < b. `partial` (drafts): pairs may be missing."""
    _only(body, COMPARE_FIELDS, "")
    shown = shown_pairs(task.id, annotator, len(task.responses))
    by_pair = {(p["a"], p["b"]): p for p in shown}
    seen: set[tuple[int, int]] = set()
    judgements = []
    for i, j in enumerate(_list(body, "judgements", "")):
        w = f"judgements[{i}]."
        if not isinstance(j, dict):
            raise Invalid(f"judgements[{i}]: expected an object, got {_show(j)}")
        _only(j, {"a", "b", "outcome", "shown_left"}, w)
        a, b, outcome, left = _int(j, "a", w), _int(j, "b", w), _int(j, "outcome", w), _int(j, "shown_left", w)
        pair = by_pair.get((a, b))
        if pair is None:
            raise Invalid(f"{w}a, b: ({a}, {b}) is not a pair of this task (a < b, responses 0..{len(task.responses) - 1})")
        if outcome not in (0, 1, 2):
            raise Invalid(f"{w}outcome: {outcome} must be 0 (equal), 1 (a better) or 2 (b better)")
        if left != pair["left"]:
            raise Invalid(f"{w}shown_left: {left}, but response {pair['left']} was shown on the left")
        if (a, b) in seen:
            raise Invalid(f"{w}a, b: pair ({a}, {b}) judged twice")
        seen.add((a, b))
        judgements.append({"a": a, "b": b, "outcome": outcome, "shown_left": left})
    if not partial and len(seen) != len(by_pair):
        todo = [f"({a}, {b})" for a, b in by_pair if (a, b) not in seen]
        raise Invalid(f"judgements: {len(todo)} pair(s) not judged: {', '.join(todo)}")
    return {"judgements": judgements, "shown": shown}
