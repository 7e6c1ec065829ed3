"""QA-Feedback JSON (Wu et al. 2023): a list of questions with four predictions, span feedback on
`prediction 1`, missing information, a corrected prediction and six pairwise preferences."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from finegrain.data.annotations import check_annotation, check_preference
from finegrain.data.categories import DEFAULT_TAXONOMY, Taxonomy
from finegrain.data.problems import Collector, Problem
from finegrain.data.records import Annotation, Example, MissingInfo, Passage, Preference, Response, Span
from finegrain.io import atomic_write_json


def _pairs(k: int) -> list[tuple[int, int]]:
    """The pair order of QA-Feedback's `preference` list: 1v2, 1v3, 1v4, 2v3, 2v4, 3v4 for k=4."""
    return list(itertools.combinations(range(k), 2))


def _prediction_keys(item: dict) -> list[str]:
    keys = []
    for i in itertools.count(1):
        if f"prediction {i}" not in item:
            return keys
        keys.append(f"prediction {i}")


def _parse_passages(c: Collector, raw: Any) -> tuple[Passage, ...]:
    if not isinstance(raw, list):
        c.add("passages", raw, "expected a list of [title, sentence, ...] lists")
        return ()
    passages = []
    for i, p in enumerate(raw):
        if not isinstance(p, list) or not p or not all(isinstance(s, str) for s in p):
            c.add(f"passages[{i}]", p, "expected a non-empty list of strings [title, sentence, ...]")
            passages.append(Passage("", ()))
            continue
        passages.append(Passage(p[0], tuple(p[1:])))
    return tuple(passages)


def _parse_item(c: Collector, idx: int, item: Any, taxonomy: Taxonomy) -> Example | None:
    if not isinstance(item, dict):
        c.add("", item, "expected an object")
        return None
    start = len(c.problems)
    question = c.expect_type(item, "question", str, "")
    passages = _parse_passages(c, item["passages"]) if "passages" in item else ()
    if "passages" not in item:
        c.add("passages", None, "missing field")
    keys = _prediction_keys(item)
    if not keys:
        c.add("prediction 1", None, "missing field")
    texts = [c.expect_type(item, k, str, "") for k in keys]
    gold = c.expect_type(item, "gold", str, "", required=False)

    annotation = None
    feedback = c.expect_type(item, "feedback", dict, "")
    if feedback is not None and texts and texts[0] is not None:
        annotation = _parse_feedback(c, feedback, texts[0], passages, taxonomy)

    preferences: list[Preference] = []
    raw_prefs = c.expect_type(item, "preference", list, "", required=False)
    if raw_prefs is not None:
        pairs = _pairs(len(keys))
        if len(raw_prefs) != len(pairs):
            c.add("preference", raw_prefs, f"expected {len(pairs)} judgements for {len(keys)} predictions, got {len(raw_prefs)}")
        else:
            for j, ((a, b), value) in enumerate(zip(pairs, raw_prefs)):
                if not isinstance(value, int) or isinstance(value, bool):
                    c.add(f"preference[{j}]", value, "preference must be 0 (tie), 1 (first better) or 2 (second better)")
                    continue
                pref = Preference(a, b, value)
                if check_preference(c, pref, len(keys), f"preference[{j}]"):
                    preferences.append(pref)
    if len(c.problems) > start:
        return None
    responses = [Response(t, annotation if i == 0 else None) for i, t in enumerate(texts)]
    return Example(
        id=str(item.get("id", f"qa-{idx}")),
        prompt=question,
        responses=tuple(responses),
        passages=passages,
        preferences=tuple(preferences),
        reference=gold,
    )


def _parse_feedback(c: Collector, fb: dict, text: str, passages: tuple[Passage, ...], taxonomy: Taxonomy) -> Annotation:
    spans, missing = [], []
    errors = c.expect_type(fb, "errors", list, "feedback")
    for j, e in enumerate(errors or []):
        where = f"feedback.errors[{j}]"
        if not isinstance(e, dict):
            c.add(where, e, "expected an object")
            continue
        kind = c.expect_type(e, "error type", str, where)
        start = c.expect_type(e, "start", int, where)
        end = c.expect_type(e, "end", int, where)
        if kind is None or start is None or end is None:
            continue
        spans.append(Span(start, end, kind, e.get("explanation") or ""))
    infos = c.expect_type(fb, "missing-info", list, "feedback", required=False)
    for j, m in enumerate(infos or []):
        where = f"feedback.missing-info[{j}]"
        if not isinstance(m, dict):
            c.add(where, m, "expected an object")
            continue
        kind = c.expect_type(m, "error type", str, where)
        pid = c.expect_type(m, "passage_id", int, where)
        sids = m.get("sentence_id")
        if isinstance(sids, int) and not isinstance(sids, bool):
            sids = [sids]
        if not isinstance(sids, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in sids):
            c.add(f"{where}.sentence_id", sids, "expected a list of sentence numbers")
            continue
        if kind is None or pid is None:
            continue
        missing.append(MissingInfo(kind, pid, tuple(sids)))
    corrected = c.expect_type(fb, "corrected-prediction", str, "feedback", required=False)
    # QA-Feedback says "no error" explicitly, with an empty `errors` list (and no missing information)
    if errors is not None:
        _check_qa_annotation(c, spans, missing, text, passages, taxonomy)
    return Annotation(tuple(spans), tuple(missing), corrected)


def _check_qa_annotation(c: Collector, spans: list[Span], missing: list[MissingInfo], text: str, passages, taxonomy) -> None:
    """The shared rules, with problems named in QA-Feedback's own fields."""
    inner = Collector(c.file)
    check_annotation(inner, [(s, None) for s in spans], missing, not spans and not missing, text, passages, taxonomy)
    rename = {"spans": "feedback.errors", "missing": "feedback.missing-info", "no_error": "feedback.errors"}
    for p in inner.problems:
        head, dot, rest = p.field.partition("[")
        field = rename.get(head, head) + (dot + rest if dot else "")
        c.add(field, p.value, p.message)


def read_qa_feedback(path: str | Path, taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> tuple[list[Example], list[Problem]]:
    """Parse a QA-Feedback file; returns the clean examples and every problem found."""
    path = Path(path)
    c = Collector(str(path))
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        c.line = err.lineno
        c.add("", err.doc[max(0, err.pos - 20) : err.pos + 20], f"malformed JSON: {err.msg} (column {err.colno})")
        return [], c.problems
    except UnicodeDecodeError as err:
        c.add("", None, f"not UTF-8 text: {err}")
        return [], c.problems
    if not isinstance(raw, list):
        c.add("", type(raw).__name__, "QA-Feedback JSON must be a list of examples")
        return [], c.problems
    examples = []
    for i, item in enumerate(raw):
        c.record = i
        ex = _parse_item(c, i, item, taxonomy)
        if ex is not None:
            examples.append(ex)
    return examples, c.problems


def example_to_qa_feedback(ex: Example) -> dict[str, Any]:
    """One example in QA-Feedback's form (feedback taken from the first annotated response)."""
    item: dict[str, Any] = {
        "question": ex.prompt,
        "passages": [[p.title, *p.sentences] for p in ex.passages],
        "gold": ex.reference or "",
    }
    for i, r in enumerate(ex.responses):
        item[f"prediction {i + 1}"] = r.text
    ann = ex.responses[0].annotation if ex.responses else None
    if ann is not None:
        item["feedback"] = {
            "errors": [
                {"error type": s.category, "explanation": s.explanation, "start": s.start, "end": s.end} for s in ann.spans
            ],
            "missing-info": [
                {"error type": m.kind, "passage_id": m.passage, "sentence_id": list(m.sentences)} for m in ann.missing
            ],
            "corrected-prediction": ann.corrected or "",
        }
    pairs = _pairs(len(ex.responses))
    judged = {(p.a, p.b): p.outcome for p in ex.preferences}
    if ex.preferences and all(pair in judged for pair in pairs):
        item["preference"] = [judged[pair] for pair in pairs]
    return item


def write_qa_feedback(path: str | Path, examples: list[Example]) -> None:
    atomic_write_json(path, [example_to_qa_feedback(ex) for ex in examples])
