"""Reward-model training data: what each RM reads and learns, built from feedback records.

- Span RMs: every annotated, non-empty response, cut into segments at the RM's level, each segment
  labelled 1 when an error span of the RM's categories overlaps it (`finegrain.segment.label_segments`).
- Pairwise RMs: per prompt, its responses and the (better, worse) pairs among them; a prompt's
  responses are scored together so each response is read once however many pairs it is in
  (InstructGPT's grouping of the K-choose-2 comparisons of one prompt).

Input text (the card stores it as `input_template`): the first sequence is the prompt,
`question: {question}` followed, where the RM reads passages, by ` context: {title}: {sentences} ...`
for every passage; the second is the response. When the pair is longer than the backbone allows the
*first* sequence is cut from its end, so passages go first and the response is never cut (span RMs
read an over-long response in windows of whole segments instead; see `encode_span`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finegrain.config import ConfigError
from finegrain.data.categories import DEFAULT_TAXONOMY, Taxonomy
from finegrain.data.records import FIRST_BETTER, SECOND_BETTER, Example, Span

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from finegrain.rewards.rm_config import RMTrainConfig

    from finegrain.segment import Segment

PROMPT_TEMPLATE = {
    True: "question: {question} context: {title}: {sentences} {title}: {sentences} ...",
    False: "question: {question}",
}

# Tokens kept for the question when a response needs most of the window: the RM always sees
# at least this much of the prompt.
PROMPT_RESERVE = 64
# Re-tokenising a window of the response can differ from the whole response's tokens by a token
# at the window's edges; keep this much room so the pair always fits.
_SLACK = 4


def prompt_text(example: Example, with_passages: bool) -> str:
    """The first sequence of every RM input (see the module docstring)."""
    text = f"question: {example.prompt}"
    if with_passages and example.passages:
        text += " context: " + " ".join(f"{p.title}: {p.text}" for p in example.passages)
    return text


def input_template(tok: "PreTrainedTokenizerBase", with_passages: bool, response: str = "{response}") -> str:
    """The input as the backbone sees it, with its own special tokens, for the card:
    e.g. `[CLS] question: {question} [SEP] {response} [SEP]` for a BERT."""
    enc = tok("x", "y")
    parts, prev = [], None
    for i, sid in enumerate(enc.sequence_ids()):
        if sid is None:
            parts.append(tok.convert_ids_to_tokens(enc["input_ids"][i]))
        elif sid != prev:
            parts.append(PROMPT_TEMPLATE[with_passages] if sid == 0 else response)
        prev = sid
    return " ".join(parts)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- span data --------------------------------------------------------------------------------


def span_categories(rm_category: str, categories: Sequence[str] | None, taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> tuple[str, ...]:
    """The annotation categories a span RM counts as errors; unknown names are a ConfigError."""
    if categories:
        unknown = [c for c in categories if c not in taxonomy.span_categories]
        if unknown:
            raise ConfigError(
                f"categories: unknown annotation category {unknown[0]!r}; known: {', '.join(taxonomy.span_categories)}"
            )
        return tuple(categories)
    try:
        return taxonomy.categories_for(rm_category)
    except ValueError as err:
        raise ConfigError(f"category: {err}") from None


@dataclass(frozen=True)
class SpanTask:
    """What one head of a span RM judges and how its inputs are built."""

    name: str  # the RM category: relevance, factuality, ...
    categories: tuple[str, ...]  # annotation categories counted as errors
    level: str  # segment level
    passages: bool  # whether its input holds the source passages


def span_tasks(cfg: "RMTrainConfig", taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> list[SpanTask]:
    """The heads a span config trains: `category` with the config's level, passages and categories, then
    (multi-task) every other category of `tasks` with its defaults, each built as its single-category RM's."""
    from finegrain.rewards.rm_config import DEFAULT_LEVEL, DEFAULT_PASSAGES

    out = []
    for name in cfg.head_names:
        if name == cfg.category:
            out.append(SpanTask(name, span_categories(name, cfg.categories, taxonomy), cfg.span_level, cfg.with_passages))
            continue
        try:
            categories = taxonomy.categories_for(name)
        except ValueError as err:
            raise ConfigError(f"tasks: {err}") from None
        out.append(SpanTask(name, categories, DEFAULT_LEVEL.get(name, "sentence"), DEFAULT_PASSAGES.get(name, True)))
    return out


@dataclass(frozen=True)
class SpanItem:
    """One annotated response, segmented and labelled."""

    example: Example  # the prompt and passages it answers
    response: str
    segments: tuple["Segment", ...]
    labels: tuple[int, ...]  # 1: the segment has an error of the RM's categories
    spans: tuple[Span, ...]  # the response's annotated spans, all categories


@dataclass(frozen=True)
class SpanData:
    items: list[SpanItem]
    empty_skipped: int  # annotated responses with no segment (empty or whitespace only)


def build_span_data(examples: Sequence[Example], categories: Sequence[str], level: str) -> SpanData:
    from finegrain.segment import label_segments, segment_text

    items, empty = [], 0
    for ex in examples:
        for _, resp in ex.annotated:
            segments = segment_text(resp.text, level)
            if not segments:
                empty += 1
                continue
            labels = label_segments(segments, resp.annotation.spans, categories, resp.text)
            items.append(SpanItem(ex, resp.text, tuple(segments), tuple(labels), resp.annotation.spans))
    return SpanData(items, empty)


# --- pairwise data ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PairGroup:
    """The responses to one prompt and which of them beats which."""

    example: Example
    responses: tuple[str, ...]
    pairs: tuple[tuple[int, int], ...]  # (better, worse) indices into `responses`


@dataclass(frozen=True)
class PairData:
    groups: list[PairGroup]
    ties_dropped: int  # preference: judgements of "tie"; completeness: pairs closer than the margin
    empty_dropped: int  # pairs with an empty response


def preference_data(examples: Sequence[Example]) -> PairData:
    """The annotators' pairwise judgements; ties are dropped (they say nothing to a BT model)."""
    groups, ties, empty = [], 0, 0
    for ex in examples:
        pairs = []
        for p in ex.preferences:
            if p.outcome == FIRST_BETTER:
                pair = (p.a, p.b)
            elif p.outcome == SECOND_BETTER:
                pair = (p.b, p.a)
            else:
                ties += 1
                continue
            if not ex.responses[p.a].text.strip() or not ex.responses[p.b].text.strip():
                empty += 1
                continue
            pairs.append(pair)
        if pairs:
            groups.append(PairGroup(ex, tuple(r.text for r in ex.responses), tuple(pairs)))
    return PairData(groups, ties, empty)


def coverage_scores(reference: str, responses: Sequence[str], measure: str = "rouge2") -> list[float]:
    """How much of `reference` each response covers: the ROUGE recall of the reference's n-grams
    (stemmed, lower-cased) found in the response; 0 for an empty response."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer([measure], use_stemmer=True)
    return [scorer.score(reference, r)[measure].recall if r.strip() else 0.0 for r in responses]


def completeness_data(examples: Sequence[Example], measure: str = "rouge2", margin: float = 0.05) -> PairData:
    """Pairs of responses ranked by their coverage of the annotated response's corrected version
    (the paper's completeness RM data): response i beats j when it covers at least `margin` more."""
    groups, close, empty = [], 0, 0
    for ex in examples:
        corrected = next((r.annotation.corrected for _, r in ex.annotated if r.annotation.corrected), None)
        if not corrected or not corrected.strip():
            continue
        texts = tuple(r.text for r in ex.responses)
        cov = coverage_scores(corrected, texts, measure)
        pairs = []
        for i, j in itertools.combinations(range(len(texts)), 2):
            if not texts[i].strip() or not texts[j].strip():
                empty += 1
            elif abs(cov[i] - cov[j]) < margin:
                close += 1
            else:
                pairs.append((i, j) if cov[i] > cov[j] else (j, i))
        if pairs:
            groups.append(PairGroup(ex, texts, tuple(pairs)))
    return PairData(groups, close, empty)


def with_extra_pairs(data: PairData, examples: Sequence[Example], kinds: Sequence[str]) -> PairData:
    """Add auxiliary training pairs from the span feedback to `data` (which was built from `examples`):
    `fewer_errors`: of two annotated non-empty responses to one prompt, the one with fewer error spans
    ranks higher; `corrected`: an annotator's corrected response ranks above the annotated original
    when that has at least one error span (the corrected text joins the prompt's responses)."""
    by_example = {id(g.example): g for g in data.groups}
    groups = []
    for ex in examples:
        g = by_example.get(id(ex))
        responses = list(g.responses) if g else [r.text for r in ex.responses]
        pairs = list(g.pairs) if g else []
        annotated = [(i, r) for i, r in ex.annotated if r.text.strip()]
        if "fewer_errors" in kinds:
            for (i, a), (j, b) in itertools.combinations(annotated, 2):
                na, nb = len(a.annotation.spans), len(b.annotation.spans)
                if na != nb:
                    pairs.append((i, j) if na < nb else (j, i))
        if "corrected" in kinds:
            for i, r in annotated:
                fixed = r.annotation.corrected
                if fixed and fixed.strip() and fixed.strip() != r.text.strip() and r.annotation.spans:
                    responses.append(fixed)
                    pairs.append((len(responses) - 1, i))
        unique = tuple(dict.fromkeys(pairs))
        if unique:
            groups.append(PairGroup(ex, tuple(responses), unique))
    return PairData(groups, data.ties_dropped, data.empty_dropped)


# --- encoding ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpanInput:
    """One model input of a span RM: the prompt and a window of whole segments with markers."""

    input_ids: list[int]
    token_type_ids: list[int] | None  # None when the backbone has no token types
    marker_positions: list[int]  # index in input_ids of the marker after each segment of the window
    segment_indices: list[int]  # which segments of the response those markers close


def plan_windows(segment_tokens: Sequence[int], budget: int) -> list[tuple[int, int]]:
    """Group consecutive segments into windows [j0, j1) whose tokens plus one marker per segment
    fit in `budget`. A segment too long on its own gets a window of its own (the encoder keeps its end)."""
    windows: list[tuple[int, int]] = []
    start, used = 0, 0
    for j, n in enumerate(segment_tokens):
        if j > start and used + n + 1 > budget:
            windows.append((start, j))
            start, used = j, 0
        used += n + 1
    if segment_tokens:
        windows.append((start, len(segment_tokens)))
    return windows


def encode_span(
    tok: "PreTrainedTokenizerBase", prompt: str, response: str, segments: Sequence["Segment"], max_length: int, marker_id: int
) -> list[SpanInput]:
    """Encode a segmented response for a span RM: one input when it fits, else several windows of
    whole segments, each with the (cut) prompt. The marker follows each segment's last token."""
    from finegrain.segment import Segment, token_end_indices

    if not segments:
        return []
    specials = tok.num_special_tokens_to_add(pair=True)
    whole = tok(response, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    ends = token_end_indices(whole["offset_mapping"], list(segments), response)
    counts = [ends[0] + 1] + [ends[j] - ends[j - 1] for j in range(1, len(ends))]
    prompt_tokens = len(tok(prompt, add_special_tokens=False, verbose=False)["input_ids"])  # counted whole, cut below: no length warning
    reserve = min(prompt_tokens, PROMPT_RESERVE, max_length // 4)
    budget = max_length - specials - reserve - _SLACK
    if budget < 2:
        raise ConfigError(f"max_length: {max_length} leaves no room for the response")
    inputs = []
    for j0, j1 in plan_windows(counts, budget):
        start = segments[j0].start
        if j1 - j0 == 1 and counts[j0] + 1 > budget:
            # one segment longer than the window: keep its end, where the marker goes
            first_kept = ends[j0] - (budget - 2)
            start = whole["offset_mapping"][first_kept][0]
        end = segments[j1 - 1].end
        window = [Segment(max(s.start, start) - start, s.end - start) for s in segments[j0:j1]]
        inputs.append(_encode_window(tok, prompt, response[start:end], window, list(range(j0, j1)), max_length, marker_id))
    return inputs


def _encode_window(
    tok: "PreTrainedTokenizerBase",
    prompt: str,
    text: str,
    segments: list["Segment"],
    segment_indices: list[int],
    max_length: int,
    marker_id: int,
) -> SpanInput:
    from finegrain.segment import token_end_indices

    enc = tok(
        prompt,
        text,
        truncation="only_first",
        max_length=max_length - len(segments),
        return_offsets_mapping=True,
    )
    seq_ids = enc.sequence_ids()
    resp_positions = [i for i, s in enumerate(seq_ids) if s == 1]
    offsets = [enc["offset_mapping"][i] for i in resp_positions]
    ends = [resp_positions[k] for k in token_end_indices(offsets, segments, text)]
    ids = list(enc["input_ids"])
    types = list(enc["token_type_ids"]) if "token_type_ids" in enc else None
    markers = []
    for shift, pos in enumerate(ends):  # each earlier insertion moves later positions one right
        at = pos + shift + 1
        ids.insert(at, marker_id)
        if types is not None:
            types.insert(at, types[at - 1])
        markers.append(at)
    return SpanInput(ids, types, markers, segment_indices)


@dataclass(frozen=True)
class SequenceInput:
    input_ids: list[int]
    token_type_ids: list[int] | None
    response_cut: bool  # the response alone did not fit and its end was dropped


def encode_sequence(tok: "PreTrainedTokenizerBase", prompt: str, response: str, max_length: int) -> SequenceInput:
    """Encode (prompt, response) for a sequence RM, cutting the prompt (passages first). A response
    that cannot fit even with `PROMPT_RESERVE` prompt tokens keeps its beginning (`response_cut`)."""
    specials = tok.num_special_tokens_to_add(pair=True)
    resp_ids = tok(response, add_special_tokens=False, verbose=False)["input_ids"]
    prompt_tokens = len(tok(prompt, add_special_tokens=False, verbose=False)["input_ids"])  # counted whole, cut below: no length warning
    reserve = min(prompt_tokens, PROMPT_RESERVE, max_length // 4)
    room = max_length - specials - reserve
    cut = len(resp_ids) > room
    if cut:
        # the backend cuts the first sequence to its reserve and the second to what is left
        enc = tok(prompt, response, truncation="longest_first", max_length=max_length)
    else:
        enc = tok(prompt, response, truncation="only_first", max_length=max_length)
    types = list(enc["token_type_ids"]) if "token_type_ids" in enc else None
    return SequenceInput(list(enc["input_ids"]), types, cut)


# --- the fixed train/eval split ---------------------------------------------------------------


def split_file(path: str | Path, n_train: int, seed: int, out_train: str | Path, out_eval: str | Path) -> tuple[int, int]:
    """Shuffle a feedback file's records with `random.Random(seed)` and write the first `n_train`
    to `out_train`, the rest to `out_eval`, in the input's own format and with records unchanged
    (a QA-Feedback .json list or a JSONL file)."""
    from finegrain.data.problems import DataError, Problem
    from finegrain.io import atomic_write_json, atomic_write_text

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            records: list[Any] = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError([Problem(str(path), None, "", None, f"malformed JSON: {err.msg}", err.lineno)]) from None
        if not isinstance(records, list):
            raise DataError([Problem(str(path), None, "", type(records).__name__, "expected a JSON list of records")])
    else:
        records = [line for line in text.splitlines() if line.strip()]
    if not 0 < n_train < len(records):
        raise ConfigError(f"--train: {n_train} must be between 1 and {len(records) - 1} ({path} has {len(records)} records)")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    train, held = [records[i] for i in order[:n_train]], [records[i] for i in order[n_train:]]
    for out, part in ((out_train, train), (out_eval, held)):
        if path.suffix == ".json":
            atomic_write_json(out, part)
        else:
            atomic_write_text(out, "".join(line + "\n" for line in part))
    return len(train), len(held)
