"""Checks shared by every format: spans, missing information and preferences against their example."""

from __future__ import annotations

from finegrain.data.categories import Taxonomy
from finegrain.data.problems import Collector
from finegrain.data.records import PREFERENCE_OUTCOMES, MissingInfo, Passage, Preference, Span


def check_span(c: Collector, span: Span, text: str, taxonomy: Taxonomy, where: str, quote: str | None = None) -> bool:
    ok = True
    if not 0 <= span.start <= len(text):
        c.add(f"{where}.start", span.start, f"start is outside the response (length {len(text)})")
        ok = False
    if not 0 <= span.end <= len(text):
        c.add(f"{where}.end", span.end, f"end is outside the response (length {len(text)})")
        ok = False
    if span.start >= span.end:
        c.add(f"{where}.end", span.end, f"end must be greater than start ({span.start})")
        ok = False
    if span.category not in taxonomy.span_categories:
        c.add(
            f"{where}.category",
            span.category,
            f"unknown category; known: {', '.join(taxonomy.span_categories)}",
        )
        ok = False
    if ok and quote is not None and text[span.start : span.end] != quote:
        c.add(f"{where}.text", quote, f"quoted text differs from response[{span.start}:{span.end}] = {text[span.start:span.end]!r}")
        ok = False
    return ok


def check_missing(c: Collector, info: MissingInfo, passages: tuple[Passage, ...], taxonomy: Taxonomy, where: str) -> bool:
    ok = True
    if info.kind not in taxonomy.missing_kinds:
        c.add(f"{where}.type", info.kind, f"unknown missing-information type; known: {', '.join(taxonomy.missing_kinds)}")
        ok = False
    if not 1 <= info.passage <= len(passages):
        c.add(f"{where}.passage", info.passage, f"no such passage (the example has {len(passages)}, numbered from 1)")
        return False
    n = len(passages[info.passage - 1].sentences)
    for i, s in enumerate(info.sentences):
        if not 0 <= s <= n:
            c.add(f"{where}.sentences[{i}]", s, f"no such sentence in passage {info.passage} (0 = title, 1..{n})")
            ok = False
    return ok


def check_preference(c: Collector, pref: Preference, n_responses: int, where: str) -> bool:
    ok = True
    for side in ("a", "b"):
        idx = getattr(pref, side)
        if not 0 <= idx < n_responses:
            c.add(f"{where}.{side}", idx, f"no such response (the example has {n_responses}, numbered from 0)")
            ok = False
    if ok and pref.a == pref.b:
        c.add(f"{where}.b", pref.b, "a response cannot be compared with itself")
        ok = False
    if pref.outcome not in PREFERENCE_OUTCOMES:
        c.add(f"{where}.outcome", pref.outcome, "preference must be 0 (tie), 1 (first better) or 2 (second better)")
        ok = False
    return ok
