"""Segmentation: levels, the paper's sub-sentence rule, token end indices, segment labels."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finegrain.data.records import Span
from finegrain.segment import (
    LEVELS,
    Segment,
    char_ends_to_token_indices,
    label_segments,
    segment_text,
    split_sentences,
    split_subsentences,
    token_end_indices,
)


def texts(text: str, level: str) -> list[str]:
    return [s.text(text) for s in segment_text(text, level)]


# --- sentences --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Hello world. This is a test.  Another one!", ["Hello world. ", "This is a test.  ", "Another one!"]),
        ("Dr. Smith went to Washington. He said hi.", ["Dr. Smith went to Washington. ", "He said hi."]),
        ("J. K. Rowling wrote it. It sold.", ["J. K. Rowling wrote it. ", "It sold."]),
        ("It hit No. 1 in the U.S. charts. Then it fell.", ["It hit No. 1 in the U.S. charts. ", "Then it fell."]),
        ("The answer is no. The end.", ["The answer is no. ", "The end."]),
        ("It costs 1.5 dollars, approx. five. Cheap!", ["It costs 1.5 dollars, approx. five. ", "Cheap!"]),
        ('He said "Go." Then he left.', ['He said "Go." ', "Then he left."]),
        ('"Help! ", she cried. Nobody came.', ['"Help! ", she cried. ', "Nobody came."]),
        ("Wait... what? No way!", ["Wait... what? ", "No way!"]),
        ("It began in World War I. It ended.", ["It began in World War I. ", "It ended."]),
        ("日本語の文です。次の文です。", ["日本語の文です。", "次の文です。"]),
        ("first line\nsecond line\n\nnew paragraph", ["first line\nsecond line\n\n", "new paragraph"]),
        ("1. First item\n2. Second item", ["1. First item\n2. Second item"]),
        ("  \n Leading space. Then.", ["  \n Leading space. ", "Then."]),
        ("Trailing space.   ", ["Trailing space.   "]),
        ("no punctuation at all", ["no punctuation at all"]),
    ],
)
def test_sentences(text: str, expected: list[str]) -> None:
    assert texts(text, "sentence") == expected


def test_line_sentence_adds_every_line_break() -> None:
    text = "first line\nsecond line.  Third\r\nfourth\n\n\nfifth"
    assert texts(text, "sentence") == ["first line\nsecond line.  ", "Third\r\nfourth\n\n\n", "fifth"]
    assert texts(text, "line_sentence") == ["first line\n", "second line.  ", "Third\r\n", "fourth\n\n\n", "fifth"]


def test_response_level_is_one_segment() -> None:
    assert segment_text("  A. B. C.\n", "response") == [Segment(0, 11)]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("text", ["", " ", "\n\n\t ", "\u3000\u2028"])
def test_empty_and_whitespace_only_text_has_no_segment(text: str, level: str) -> None:
    assert segment_text(text, level) == []


def test_bad_level_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="'paragraph'.*subsentence, sentence, line_sentence, response"):
        segment_text("Hi.", "paragraph")


def test_non_text_is_refused() -> None:
    with pytest.raises(TypeError, match="str"):
        segment_text(b"Hi.", "sentence")  # type: ignore[arg-type]


def test_segment_text_helper() -> None:
    assert Segment(4, 7).text("Hi. Bye.") == "Bye"


# --- the paper's sub-sentence rule ------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        # break after "store," : 5 words before, 6 after
        ("We went to the store, and then we bought some bread.", ["We went to the store, ", "and then we bought some bread."]),
        # exactly 5 words remain: still a break
        ("We went to the store, and then bought some bread.", ["We went to the store, ", "and then bought some bread."]),
        # only 4 words remain: no break
        ("We went to the store, and bought some bread.", ["We went to the store, and bought some bread."]),
        # a short first piece runs on into the next
        ("Yes, we went to the store, and then we bought bread.", ["Yes, we went to the store, ", "and then we bought bread."]),
        # a short middle piece ("then home,") merges into the piece before it
        (
            "We went to the big store, then home, and after that we slept well.",
            ["We went to the big store, then home, ", "and after that we slept well."],
        ),
        # ; ! ? break too; ! followed by a lower-case word does not end the sentence
        (
            "The old man loudly shouted stop! but nobody there really listened to him; they all kept walking on.",
            ["The old man loudly shouted stop! ", "but nobody there really listened to him; ", "they all kept walking on."],
        ),
        # a colon or a period inside a sentence does not break
        ("The list holds these items: apples, pears and plums.", ["The list holds these items: apples, pears and plums."]),
        # pieces never cross a sentence end
        (
            "Short one, here. The film, which was released in 2004, stars many very famous actors.",
            ["Short one, here. ", "The film, which was released in 2004, ", "stars many very famous actors."],
        ),
    ],
)
def test_subsentences_follow_the_paper_rule(text: str, expected: list[str]) -> None:
    assert texts(text, "subsentence") == expected
    assert [s.text(text) for s in split_subsentences(text)] == expected


def test_subsentence_merges_several_short_pieces_like_the_paper() -> None:
    # The paper's greedy rule: each short piece is folded into the one before it as the next break
    # comes, so "stars Tom Hanks," "Meg Ryan," "and Bill Pullman;" all join the first piece.
    text = "The film, which was released in 2004, stars Tom Hanks, Meg Ryan, and Bill Pullman; it was a hit, grossing millions worldwide."
    assert texts(text, "subsentence") == [
        "The film, which was released in 2004, stars Tom Hanks, Meg Ryan, and Bill Pullman; ",
        "it was a hit, grossing millions worldwide.",
    ]


# --- properties of every level ----------------------------------------------------------------

# Pieces that make odd text likely: words, sentence and sub-sentence punctuation, abbreviations,
# whitespace runs of every kind, emoji with a skin-tone modifier, combining marks, CJK, zero-width.
PIECES = st.sampled_from(
    [
        "word", "Word", "a", "I", "No", "Mr", "U.S", "e.g", "1", "1.5", ".", "...", "!", "?", ",", ";", ":", '"', "'",
        "(", ")", " ", " ", "  ", "\n", "\n\n", "\t", "\r\n", "\u00a0", "\u3000", "\u2028", "\u200b",
        "👋🏽", "👨‍👩‍👧", "e\u0301", "\u0301", "日本語", "。", "！", "？", "文", "…", "ﬁ", "İ", "\x00",
    ]
)
ODD_TEXT = st.one_of(st.lists(PIECES, max_size=40).map("".join), st.text(max_size=60))


def assert_tiles(text: str, segments: list[Segment]) -> None:
    if not text.strip():
        assert segments == []
        return
    assert segments[0].start == 0 and segments[-1].end == len(text)
    for a, b in zip(segments, segments[1:]):
        assert a.end == b.start
    for s in segments:
        assert s.end > s.start and s.text(text).strip(), (text, s)  # every segment holds a visible character
        assert not text[s.start].isspace() or s.start == 0  # whitespace goes with the segment before


@settings(max_examples=300, deadline=None)
@given(ODD_TEXT)
def test_every_level_tiles_the_text(text: str) -> None:
    by_level = {level: segment_text(text, level) for level in LEVELS}
    for segments in by_level.values():
        assert_tiles(text, segments)
    # finer levels refine coarser ones: every sentence start is a sub-sentence and a line start
    sentence_starts = {s.start for s in by_level["sentence"]}
    assert sentence_starts <= {s.start for s in by_level["subsentence"]}
    assert sentence_starts <= {s.start for s in by_level["line_sentence"]}
    assert split_sentences(text) == by_level["sentence"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(["word", "Big", "été", "日本", "x1", " ", "  ", "\t", "\u00a0"]), max_size=30).map("".join))
def test_text_without_punctuation_or_line_breaks_is_one_segment(text: str) -> None:
    expected = [Segment(0, len(text))] if text.strip() else []
    for level in LEVELS:
        assert segment_text(text, level) == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["word", "word,", "word;", "word!", "word?", "x,"]), min_size=1, max_size=40))
def test_subsentence_pieces_have_at_least_five_words(words: list[str]) -> None:
    text = " ".join(words) + "."  # lower-case words only: one sentence
    pieces = segment_text(text, "subsentence")
    assert_tiles(text, pieces)
    if len(pieces) > 1:
        assert all(len(p.text(text).split()) >= 5 for p in pieces)
    for p in pieces[:-1]:  # every break follows a word ending in , ; ! or ?
        assert p.text(text).rstrip()[-1] in ",;!?"


# --- token end indices on hand-made offsets ---------------------------------------------------


def test_token_ends_with_leading_space_tokens() -> None:
    # GPT-2 style: "Hello", " world", ".", " Next", " one", "!", "\n", "\n", "New"
    text = "Hello world. Next one!\n\nNew"
    offsets = [(0, 5), (5, 11), (11, 12), (12, 17), (17, 21), (21, 22), (22, 23), (23, 24), (24, 27)]
    segments = segment_text(text, "sentence")
    assert [s.text(text) for s in segments] == ["Hello world. ", "Next one!\n\n", "New"]
    assert token_end_indices(offsets, segments, text) == [2, 5, 8]
    assert char_ends_to_token_indices(offsets, [s.end for s in segments], text) == [2, 5, 8]
    # without the text the last character of "Next one!\n\n" is the second newline, a token of its own
    assert char_ends_to_token_indices(offsets, [s.end for s in segments]) == [2, 7, 8]


def test_token_ends_skip_special_tokens_and_spaceless_offsets() -> None:
    # BERT style: [CLS] hello world . next one ! new [SEP]; spaces belong to no token
    text = "Hello world. Next one!\n\nNew"
    offsets = [(0, 0), (0, 5), (6, 11), (11, 12), (13, 17), (18, 21), (21, 22), (24, 27), (0, 0)]
    segments = segment_text(text, "sentence")
    assert token_end_indices(offsets, segments, text) == [3, 6, 7]
    assert token_end_indices(offsets, segments) == [3, 6, 7]  # trailing spaces hold no token anyway


def test_token_ends_take_the_last_token_of_a_split_character() -> None:
    # byte-level BPE: " 👋" as three tokens, two of which both claim the emoji (odd, overlapping offsets)
    text = "Hi 👋. Yo"
    offsets = [(0, 2), (2, 4), (3, 4), (3, 4), (4, 5), (5, 8)]
    segments = segment_text(text, "sentence")
    assert token_end_indices(offsets, segments, text) == [4, 5]
    offsets = [(0, 2), (2, 4), (3, 4), (3, 4), (5, 8)]  # "." dropped: the last token starting before it
    assert token_end_indices(offsets, segments, text) == [3, 4]


def test_token_ends_accept_a_tensor() -> None:
    torch = pytest.importorskip("torch")
    offsets = torch.tensor([[0, 0], [0, 3], [4, 7], [0, 0]])
    assert token_end_indices(offsets, [Segment(0, 4), Segment(4, 7)], "Hi. Yo.") == [1, 2]


def test_a_token_across_a_boundary_moves_the_later_end_to_the_next_token() -> None:
    # one token holds the end of segment 0 and all of segment 1's text; segment 1 takes its
    # trailing newline token, which lies inside segment 1
    text = "ab. c\nd"
    segments = [Segment(0, 4), Segment(4, 6), Segment(6, 7)]
    assert token_end_indices([(0, 5), (5, 6), (6, 7)], segments, text) == [0, 1, 2]
    # no token of its own inside segment 1: the next token (in segment 2) ends it, later, never earlier
    assert token_end_indices([(0, 5), (5, 7), (7, 9)], [Segment(0, 3), Segment(3, 5), Segment(5, 9)]) == [0, 1, 2]


def test_token_ends_fail_clearly_when_tokens_run_out() -> None:
    with pytest.raises(ValueError, match="3 segments but only 2 tokens"):
        token_end_indices([(0, 5), (5, 9)], [Segment(0, 3), Segment(3, 5), Segment(5, 9)])
    with pytest.raises(ValueError, match="no token with a non-empty character span"):
        token_end_indices([(0, 0), (0, 0)], [Segment(0, 2)])
    assert token_end_indices([(0, 0)], []) == []


@pytest.mark.parametrize(
    "offsets, segments, match",
    [
        ([(0, 2, 3)], [Segment(0, 2)], "offsets\\[0\\]"),
        ([(3, 1)], [Segment(0, 2)], "offsets\\[0\\]"),
        ([(0, 2)], [Segment(0, 2), Segment(1, 2)], "segments\\[1\\]"),
        ([(0, 2)], [Segment(2, 2)], "segments\\[0\\]"),
    ],
)
def test_token_ends_reject_bad_input(offsets, segments, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        token_end_indices(offsets, segments)


# --- token end indices with real tokenizers ---------------------------------------------------


def reference_end_tokens(offsets, segments, text):
    """The docstring's rule, written as plainly as possible (quadratic, for tests only)."""
    real = [i for i, (s, e) in enumerate(offsets) if e > s]
    if not segments:
        return []
    if not real:
        return None
    out, prev = [], -1
    for seg in segments:
        last = max(i for i in range(seg.start, seg.end) if not text[i].isspace())
        holders = [i for i in real if offsets[i][0] <= last < offsets[i][1]]
        t = max(holders) if holders else max((i for i in real if offsets[i][0] <= last), default=-1)
        if t <= prev:
            later = [i for i in real if i > prev]
            if not later:
                return None
            t = later[0]
        out.append(t)
        prev = t
    return out


def reference_no_text(offsets, segments):
    """Without the text: the last token ending inside the segment, else the rule above on end - 1."""
    real = [i for i, (s, e) in enumerate(offsets) if e > s]
    if not segments:
        return []
    if not real:
        return None
    out, prev = [], -1
    for seg in segments:
        inside = [i for i in real if seg.start < offsets[i][1] <= seg.end]
        last = seg.end - 1
        holders = [i for i in real if offsets[i][0] <= last < offsets[i][1]]
        t = max(inside) if inside else max(holders) if holders else max((i for i in real if offsets[i][0] <= last), default=-1)
        if t <= prev:
            later = [i for i in real if i > prev]
            if not later:
                return None
            t = later[0]
        out.append(t)
        prev = t
    return out


@st.composite
def text_segments_offsets(draw):
    """A text, its segments at some level, and made-up offsets: in order (as tokenizers give
    them, overlapping and with gaps) or shuffled, with special tokens' (0, 0) mixed in."""
    text = draw(ODD_TEXT.filter(str.strip))
    segments = segment_text(text, draw(st.sampled_from(LEVELS)))
    n = len(text)
    cuts = sorted(draw(st.lists(st.integers(0, n), min_size=2, max_size=2 * n + 2)))
    offsets = [(a, b) for a, b in zip(cuts, cuts[1:])]
    offsets += draw(st.lists(st.tuples(st.integers(0, n), st.integers(0, 3)).map(lambda p: (p[0], min(n, p[0] + p[1]))), max_size=4))
    if draw(st.booleans()):
        offsets = draw(st.permutations(offsets))
    else:
        offsets.sort()
    at = draw(st.integers(0, len(offsets)))
    offsets = [(0, 0)] + offsets[:at] + [(0, 0)] + offsets[at:]
    return text, segments, offsets


@settings(max_examples=400, deadline=None)
@given(text_segments_offsets())
def test_end_tokens_match_the_rule_on_any_offsets(case) -> None:
    text, segments, offsets = case
    for expected, call in (
        (reference_end_tokens(offsets, segments, text), lambda: token_end_indices(offsets, segments, text)),
        (reference_no_text(offsets, segments), lambda: char_ends_to_token_indices(offsets, [s.end for s in segments])),
    ):
        if expected is None:
            with pytest.raises(ValueError, match="token"):
                call()
        else:
            ends = call()
            assert ends == expected
            assert all(a < b for a, b in zip(ends, ends[1:]))


@pytest.fixture(scope="module")
def tokenizers():
    from finegrain.models import load_tokenizer

    return {name: load_tokenizer(name) for name in ("smollm2-135m", "minilm-l6")}


@pytest.mark.embedded
def test_real_tokenizers_on_a_known_text(tokenizers) -> None:
    text = "Hello world. Next one!\n\nNew"
    segments = segment_text(text, "sentence")
    enc = tokenizers["smollm2-135m"](text, return_offsets_mapping=True)
    assert token_end_indices(enc["offset_mapping"], segments, text) == [2, 5, 8]  # ".", "!", "New"
    enc = tokenizers["minilm-l6"](text, return_offsets_mapping=True)  # with [CLS] and [SEP]
    assert token_end_indices(enc["offset_mapping"], segments, text) == [3, 6, 7]


@pytest.mark.embedded
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=ODD_TEXT, level=st.sampled_from(LEVELS))
def test_end_tokens_strictly_increase_with_real_tokenizers(tokenizers, text: str, level: str) -> None:
    segments = segment_text(text, level)
    for name, tok in tokenizers.items():
        offsets = [tuple(p) for p in tok(text, return_offsets_mapping=True)["offset_mapping"]]
        expected = reference_end_tokens(offsets, segments, text)
        if expected is None:  # characters the tokenizer drops (BERT: controls, SmolLM2: some) left too few tokens
            with pytest.raises(ValueError, match="token"):
                token_end_indices(offsets, segments, text)
            continue
        ends = token_end_indices(offsets, segments, text)
        assert ends == expected, (name, text)
        assert len(ends) == len(segments)
        assert all(a < b for a, b in zip(ends, ends[1:]))
        assert all(offsets[i][1] > offsets[i][0] for i in ends)  # never a special token
        assert char_ends_to_token_indices(offsets, [s.end for s in segments], text) == ends
        no_text = char_ends_to_token_indices(offsets, [s.end for s in segments])
        assert len(no_text) == len(segments) and all(a < b for a, b in zip(no_text, no_text[1:]))


@pytest.mark.embedded
def test_odd_text_maps_with_byte_level_tokens(tokenizers) -> None:
    # emoji with a zero-width joiner, combining marks, NUL, CJK: SmolLM2 gives them byte tokens
    tok = tokenizers["smollm2-135m"]
    text = "x\x00.\n\u200b.\n\n👨‍👩‍👧!\u0301 ?\n日本。文。e\u0301. ..."
    for level in LEVELS:
        segments = segment_text(text, level)
        ends = token_end_indices(tok(text, return_offsets_mapping=True)["offset_mapping"], segments, text)
        assert len(ends) == len(segments) and all(a < b for a, b in zip(ends, ends[1:]))


# --- labels -----------------------------------------------------------------------------------

TEXT = "The sky is blue. Cats bark loudly at night. Water is wet."
SEGS = segment_text(TEXT, "sentence")  # [0, 17), [17, 44), [44, 57)


def span(start: int, end: int, category: str = "Unverifiable") -> Span:
    return Span(start, end, category)


def test_label_rule_on_hand_made_spans() -> None:
    assert [s.text(TEXT) for s in SEGS] == ["The sky is blue. ", "Cats bark loudly at night. ", "Water is wet."]
    cats = ["Unverifiable", "Wrong-Grounding"]
    # a span exactly over a segment
    assert label_segments(SEGS, [span(17, 43)], cats) == [0, 1, 0]
    # a short span inside a long segment: it holds all of the span
    assert label_segments(SEGS, [span(22, 26)], cats) == [0, 1, 0]
    # a span running 3 characters over a boundary does not mark the neighbour
    assert label_segments(SEGS, [span(17, 47)], cats) == [0, 1, 0]
    # a span over two segments marks both
    assert label_segments(SEGS, [span(4, 43)], cats) == [1, 1, 0]
    # other categories are ignored
    assert label_segments(SEGS, [span(17, 43, "Irrelevant")], cats) == [0, 0, 0]
    assert label_segments(SEGS, [], cats) == [0, 0, 0]


def test_label_threshold_is_half_inclusive() -> None:
    segs = [Segment(0, 10), Segment(10, 20)]
    # the span [5, 20) holds 5 characters of segment 0 (half of it, a third of the span)
    assert label_segments(segs, [span(5, 20)], ["Unverifiable"]) == [1, 1]
    # [6, 20): 4 of segment 0's 10 characters, 4 of the span's 14
    assert label_segments(segs, [span(6, 20)], ["Unverifiable"]) == [0, 1]


def test_label_spans_add_up_over_a_segment() -> None:
    # two long spans each reach 3 characters into the middle segment and lie mostly outside it:
    # neither alone marks it, together they cover 6 of its 10 characters
    segs = [Segment(0, 20), Segment(20, 30), Segment(30, 50)]
    cats = ["Irrelevant"]
    assert label_segments(segs, [span(0, 23, "Irrelevant")], cats) == [1, 0, 0]
    assert label_segments(segs, [span(0, 23, "Irrelevant"), span(27, 50, "Irrelevant")], cats) == [1, 1, 1]


def test_label_counts_visible_characters_when_given_the_text() -> None:
    text = "One two three four five six. Ab          cdefghi."
    segs = segment_text(text, "sentence")
    assert [(s.start, s.end) for s in segs] == [(0, 29), (29, 49)]
    # the span ends after "ab" and ten spaces: 12 of the second segment's 20 characters, but only
    # 2 of its 10 visible ones (and 12 of the span's 41 characters, 2 of its 25 visible ones)
    spans = [span(0, 41)]
    assert label_segments(segs, spans, ["Unverifiable"]) == [1, 1]
    assert label_segments(segs, spans, ["Unverifiable"], text) == [1, 0]


def test_label_rejects_a_reversed_span() -> None:
    with pytest.raises(ValueError, match="spans\\[1\\] is \\[9, 3\\)"):
        label_segments(SEGS, [span(0, 2), span(9, 3)], ["Unverifiable"])
