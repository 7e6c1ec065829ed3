"""finegrain's own JSONL: one example (a prompt, its passages, K responses, their feedback) per line.

Schema `finegrain.feedback`, version 1 (docs/data-format.md has the full description):

    {"schema": "finegrain.feedback", "version": 1, "id": "q17",
     "prompt": "When does ...?",
     "passages": [{"title": "...", "sentences": ["...", "..."]}],          # optional
     "reference": "...",                                                   # optional gold answer
     "responses": [
        {"text": "...",
         "annotation": {                                                   # null: not annotated
            "spans": [{"start": 0, "end": 12, "category": "Irrelevant",
                       "text": "...", "explanation": ""}],                 # "text": optional quote
            "missing": [{"type": "Missing-Answer", "passage": 2, "sentences": [8], "note": ""}],
            "corrected": "...",                                            # optional
            "no_error": false,          # true, and nothing marked: explicitly no error
            "annotator": "ann1"}}],                                        # optional
     "preferences": [{"a": 0, "b": 1, "outcome": 1, "annotator": "ann1"}], # 0 tie, 1 a better, 2 b better
     "meta": {}}

Offsets are code-point indices into `text`, end exclusive. A span's optional `text` must equal
`response[start:end]`: the writer always includes it, so offsets that drift are caught. The rules an
annotation must follow (no overlapping spans, spans on grapheme boundaries, evidence for every
missing-information note, an explicit `no_error: true` when nothing is marked) are those of
`finegrain.data.annotations`, shared with the annotation server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from finegrain.data.annotations import check_annotation, check_preference
from finegrain.data.categories import DEFAULT_TAXONOMY, Taxonomy
from finegrain.data.problems import Collector, Problem, jsonl_records
from finegrain.data.records import Annotation, Example, MissingInfo, Passage, Preference, Response, Span
from finegrain.io import atomic_write_text

SCHEMA = "finegrain.feedback"
VERSION = 1


def example_to_json(ex: Example) -> dict[str, Any]:
    def ann_json(text: str, a: Annotation) -> dict[str, Any]:
        return {
            "spans": [
                {"start": s.start, "end": s.end, "category": s.category, "text": text[s.start : s.end], "explanation": s.explanation}
                for s in a.spans
            ],
            "missing": [
                {"type": m.kind, "passage": m.passage, "sentences": list(m.sentences), "note": m.note} for m in a.missing
            ],
            "corrected": a.corrected,
            "no_error": not a.spans and not a.missing,
            "annotator": a.annotator,
        }

    return {
        "schema": SCHEMA,
        "version": VERSION,
        "id": ex.id,
        "prompt": ex.prompt,
        "passages": [{"title": p.title, "sentences": list(p.sentences)} for p in ex.passages],
        "reference": ex.reference,
        "responses": [
            {"text": r.text, "annotation": None if r.annotation is None else ann_json(r.text, r.annotation)}
            for r in ex.responses
        ],
        "preferences": [{"a": p.a, "b": p.b, "outcome": p.outcome, "annotator": p.annotator} for p in ex.preferences],
        "meta": ex.meta,
    }


def to_jsonl_line(ex: Example) -> str:
    return json.dumps(example_to_json(ex), ensure_ascii=False) + "\n"


def write_jsonl(path: str | Path, examples: list[Example]) -> None:
    """Write examples atomically (a crash leaves the old file or the whole new one)."""
    atomic_write_text(path, "".join(to_jsonl_line(ex) for ex in examples))


def _int(c: Collector, obj: dict, key: str, where: str) -> int | None:
    return c.expect_type(obj, key, int, where)


def parse_example(c: Collector, raw: Any, taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> Example | None:
    """Validate one decoded record; every problem goes to `c`; returns None when any was found."""
    if not isinstance(raw, dict):
        c.add("", raw, "expected an object")
        return None
    start = len(c.problems)
    schema = raw.get("schema", SCHEMA)
    if schema != SCHEMA:
        c.add("schema", schema, f"unknown schema; expected {SCHEMA!r}")
    version = raw.get("version", VERSION)
    if version != VERSION:
        c.add("version", version, f"unsupported version; this finegrain reads version {VERSION}")
    ex_id = c.expect_type(raw, "id", (str, int), "")
    prompt = c.expect_type(raw, "prompt", str, "")
    passages = []
    for i, p in enumerate(c.expect_type(raw, "passages", list, "", required=False) or []):
        where = f"passages[{i}]"
        if not isinstance(p, dict):
            c.add(where, p, "expected an object with title and sentences")
            continue
        title = c.expect_type(p, "title", str, where, required=False) or ""
        sents = c.expect_type(p, "sentences", list, where)
        if sents is not None and not all(isinstance(s, str) for s in sents):
            c.add(f"{where}.sentences", sents, "sentences must be strings")
            sents = None
        passages.append(Passage(title, tuple(sents or ())))
    reference = c.expect_type(raw, "reference", (str, type(None)), "", required=False)
    responses = []
    raw_responses = c.expect_type(raw, "responses", list, "", required=False) or []
    for i, r in enumerate(raw_responses):
        where = f"responses[{i}]"
        if not isinstance(r, dict):
            c.add(where, r, "expected an object with text and annotation")
            continue
        text = c.expect_type(r, "text", str, where)
        ann_raw = c.expect_type(r, "annotation", (dict, type(None)), where, required=False)
        ann = None
        if ann_raw is not None and text is not None:
            ann = _parse_annotation(c, ann_raw, text, tuple(passages), taxonomy, f"{where}.annotation")
        responses.append(Response(text or "", ann))
    prefs = []
    for i, p in enumerate(c.expect_type(raw, "preferences", list, "", required=False) or []):
        where = f"preferences[{i}]"
        if not isinstance(p, dict):
            c.add(where, p, "expected an object with a, b and outcome")
            continue
        a, b, outcome = _int(c, p, "a", where), _int(c, p, "b", where), _int(c, p, "outcome", where)
        annotator = c.expect_type(p, "annotator", (str, type(None)), where, required=False)
        if a is None or b is None or outcome is None:
            continue
        pref = Preference(a, b, outcome, annotator)
        if check_preference(c, pref, len(raw_responses), where):
            prefs.append(pref)
    seen: dict[tuple, int] = {}
    for i, p in enumerate(prefs):
        key = (min(p.a, p.b), max(p.a, p.b), p.annotator)
        if key in seen:
            c.add(f"preferences[{i}]", [p.a, p.b], f"pair judged twice by the same annotator (also preferences[{seen[key]}])")
        seen[key] = i
    meta = c.expect_type(raw, "meta", dict, "", required=False) or {}
    if len(c.problems) > start:
        return None
    return Example(str(ex_id), prompt, tuple(responses), tuple(passages), tuple(prefs), reference, meta)


def _parse_annotation(c: Collector, raw: dict, text: str, passages: tuple[Passage, ...], taxonomy: Taxonomy, where: str) -> Annotation:
    start = len(c.problems)
    spans: list[tuple[Span, str | None]] = []
    for j, s in enumerate(c.expect_type(raw, "spans", list, where, required=False) or []):
        w = f"{where}.spans[{j}]"
        if not isinstance(s, dict):
            c.add(w, s, "expected an object with start, end and category")
            continue
        begin, end = _int(c, s, "start", w), _int(c, s, "end", w)
        cat = c.expect_type(s, "category", str, w)
        quote = c.expect_type(s, "text", str, w, required=False)
        expl = c.expect_type(s, "explanation", (str, type(None)), w, required=False) or ""
        if begin is None or end is None or cat is None:
            continue
        spans.append((Span(begin, end, cat, expl), quote))
    missing = []
    for j, m in enumerate(c.expect_type(raw, "missing", list, where, required=False) or []):
        w = f"{where}.missing[{j}]"
        if not isinstance(m, dict):
            c.add(w, m, "expected an object with type, passage and sentences")
            continue
        kind = c.expect_type(m, "type", str, w)
        passage = _int(c, m, "passage", w)
        sents = c.expect_type(m, "sentences", list, w)
        note = c.expect_type(m, "note", (str, type(None)), w, required=False) or ""
        if sents is not None and not all(isinstance(x, int) and not isinstance(x, bool) for x in sents):
            c.add(f"{w}.sentences", sents, "sentence numbers must be integers")
            continue
        if kind is None or passage is None or sents is None:
            continue
        missing.append(MissingInfo(kind, passage, tuple(sents), note))
    no_error = c.expect_type(raw, "no_error", bool, where, required=False)
    corrected = c.expect_type(raw, "corrected", (str, type(None)), where, required=False)
    annotator = c.expect_type(raw, "annotator", (str, type(None)), where, required=False)
    if len(c.problems) == start:
        check_annotation(c, spans, missing, no_error, text, passages, taxonomy, where)
    return Annotation(tuple(s for s, _ in spans), tuple(missing), corrected, annotator)


def read_jsonl(path: str | Path, taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> tuple[list[Example], list[Problem]]:
    """Parse a finegrain JSONL file; returns the clean examples and every problem found."""
    path = Path(path)
    c = Collector(str(path))
    examples = []
    for raw in jsonl_records(path, c):
        ex = parse_example(c, raw, taxonomy)
        if ex is not None:
            examples.append(ex)
    return examples, c.problems
