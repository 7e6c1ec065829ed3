"""Cut a response into segments (sub-sentences, sentences, lines, the whole response), map each
segment to the token that ends it in any fast tokenizer, and label segments from error spans.

Segments are character spans [start, end) that tile the text: the first starts at 0, each ends
where the next starts, the last ends at len(text). Whitespace after a segment's last visible
character belongs to that segment, so "Hi. Bye." is ("Hi. ", "Bye."). Leading whitespace belongs
to the first segment. Empty or whitespace-only text has no segment.

The sentence splitter is rule-based (regular expressions, no model, no download). pysbd was the
first choice, but on odd input its character spans overlap, skip characters or drop leading
whitespace, and it is ~90x slower on the PPO hot path; this splitter tiles by construction
(docs/segmentation.md has the rules and the measured figures, bench/bench_segment.py the bench).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from finegrain.data.records import Span

LEVELS: tuple[str, ...] = ("subsentence", "sentence", "line_sentence", "response")

# The paper's sub-sentence rule (Wu et al. 2023, QA-Feedback): break after a word ending in one
# of these, and keep every piece at least MIN_SUBSENTENCE_WORDS words long.
SUBSENTENCE_PUNCT = frozenset(",;!?")
MIN_SUBSENTENCE_WORDS = 5

# Terminators that end a sentence only when whitespace (or the end of the text) follows, and
# CJK ones that end it even when the next sentence follows without a space.
_SPACED_TERMINATORS = ".!?\u2026\u203c\u2047\u2048\u2049"  # . ! ? … ‼ ⁇ ⁈ ⁉
_CJK_TERMINATORS = "\u3002\uff01\uff1f\uff61"  # 。 ！ ？ ｡
_CLOSERS = "\"'\u201d\u2019\u00bb)]}\u300d\u300f\u3011\u3015\u3009\u300b"  # quotes, brackets after a terminator
_BOUNDARY = re.compile(f"[{re.escape(_SPACED_TERMINATORS + _CJK_TERMINATORS)}]+[{re.escape(_CLOSERS)}]*(\\s*)")
_BLANK_LINE = re.compile(r"\n[^\S\n]*\n\s*")  # a paragraph break, with the whitespace after it
_LINE_BREAK = re.compile(r"[\n\r\u2028\u2029\x0b\x0c\x85]\s*")
_WORD = re.compile(r"\S+")
_OPENERS = "\"'(\\[{\u201c\u2018\u00ab"

# Words after which a period does not end a sentence (compared lower-cased, without the period).
ABBREVIATIONS = frozenset(
    """mr mrs ms messrs mme dr prof sr jr st mt ft vs v etc e.g i.e cf al approx ca inc ltd co corp
    dept est ed eds rev gen brig maj col lt sgt capt cmdr adm gov pres sen rep hon jan feb mar apr
    jun jul aug sep sept oct nov dec""".split()
)
# Abbreviations that are also common words ("the answer is no."): abbreviations only before a number.
NUMBER_ABBREVIATIONS = frozenset("no nos vol vols pp p fig figs art sec ch op".split())
_DOTTED_ACRONYM = re.compile(r"(?:[^\W\d_]\.)+[^\W\d_]")  # U.S, e.g, a.m (the final period is the match's)


@dataclass(frozen=True)
class Segment:
    """A character span [start, end) of a text."""

    start: int
    end: int

    def text(self, s: str) -> str:
        return s[self.start : self.end]


# --- sentences ------------------------------------------------------------------------------


def _period_is_not_an_end(text: str, dot: int) -> bool:
    """Whether the single period at `dot` belongs to an abbreviation, an initial or a list number."""
    word_start = dot
    while word_start > 0 and not text[word_start - 1].isspace():
        word_start -= 1
    word = text[word_start:dot].lstrip(_OPENERS)
    if not word:
        return False
    lower = word.lower()
    if lower in ABBREVIATIONS or _DOTTED_ACRONYM.fullmatch(word):
        return True
    if lower in NUMBER_ABBREVIATIONS and _next_visible(text, dot + 1).isdigit():  # "No. 1"
        return True
    if len(word) == 1 and word.isupper() and word != "I":  # an initial ("J. K. Rowling"), not "World War I."
        return True
    # a numbered list item at the start of a line: "1. First"
    return word.isdigit() and len(word) <= 3 and (word_start == 0 or text[word_start - 1] in "\n\r")


def _next_visible(text: str, i: int) -> str:
    """The first non-space character at or after i ('' at the end)."""
    m = _WORD.search(text, i)
    return m.group()[0] if m else ""


def _sentence_starts(text: str) -> set[int]:
    """Character positions where a new sentence starts (after the whitespace following an end)."""
    starts = set()
    n = len(text)
    for m in _BOUNDARY.finditer(text):
        after = m.end()
        if after >= n:
            break
        if not m.group(1):  # no whitespace after: only a CJK terminator ends the sentence here
            if any(c in _CJK_TERMINATORS for c in text[m.start() : m.start(1)]):
                starts.add(after)
            continue
        if "\n" in m.group(1) and _BLANK_LINE.search(m.group(1)):
            starts.add(after)
            continue
        if text[after].islower() or text[after] in ",;:":  # "approx. five", "Yahoo! is": it goes on
            continue
        if text[after] in _CLOSERS and text[after + 1 : after + 2] in (",", ";", ":"):  # '"Help! ", he said'
            continue
        term_end = m.start(1)
        run = text[m.start() : term_end].rstrip(_CLOSERS)
        if run == "." and _period_is_not_an_end(text, m.start()):
            continue
        starts.add(after)
    for m in _BLANK_LINE.finditer(text):
        starts.add(m.end())
    return starts


def _spans_from_starts(text: str, starts: Iterable[int]) -> list[Segment]:
    """Tile `text` with segments beginning at `starts`; a piece with no visible character (leading
    whitespace) joins the next one, and a start at or past the end of the text is ignored."""
    n = len(text)
    segments: list[Segment] = []
    begin = 0
    for s in sorted(starts):
        if s <= begin or s >= n:
            continue
        if text[begin:s].isspace():  # only leading whitespace can form such a piece
            continue
        segments.append(Segment(begin, s))
        begin = s
    if text[begin:].strip():
        segments.append(Segment(begin, n))
    elif segments:  # trailing whitespace (cannot happen with the boundary rules, kept for safety)
        segments[-1] = Segment(segments[-1].start, n)
    return segments


def split_sentences(text: str, *, line_breaks: bool = False) -> list[Segment]:
    """Sentences of `text`, tiling it. A sentence ends after . ! ? … (with closing quotes or
    brackets) followed by whitespace, unless the next word starts in lower case or the period ends
    an abbreviation, an initial or a list number; after 。！？ even without a space; and at every
    blank line. With `line_breaks`, every line break ends a segment too."""
    _check_text(text)
    if not text.strip():
        return []
    starts = _sentence_starts(text)
    if line_breaks:
        starts.update(m.end() for m in _LINE_BREAK.finditer(text))
    return _spans_from_starts(text, starts)


# --- sub-sentences ----------------------------------------------------------------------------


def _subsentence_starts(text: str, sentence: Segment) -> list[int]:
    """Start positions of the sub-sentences of one sentence after its first (the paper's rule)."""
    words = list(_WORD.finditer(text, sentence.start, sentence.end))
    n = len(words)
    starts = [0]  # word indices where a piece starts
    for k in range(1, n - MIN_SUBSENTENCE_WORDS + 1):  # at least MIN words remain from word k on
        if words[k - 1].group()[-1] not in SUBSENTENCE_PUNCT:
            continue
        if k - starts[-1] >= MIN_SUBSENTENCE_WORDS:
            starts.append(k)
        elif starts[-1] > 0:  # the piece just closed is short: merge it into the one before
            starts[-1] = k
        # else the first piece is short: it runs on into the next
    return [words[k].start() for k in starts[1:]]


def split_subsentences(text: str) -> list[Segment]:
    """Sentences cut further by the paper's sub-sentence rule: inside a sentence, break after a
    word (a run of non-space characters) ending in , ; ! or ? when at least 5 words remain; a piece
    shorter than 5 words merges into the piece before it (the first piece into the one after)."""
    sentences = split_sentences(text)
    starts = [s.start for s in sentences]
    for sent in sentences:
        starts.extend(_subsentence_starts(text, sent))
    return _spans_from_starts(text, starts)


# --- levels ---------------------------------------------------------------------------------


def _check_text(text: str) -> None:
    if not isinstance(text, str):
        raise TypeError(f"segment: text must be a str, got {type(text).__name__}")


def segment_text(text: str, level: str) -> list[Segment]:
    """Cut `text` into segments at `level`:

    - "subsentence": the paper's sub-sentences (see `split_subsentences`);
    - "sentence": sentence ends and blank lines (see `split_sentences`);
    - "line_sentence": sentence ends and every line break (free-text continuations, detox);
    - "response": the whole text as one segment.

    Segments tile the text in order; empty or whitespace-only text gives [].
    """
    if level not in LEVELS:
        raise ValueError(f"segment level {level!r} is not allowed; choose one of {', '.join(LEVELS)}")
    _check_text(text)
    if not text.strip():
        return []
    if level == "response":
        return [Segment(0, len(text))]
    if level == "subsentence":
        return split_subsentences(text)
    return split_sentences(text, line_breaks=level == "line_sentence")


# --- character spans -> token indices ---------------------------------------------------------


def _as_pairs(offsets: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    if hasattr(offsets, "tolist"):  # a tensor or an array of shape (N, 2)
        offsets = offsets.tolist()
    pairs = []
    for i, pair in enumerate(offsets):
        if len(pair) != 2:
            raise ValueError(f"offsets[{i}] is {pair!r}, expected a (char_start, char_end) pair")
        start, end = int(pair[0]), int(pair[1])
        if start < 0 or end < start:
            raise ValueError(f"offsets[{i}] is {pair!r}: not a (char_start, char_end) span")
        pairs.append((start, end))
    return pairs


def _raw_ends_sorted(pairs, real, spans) -> list[int]:
    """`_raw_ends` when the real tokens' starts and ends both never decrease (every tokenizer we
    know, byte-level BPE included): then the last token starting at or before a character is also
    the last one that can hold it, so one bisection per segment finds it."""
    starts = [pairs[i][0] for i in real]
    ends = [pairs[i][1] for i in real]
    out = []
    for start, end, last in spans:
        k = -1
        if last is None:
            k = bisect.bisect_right(ends, end) - 1
            if k >= 0 and ends[k] <= start:  # no token ends inside the segment
                k = -1
            last = end - 1
        if k < 0:
            k = bisect.bisect_right(starts, last) - 1
        out.append(real[k] if k >= 0 else -1)
    return out


def _raw_ends_general(pairs, real, spans) -> list[int]:
    """`_raw_ends` for offsets in any order: plain scans (rare, so simplicity wins over speed)."""
    out = []
    for start, end, last in spans:
        t = -1
        if last is None:
            t = max((i for i in real if start < pairs[i][1] <= end), default=-1)
            last = end - 1
        if t < 0:
            t = max((i for i in real if pairs[i][0] <= last < pairs[i][1]), default=-1)
        if t < 0:
            t = max((i for i in real if pairs[i][0] <= last), default=-1)
        out.append(t)
    return out


def _end_tokens(pairs: list[tuple[int, int]], spans: list[tuple[int, int, int | None]]) -> list[int]:
    """spans: (start, end, last) per segment; `last` the character whose token ends the segment,
    or None to take the last token ending inside the segment (callers without the text).

    The raw end token of a segment is the last token holding `last` (byte-level BPE can give
    several tokens one multi-byte character; the last of them completes it), else the last token
    starting at or before it; then ties with earlier segments move to the next token."""
    real = [i for i, (s, e) in enumerate(pairs) if e > s]  # special tokens and empty pieces: (k, k)
    if not real:
        raise ValueError("offsets hold no token with a non-empty character span: nothing to map segments to")
    monotone = all(pairs[a][0] <= pairs[b][0] and pairs[a][1] <= pairs[b][1] for a, b in zip(real, real[1:]))
    raw = (_raw_ends_sorted if monotone else _raw_ends_general)(pairs, real, spans)
    nxt = dict(zip(real, real[1:]))
    out: list[int] = []
    prev = -1
    for j, t in enumerate(raw):
        if t <= prev:  # taken by an earlier segment (or none): the next token, never an earlier one
            t = nxt.get(prev, -1) if prev >= 0 else real[0]
            if t < 0:
                start, end, _ = spans[j]
                raise ValueError(
                    f"segment {j} [{start}, {end}) has no token left after token {prev}: "
                    f"{len(spans)} segments but only {len(real)} tokens with a character span"
                )
        out.append(t)
        prev = t
    return out


def token_end_indices(offsets: Sequence[Sequence[int]], segments: Sequence[Segment], text: str | None = None) -> list[int]:
    """The index of the token that ends each segment, strictly increasing, one per segment.

    `offsets` is a fast tokenizer's `offset_mapping` for the text (a list of (char_start,
    char_end), or an (N, 2) tensor). Tokens with an empty span (special tokens' (0, 0)) are never
    chosen. With `text`, segment j ends at the last token holding its last non-whitespace
    character, or, if no token holds that character (the tokenizer dropped it), at the last token
    starting before it. Without `text`, at the last token ending inside the segment (the same
    token, unless the tokenizer gives trailing whitespace such as "\n\n" a token of its own).
    If that token already ends an earlier segment (a token spanning a segment boundary), segment j
    takes the next token instead: in practice its trailing whitespace token, otherwise the first
    token of what follows, so a reward moves later, never earlier. A ValueError when the tokens
    run out (more segments than tokens with a character span).
    """
    pairs = _as_pairs(offsets)
    if not segments:
        return []
    spans: list[tuple[int, int, int | None]] = []
    prev_end = 0
    for j, seg in enumerate(segments):
        if seg.end <= seg.start or seg.start < prev_end:
            raise ValueError(f"segments[{j}] is [{seg.start}, {seg.end}): segments must be non-empty and in order")
        last = None
        if text is not None:
            last = seg.end - 1
            while last > seg.start and text[last].isspace():
                last -= 1
        spans.append((seg.start, seg.end, last))
        prev_end = seg.end
    return _end_tokens(pairs, spans)


def char_ends_to_token_indices(
    offsets: Sequence[Sequence[int]], char_ends: Sequence[int], text: str | None = None
) -> list[int]:
    """`token_end_indices` for callers holding only each segment's end (exclusive character index,
    e.g. `SegmentScores.char_ends` of one response with its padding removed); segment j starts
    where segment j-1 ends. Pass `text` for the exact rule: without it a segment ending in a line
    break ends on the "\\n" token in byte-level BPE vocabularies such as SmolLM2's."""
    ends = char_ends.tolist() if hasattr(char_ends, "tolist") else list(char_ends)
    segments, start = [], 0
    for end in ends:
        segments.append(Segment(start, int(end)))
        start = int(end)
    return token_end_indices(offsets, segments, text)


# --- labels -----------------------------------------------------------------------------------


def _count(text: str | None, start: int, end: int) -> int:
    if end <= start:
        return 0
    if text is None:
        return end - start
    return sum(1 for c in text[start:end] if not c.isspace())


def label_segments(
    segments: Sequence[Segment], spans: Sequence["Span"], categories: Iterable[str], text: str | None = None
) -> list[int]:
    """1 for each segment holding an error of one of `categories`, else 0.

    Rule (characters are counted without whitespace when `text` is given): a segment is an error
    when the spans of those categories together cover at least half of its characters, or when it
    holds at least half of one such span. So a short span inside a long sentence marks that
    sentence, and a span that runs a few characters over a boundary does not mark the neighbour.
    The paper's own data code marks any segment a span touches; QA-Feedback's spans follow
    sub-sentence boundaries, where both rules agree (docs/segmentation.md has the count).
    """
    wanted = set(categories)
    chosen = []
    for i, sp in enumerate(spans):
        if sp.start < 0 or sp.end < sp.start:
            raise ValueError(f"spans[{i}] is [{sp.start}, {sp.end}) ({sp.category}): not a span of the text")
        if sp.category in wanted and _count(text, sp.start, sp.end) > 0:
            chosen.append(sp)
    labels = []
    for seg in segments:
        seg_size = _count(text, seg.start, seg.end)
        covered = _count_union(text, seg, chosen)
        error = seg_size > 0 and 2 * covered >= seg_size
        if not error:
            for sp in chosen:
                overlap = _count(text, max(seg.start, sp.start), min(seg.end, sp.end))
                if overlap and 2 * overlap >= _count(text, sp.start, sp.end):
                    error = True
                    break
        labels.append(int(error))
    return labels


def _count_union(text: str | None, seg: Segment, spans: Sequence["Span"]) -> int:
    """Characters of `seg` inside at least one of `spans` (overlapping spans counted once)."""
    pieces = sorted((max(seg.start, sp.start), min(seg.end, sp.end)) for sp in spans if sp.start < seg.end and sp.end > seg.start)
    total, reach = 0, seg.start
    for a, b in pieces:
        a = max(a, reach)
        if b > a:
            total += _count(text, a, b)
            reach = b
    return total
