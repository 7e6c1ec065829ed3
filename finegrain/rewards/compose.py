"""The composer: per-segment scores from K reward sources -> per-token rewards on the policy's tokens.

Each source scores the decoded response text at its own density and says where each segment ends
as a *character* offset (SegmentScores). The policy's tokens are tied to the same text by their
character spans (`token_char_offsets`), so a reward model's tokenizer never has to match the
policy's. A segment's reward lands on the policy token holding the segment's last non-space
character; each source's (B, T) tensor is kept for logging, and the total is their weighted sum:

    r[b, t] = sum_k w_k * sum_j [t == e_kbj] * m_k(s_kbj)

Shape legend: B responses, S segments (padded), T response tokens, K reward sources.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from finegrain.errors import TrainingError
from finegrain.rewards.base import SegmentScores
from finegrain.rewards.mapping import Affine, Mapping

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from finegrain.data.records import Example
    from finegrain.rewards.base import RewardSource

Offsets = Sequence[tuple[int, int]]  # (char_start, char_end) of each response token, end exclusive

# Decoding options shared by `token_char_offsets` and the text the sources score: the offsets
# index into exactly `tokenizer.decode(ids, **DECODE_KWARGS)`.
DECODE_KWARGS = {"skip_special_tokens": True, "clean_up_tokenization_spaces": False}


@dataclass(frozen=True)
class RewardTerm:
    """How one source enters the total reward: its weight and its score -> reward mapping."""

    name: str
    weight: float = 1.0
    mapping: Mapping = field(default_factory=Affine)


@dataclass(frozen=True)
class TokenRewards:
    """Token rewards of K sources on B responses of T policy tokens, kept apart for logging."""

    per_source: "torch.Tensor"  # (K, B, T) mapped, *unweighted* reward of source k on token t
    names: tuple[str, ...]  # (K,) source names, in the order of per_source
    weights: "torch.Tensor"  # (K,) weight of each source in the total
    total: "torch.Tensor"  # (B, T) sum_k weights[k] * per_source[k]
    ends: "torch.Tensor"  # (B, T) bool: True on every token where a segment of some source ends
    source_ends: "torch.Tensor"  # (K, B, T) bool: True where a segment of source k ends (its reward sits there); ends is their union


# --- pure tensor functions --------------------------------------------------------------------


def place_segment_rewards(
    rewards: "torch.Tensor",
    token_index: "torch.Tensor",
    mask: "torch.Tensor",
    num_tokens: int,
    response_mask: "torch.Tensor | None" = None,
) -> "torch.Tensor":
    """Put each segment's reward on its end token; segments sharing an end token add up.

    A real segment (mask True) whose token index falls outside [0, num_tokens), or on a padding
    token of `response_mask`, is an error: dropping it silently would hide a misalignment.

    Shape: rewards (B, S) float, token_index (B, S) long, mask (B, S) bool,
    response_mask (B, T) bool or None -> (B, T) with T = num_tokens.
    """
    import torch

    if rewards.shape != token_index.shape or rewards.shape != mask.shape:
        raise ValueError(
            f"place_segment_rewards: rewards {tuple(rewards.shape)}, token_index {tuple(token_index.shape)} "
            f"and mask {tuple(mask.shape)} must have the same (B, S) shape"
        )
    B = rewards.shape[0]
    mask = mask.bool()
    real_index = token_index[mask]
    if real_index.numel() and (real_index.min() < 0 or real_index.max() >= num_tokens):
        b, j = _first(mask & ((token_index < 0) | (token_index >= num_tokens)))
        raise ValueError(
            f"place_segment_rewards: segment {j} of response {b} ends at token {int(token_index[b, j])}, "
            f"outside the response's {num_tokens} tokens"
        )
    if response_mask is not None:
        if response_mask.shape != (B, num_tokens):
            raise ValueError(f"place_segment_rewards: response_mask is {tuple(response_mask.shape)}, expected {(B, num_tokens)}")
        safe = token_index.clamp(0, num_tokens - 1) if num_tokens else token_index
        on_pad = mask & ~response_mask.bool().gather(1, safe) if num_tokens else mask
        if on_pad.any():
            b, j = _first(on_pad)
            raise ValueError(f"place_segment_rewards: segment {j} of response {b} ends on padding token {int(token_index[b, j])}")
    out = torch.zeros(B, num_tokens, dtype=rewards.dtype, device=rewards.device)
    if num_tokens == 0:
        return out
    # Padded segments add 0 at index 0 (clamped): harmless, and keeps scatter_add branch-free.
    values = torch.where(mask, rewards, torch.zeros_like(rewards))
    index = torch.where(mask, token_index, torch.zeros_like(token_index))
    return out.scatter_add_(1, index, values)


def weighted_total(per_source: "torch.Tensor", weights: "torch.Tensor") -> "torch.Tensor":
    """Shape: per_source (K, B, T), weights (K,) -> (B, T)."""
    return (per_source * weights.to(per_source.dtype)[:, None, None]).sum(dim=0)


def _first(flags: "torch.Tensor") -> tuple[int, int]:
    b, j = flags.nonzero()[0].tolist()
    return b, j


# --- character offsets -> token indices -----------------------------------------------------


def char_ends_to_token_index(
    char_ends: "torch.Tensor", mask: "torch.Tensor", texts: Sequence[str], offsets: Sequence[Offsets]
) -> "torch.Tensor":
    """The index of the token (in `offsets[b]`) ending each segment, by
    `finegrain.segment.char_ends_to_token_indices`: the token holding the segment's last non-space
    character (trailing whitespace belongs to the segment but, in a BPE vocabulary, usually to the
    *next* token, " How"); a token already taken by an earlier segment passes the reward to the
    next one. A segment end outside the text, or more segments than tokens, is a ValueError.
    Shape: char_ends (B, S) long, mask (B, S) bool -> (B, S) long (0 where mask is False).
    """
    import torch

    from finegrain.segment import char_ends_to_token_indices

    B, S = char_ends.shape
    if len(texts) != B or len(offsets) != B:
        raise ValueError(f"char_ends_to_token_index: {B} responses but {len(texts)} texts and {len(offsets)} offset lists")
    out = torch.zeros(B, S, dtype=torch.long)
    for b in range(B):
        ends = [int(e) for e, m in zip(char_ends[b].tolist(), mask[b].tolist()) if m]
        if not ends:
            continue
        start = 0
        for j, end in enumerate(ends):
            if not start < end <= len(texts[b]):
                raise ValueError(
                    f"response {b}: segment {j} is [{start}, {end}), not a non-empty span of its {len(texts[b])}-character text"
                )
            start = end
        try:
            found = char_ends_to_token_indices(list(offsets[b]), ends, texts[b])
        except ValueError as err:
            raise ValueError(f"response {b}: {err}") from None
        out[b, : len(ends)] = torch.tensor(found, dtype=torch.long)
    return out


def token_char_offsets(tokenizer: "PreTrainedTokenizerBase", token_ids: Sequence[int]) -> list[tuple[int, int]]:
    """The character span of each sampled token in `tokenizer.decode(token_ids, **DECODE_KWARGS)`.

    Re-tokenising the decoded text need not give the sampled tokens back, so the spans come from
    decoding every prefix: token i covers the characters its prefix adds. A byte-level BPE token
    holding half of a multi-byte character decodes to U+FFFD; that character is given to the token
    that completes it. Special tokens (skipped when decoding) get empty spans (start == end).
    """
    ids = [int(i) for i in token_ids]
    if not ids:
        return []
    full = tokenizer.decode(ids, **DECODE_KWARGS)
    prefixes = tokenizer.batch_decode([ids[: i + 1] for i in range(len(ids))], **DECODE_KWARGS)
    spans, prev = [], 0
    for i, text in enumerate(prefixes):
        end = len(full) if i == len(ids) - 1 else len(text.rstrip("\ufffd"))
        end = min(max(end, prev), len(full))  # spans stay in order even if a decoder is not prefix-stable
        spans.append((prev, end))
        prev = end
    return spans


def decode_with_offsets(
    tokenizer: "PreTrainedTokenizerBase", token_ids: "torch.Tensor", response_mask: "torch.Tensor"
) -> tuple[list[str], list[list[tuple[int, int]]]]:
    """Decode B sampled responses and give the character span of each of their T token slots
    (padding slots get empty spans at the text's end), ready for `compose`.

    Shape: token_ids (B, T) long, response_mask (B, T) bool -> B texts, B lists of T spans.
    """
    texts, offsets = [], []
    for ids, keep in zip(token_ids.tolist(), response_mask.bool().tolist()):
        real = [i for i, k in zip(ids, keep) if k]
        texts.append(tokenizer.decode(real, **DECODE_KWARGS))
        spans = iter(token_char_offsets(tokenizer, real))
        end = len(texts[-1])
        offsets.append([next(spans) if k else (end, end) for k in keep])
    return texts, offsets


# --- the composer -------------------------------------------------------------------------------


def compose(
    terms: Sequence[RewardTerm],
    scores: Sequence[SegmentScores],
    texts: Sequence[str],
    offsets: Sequence[Offsets],
    num_tokens: int,
    response_mask: "torch.Tensor | None" = None,
) -> TokenRewards:
    """Map, place and weight the segment scores of K sources on the policy's tokens.

    `scores[k]` is what source k said about `texts` (char ends index into `texts[b]`); `offsets[b]`
    gives the character span of each of the policy's `num_tokens` token slots of response b
    (`decode_with_offsets`). Responses with no segment get zero reward from that source.
    A NaN or infinite score stops with a TrainingError naming the source, response and segment.
    Shape: scores[k] (B, S_k), response_mask (B, T) -> TokenRewards with per_source (K, B, T), total (B, T).
    """
    import torch

    if len(terms) != len(scores):
        raise ValueError(f"compose: {len(terms)} reward terms but {len(scores)} score sets")
    if not terms:
        raise ValueError("compose: no reward source given")
    names = tuple(t.name for t in terms)
    if len(set(names)) != len(names):
        raise ValueError(f"compose: reward source names must be unique, got {names}")
    B = len(texts)
    per_source, source_ends = [], []
    for term, seg in zip(terms, scores):
        if seg.scores.shape[0] != B:
            raise ValueError(f"compose: source {term.name!r} scored {seg.scores.shape[0]} responses, expected {B}")
        bad = seg.mask.bool() & ~torch.isfinite(seg.scores)
        if bad.any():
            b, j = _first(bad)
            raise TrainingError(
                f"reward source {term.name!r} gave a non-finite score ({float(seg.scores[b, j])}) "
                f"to segment {j} of response {b}: {texts[b][:80]!r}"
            )
        mapped = term.mapping(seg.scores.float())
        index = char_ends_to_token_index(seg.char_ends, seg.mask, texts, offsets)
        per_source.append(place_segment_rewards(mapped, index, seg.mask, num_tokens, response_mask))
        source_ends.append(place_segment_rewards(torch.ones_like(mapped), index, seg.mask, num_tokens, response_mask) > 0)
    stacked = torch.stack(per_source)  # (K, B, T)
    ends_k = torch.stack(source_ends)  # (K, B, T)
    weights = torch.tensor([t.weight for t in terms], dtype=stacked.dtype)
    return TokenRewards(per_source=stacked, names=names, weights=weights, total=weighted_total(stacked, weights), ends=ends_k.any(0), source_ends=ends_k)


@dataclass(frozen=True)
class WeightedSource:
    """A reward source with its place in the total (what PPO is configured with)."""

    source: "RewardSource"
    term: RewardTerm


def score_and_compose(
    sources: Sequence[WeightedSource],
    examples: Sequence["Example"],
    texts: Sequence[str],
    offsets: Sequence[Offsets],
    num_tokens: int,
    response_mask: "torch.Tensor | None" = None,
) -> TokenRewards:
    """Ask every source for its segment scores on `texts`, then `compose` them.
    Shape: response_mask (B, T) -> TokenRewards with per_source (K, B, T), total (B, T)."""
    scores = [ws.source.score(examples, texts) for ws in sources]
    return compose([ws.term for ws in sources], scores, texts, offsets, num_tokens, response_mask)
