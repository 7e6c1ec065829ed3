"""Checks shared by every format and by the annotation server: spans, missing information, whole
annotations and preferences against their example.

One set of rules, three users: `finegrain data check` (JSONL and QA-Feedback readers), the annotation
server (`finegrain.annotate.validate`) and the annotation page (`finegrain/annotate/static/rules.js`
mirrors these rules so the annotator hears about a problem before submitting; the server decides).
What one accepts, all accept:

- a span lies inside the response, `start < end`, has a known category, quotes `text[start:end]`
  when a quote is given, and starts and ends on grapheme-cluster boundaries (Unicode extended
  grapheme clusters, UAX #29, via the `regex` package's `\\X`): no half of a ZWJ emoji, a flag or a
  letter with its combining marks;
- no two spans overlap (identical spans included): one category per stretch of text, as the
  Fine-Grained RLHF guidelines ask (the more severe category wins);
- a missing-information note names a known type, an existing passage and at least one of its
  sentences (its evidence);
- "no error" is an explicit choice: an annotation with neither spans nor missing-information notes
  must say `no_error: true`, and `no_error: true` goes with neither.
"""

from __future__ import annotations

from functools import lru_cache

from finegrain.data.categories import Taxonomy
from finegrain.data.problems import Collector
from finegrain.data.records import PREFERENCE_OUTCOMES, MissingInfo, Passage, Preference, Span


@lru_cache(maxsize=256)
def grapheme_bounds(text: str) -> frozenset[int]:
    """Code-point offsets where a grapheme cluster starts, and len(text): the places a span may
    start or end. "e\\u0301x" -> {0, 2, 3}; a flag (two regional indicators) is one cluster."""
    import regex

    return frozenset([m.start() for m in regex.finditer(r"\X", text)] + [len(text)])


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
    if ok:
        bounds = grapheme_bounds(text)
        for side in ("start", "end"):
            at = getattr(span, side)
            if at not in bounds:
                cluster = _cluster_at(text, at)
                c.add(f"{where}.{side}", at, f"{side} splits the character {cluster!r} (a grapheme cluster: emoji sequence, flag or letter with combining marks); move it to a boundary")
                ok = False
    return ok


def _cluster_at(text: str, offset: int) -> str:
    import regex

    for m in regex.finditer(r"\X", text):
        if m.start() < offset < m.end():
            return m.group()
    return ""


def check_annotation(
    c: Collector,
    spans: list[tuple[Span, str | None]],
    missing: list[MissingInfo],
    no_error: bool | None,
    text: str,
    passages: tuple[Passage, ...],
    taxonomy: Taxonomy,
    where: str = "",
    *,
    complete: bool = True,
) -> bool:
    """Every rule of the module docstring for one annotation: `spans` as (span, quote or None),
    `no_error` as given (None: not said). Problems go to `c`; True when there were none.
    `complete=False` (a draft, work in progress) leaves out the two rules about finishing: the
    explicit "no error" and the evidence of a missing-information note."""
    start = len(c.problems)
    pre = f"{where}." if where else ""
    good: list[tuple[int, Span]] = []
    for i, (span, quote) in enumerate(spans):
        if check_span(c, span, text, taxonomy, f"{pre}spans[{i}]", quote):
            good.append((i, span))
    for (i, a), (j, b) in _overlapping(good):
        same = (a.start, a.end) == (b.start, b.end)
        what = "the same text as" if same else "overlaps"
        rule = "mark it once" if same and a.category == b.category else "one category per stretch of text (the more severe one)"
        c.add(f"{pre}spans[{j}]", [b.start, b.end, b.category], f"{what} spans[{i}] {[a.start, a.end, a.category]}: {rule}")
    for i, info in enumerate(missing):
        if complete or info.sentences:
            check_missing(c, info, passages, taxonomy, f"{pre}missing[{i}]")
    if no_error and (spans or missing):
        c.add(f"{pre}no_error", True, f"no_error is true, but {len(spans)} span(s) and {len(missing)} missing-information note(s) are marked")
    if complete and not no_error and not spans and not missing:
        c.add(f"{pre}no_error", no_error, "nothing is marked: mark an error span or a missing-information note, or say no_error: true explicitly")
    return len(c.problems) == start


def _overlapping(spans: list[tuple[int, Span]]) -> list[tuple[tuple[int, Span], tuple[int, Span]]]:
    """Pairs of overlapping spans, each later one paired with the earliest it overlaps."""
    found = []
    ordered = sorted(spans, key=lambda x: (x[1].start, x[1].end, x[0]))
    for k, (j, b) in enumerate(ordered):
        for i, a in ordered[:k]:
            if a.start < b.end and b.start < a.end:
                first, second = ((i, a), (j, b)) if i < j else ((j, b), (i, a))
                found.append((first, second))
                break
    return found


def check_missing(c: Collector, info: MissingInfo, passages: tuple[Passage, ...], taxonomy: Taxonomy, where: str) -> bool:
    ok = True
    if info.kind not in taxonomy.missing_kinds:
        c.add(f"{where}.type", info.kind, f"unknown missing-information type; known: {', '.join(taxonomy.missing_kinds)}")
        ok = False
    if not 1 <= info.passage <= len(passages):
        c.add(f"{where}.passage", info.passage, f"no such passage (the example has {len(passages)}, numbered from 1)")
        return False
    n = len(passages[info.passage - 1].sentences)
    if not info.sentences:
        c.add(f"{where}.sentences", [], f"no evidence: name at least one sentence of passage {info.passage} (0 = title, 1..{n})")
        ok = False
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
