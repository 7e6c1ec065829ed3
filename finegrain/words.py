"""Word-level text statistics shared by the QA evaluation (finegrain/experiments/qa/metrics.py) and the
lexical reward models (finegrain/rewards/lexical.py): words, content words, overlap and repetition."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from finegrain.data.records import Passage

STOP_WORDS = frozenset(
    "the and for are was were with that this from his her its their they them has have had not but you your "
    "who whom which what when where why how also than then there these those been being into onto over under "
    "about after before such can could would should may might will shall one all any some most more other "
    "our out off only own same very just does did doing".split()
)
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def repeated_ngram_share(text: str, n: int = 3) -> tuple[int, int]:
    """(repeated, total) word n-grams of one text: an n-gram is repeated when it occurred earlier in the text."""
    w = words(text)
    seen: set[tuple[str, ...]] = set()
    repeated = total = 0
    for i in range(len(w) - n + 1):
        gram = tuple(w[i : i + n])
        total += 1
        repeated += gram in seen
        seen.add(gram)
    return repeated, total


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def content_words(text: str) -> list[str]:
    return [w for w in words(text) if (len(w) >= 3 or w.isdigit()) and w not in STOP_WORDS]


def passage_words(passages: Iterable["Passage"]) -> set[str]:
    """Every word of the passages' titles and sentences, lower-cased."""
    return {w for p in passages for w in words(p.title + " " + p.text)}
