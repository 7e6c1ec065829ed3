"""Preference pairs (chosen over rejected response to one prompt) for DPO and SimPO, from any feedback file.

Three origins:
- "human": a pairwise judgement between two of an example's responses (ties dropped);
- "corrected": an annotator's corrected response over the response it corrects;
- "span-removed": after the improvement chain of CH-Wang et al. 2025 (arXiv 2512.23693), a response
  with one more annotated error span removed over the same response before that removal.

The pair file (schema `finegrain.pairs`, version 1; docs/data-format.md) holds one pair per line with
its whole example, so a trainer can render the prompt and its passages from the pair alone.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from finegrain.data.categories import DEFAULT_TAXONOMY, Taxonomy
from finegrain.data.jsonl import example_to_json, parse_example
from finegrain.data.load import Format, load_examples
from finegrain.data.problems import Collector, DataError, jsonl_records
from finegrain.data.records import FIRST_BETTER, TIE, Example
from finegrain.io import atomic_write_text

SCHEMA = "finegrain.pairs"
VERSION = 1
ORIGINS: tuple[str, ...] = ("human", "corrected", "span-removed")
Source = Literal["human", "span", "all"]
SOURCES: dict[str, tuple[str, ...]] = {
    "human": ("human",),
    "span": ("corrected", "span-removed"),
    "all": ORIGINS,
}
# Why a judgement, a corrected response or a span gave no pair; the keys of `make_pairs`'s counter.
SKIP_REASONS: dict[str, str] = {
    "tie": "ties",
    "same-text": "judgements or corrections between texts equal up to whitespace",
    "empty": "spans whose removal leaves no word",
}

_SENTENCE_END = ".!?"
_SEAM_PUNCT = ",;:"
_CLOSING = ",;:.!?)]"


@dataclass(frozen=True)
class PreferencePair:
    example: Example  # the prompt, its passages and the feedback the pair was made from
    chosen: str  # the preferred response
    rejected: str
    origin: str  # one of ORIGINS

    def __post_init__(self) -> None:
        if self.origin not in ORIGINS:
            raise ValueError(f"origin {self.origin!r}: choose one of {', '.join(ORIGINS)}")


# --- pairs from feedback ------------------------------------------------------------------------


def human_pairs(examples: Iterable[Example]) -> list[PreferencePair]:
    """One pair per non-tie pairwise judgement of each example, the better response chosen."""
    return make_pairs(examples, "human")[0]


def span_pairs(examples: Iterable[Example]) -> list[PreferencePair]:
    """Pairs from span feedback: corrected over original, then one pair per removable error span."""
    return make_pairs(examples, "span")[0]


def make_pairs(examples: Iterable[Example], source: Source = "all") -> tuple[list[PreferencePair], Counter[str]]:
    """The pairs of `source` ("human", "span" or "all") and how many candidates were skipped, by reason
    (the keys of SKIP_REASONS). Per example: human pairs first, then span pairs, in file order."""
    if source not in SOURCES:
        raise ValueError(f"source {source!r}: choose one of {', '.join(SOURCES)}")
    pairs: list[PreferencePair] = []
    skipped: Counter[str] = Counter()
    for ex in examples:
        if source in ("human", "all"):
            pairs.extend(_human(ex, skipped))
        if source in ("span", "all"):
            pairs.extend(_span(ex, skipped))
    return pairs, skipped


def _human(ex: Example, skipped: Counter[str]) -> Iterable[PreferencePair]:
    for pref in ex.preferences:
        if pref.outcome == TIE:
            skipped["tie"] += 1
            continue
        better, worse = (pref.a, pref.b) if pref.outcome == FIRST_BETTER else (pref.b, pref.a)
        chosen, rejected = ex.responses[better].text, ex.responses[worse].text
        if _same(chosen, rejected):  # no gradient signal: both sides score the same
            skipped["same-text"] += 1
            continue
        yield PreferencePair(ex, chosen, rejected, "human")


def _span(ex: Example, skipped: Counter[str]) -> Iterable[PreferencePair]:
    """Corrected over original; then the improvement chain: spans in text order, each removed on top
    of the ones before it, so every pair differs by exactly one span. A span whose removal leaves no
    word is skipped (not removed), and the chain goes on without it."""
    for _, response in ex.annotated:
        ann = response.annotation
        if ann.corrected and ann.corrected.strip():
            if _same(ann.corrected, response.text):
                skipped["same-text"] += 1
            else:
                yield PreferencePair(ex, ann.corrected, response.text, "corrected")
        removed: list[tuple[int, int]] = []
        before = response.text
        for span in sorted(ann.spans, key=lambda s: (s.start, s.end)):
            after = remove_spans(response.text, [*removed, (span.start, span.end)])
            if not any(ch.isalnum() for ch in after):
                skipped["empty"] += 1
                continue
            if _same(after, before):  # a span inside ones already removed
                skipped["same-text"] += 1
                continue
            yield PreferencePair(ex, after, before, "span-removed")
            removed.append((span.start, span.end))
            before = after


def _same(a: str, b: str) -> bool:
    return a.split() == b.split()


def remove_spans(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """`text` without the characters of `spans` ((start, end) offsets, end exclusive, may overlap),
    each seam tidied by one rule set:

    1. whitespace around the seam becomes one space (none at either end of the text, none before
       closing punctuation `, ; : . ! ? ) ]`);
    2. a removed piece that ended a sentence (`.`, `!`, `?`) passes its end mark on to the text
       before it when that text does not end a sentence itself (`A (1937) and B.` -> `A (1937).`),
       replacing a dangling `,`, `;` or `:` (`A, which B.` -> `A.`);
    3. where two marks meet, the weaker goes: a `,`, `;` or `:` before another mark
       (`A, , and B` -> `A, and B`), any mark after a sentence end (`One. .` -> `One.`);
    4. a sentence that now starts the text or follows a sentence end starts with a capital letter,
       and punctuation left at the very start goes.
    Text away from the seams is kept as it is.
    """
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    if not merged:
        return text
    out = text[: merged[0][0]]
    for i, (start, end) in enumerate(merged):
        next_start = merged[i + 1][0] if i + 1 < len(merged) else len(text)
        out = _seam(out, text[start:end], text[end:next_start])
    return out


def _seam(left: str, removed: str, right: str) -> str:
    left, right, removed = left.rstrip(), right.lstrip(), removed.strip()
    right_opens_with_punct = bool(right) and right[0] in _CLOSING
    if removed and removed[-1] in _SENTENCE_END and left and left[-1] not in _SENTENCE_END and not right_opens_with_punct:
        left = left.rstrip(_SEAM_PUNCT).rstrip() + removed[-1]  # rule 2
    elif left and left[-1] in _SEAM_PUNCT and right_opens_with_punct and right[0] not in ")]":
        left = left[:-1].rstrip()  # rule 3
    elif left and left[-1] in _SENTENCE_END and right_opens_with_punct and right[0] not in ")]":
        right = right[1:].lstrip()  # rule 3
    if not left:
        right = right.lstrip(_CLOSING + " ")  # rule 4: nothing may open the text with punctuation
    if right and (not left or left[-1] in _SENTENCE_END) and right[0].islower():
        right = right[0].upper() + right[1:]  # rule 4
    if not left or not right:
        return left + right
    return left + ("" if right[0] in _CLOSING else " ") + right  # rule 1


# --- the pair file ------------------------------------------------------------------------------


def pair_to_json(pair: PreferencePair) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "version": VERSION,
        "origin": pair.origin,
        "chosen": pair.chosen,
        "rejected": pair.rejected,
        "example": example_to_json(pair.example),
    }


def write_pairs(path: str | Path, pairs: Iterable[PreferencePair], force: bool = False) -> None:
    """Write pairs as JSONL, atomically; an existing file is replaced only with `force=True`."""
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path}: already exists; pass --force (force=True) to replace it")
    atomic_write_text(path, "".join(json.dumps(pair_to_json(p), ensure_ascii=False) + "\n" for p in pairs))


def read_pairs(path: str | Path, taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> list[PreferencePair]:
    """Read a pair file; raises DataError naming file, line, field and value of every problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such pair file")
    c = Collector(str(path))
    pairs = []
    try:
        for raw in jsonl_records(path, c):
            pair = _parse_pair(c, raw, taxonomy)
            if pair is not None:
                pairs.append(pair)
    except UnicodeDecodeError as err:
        c.add("", None, f"not UTF-8 text: {err}")
    if c.problems:
        raise DataError(c.problems)
    return pairs


def _parse_pair(c: Collector, raw: Any, taxonomy: Taxonomy) -> PreferencePair | None:
    if not isinstance(raw, dict):
        c.add("", raw, "expected an object with origin, chosen, rejected and example")
        return None
    start = len(c.problems)
    if raw.get("schema", SCHEMA) != SCHEMA:
        c.add("schema", raw.get("schema"), f"unknown schema; expected {SCHEMA!r}")
    if raw.get("version", VERSION) != VERSION:
        c.add("version", raw.get("version"), f"unsupported version; this finegrain reads version {VERSION}")
    origin = c.expect_type(raw, "origin", str, "")
    if origin is not None and origin not in ORIGINS:
        c.add("origin", origin, f"unknown origin; known: {', '.join(ORIGINS)}")
    texts = {}
    for side in ("chosen", "rejected"):
        texts[side] = c.expect_type(raw, side, str, "")
        if texts[side] is not None and not texts[side].strip():
            c.add(side, texts[side], "empty response")
    example = None
    raw_example = c.expect_type(raw, "example", dict, "")
    if raw_example is not None:
        inner = len(c.problems)
        example = parse_example(c, raw_example, taxonomy)
        for i in range(inner, len(c.problems)):  # name the field from the pair record's root
            p = c.problems[i]
            c.problems[i] = replace(p, field=f"example.{p.field}" if p.field else "example")
    if len(c.problems) > start:
        return None
    return PreferencePair(example, texts["chosen"], texts["rejected"], origin)


def is_pair_file(path: str | Path) -> bool:
    """A `.jsonl` file whose first record is a pair (schema `finegrain.pairs`, or chosen + rejected)."""
    path = Path(path)
    if path.suffix != ".jsonl" or not path.is_file():
        return False
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                try:
                    first = json.loads(line)
                except json.JSONDecodeError:
                    return False
                return isinstance(first, dict) and (first.get("schema") == SCHEMA or {"chosen", "rejected"} <= first.keys())
    return False


def load_pairs_counted(
    path: str | Path, source: Source = "all", taxonomy: Taxonomy = DEFAULT_TAXONOMY, fmt: Format | None = None
) -> tuple[list[PreferencePair], Counter[str]]:
    """`load_pairs` and the skipped candidates by reason (none for a pair file, whose pairs were made already)."""
    if source not in SOURCES:
        raise ValueError(f"source {source!r}: choose one of {', '.join(SOURCES)}")
    if fmt is None and is_pair_file(path):
        return [p for p in read_pairs(path, taxonomy) if p.origin in SOURCES[source]], Counter()
    return make_pairs(load_examples(path, taxonomy, fmt), source)


def load_pairs(
    path: str | Path, source: Source = "all", taxonomy: Taxonomy = DEFAULT_TAXONOMY, fmt: Format | None = None
) -> list[PreferencePair]:
    """The pairs of `source` from a pair file (filtered by origin) or from any feedback file that
    `finegrain.data.load_examples` reads (QA-Feedback JSON, finegrain JSONL). Raises DataError on bad input."""
    return load_pairs_counted(path, source, taxonomy, fmt)[0]
