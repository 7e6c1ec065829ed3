"""The one small protocol every reward source implements.

Shape legend: B responses, S segments (padded to the longest response's count).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from finegrain.data.records import Example

Density = Literal["token", "subsentence", "sentence", "sequence"]
DENSITIES: tuple[str, ...] = ("token", "subsentence", "sentence", "sequence")


@dataclass(frozen=True)
class SegmentScores:
    """What a source says about B responses: one score per segment, placed at the segment's end."""

    scores: "torch.Tensor"  # (B, S) float: score of segment j of response b; 0 where mask is False
    char_ends: "torch.Tensor"  # (B, S) long: end (exclusive character index) of segment j in response b
    mask: "torch.Tensor"  # (B, S) bool: True for real segments; an empty response has none


@runtime_checkable
class RewardSource(Protocol):
    """Scores responses at the source's own density. A sequence-level source has one segment per
    non-empty response, ending at its last character. Empty responses get no segment, never an error."""

    name: str
    density: Density

    def score(self, examples: Sequence["Example"], responses: Sequence[str]) -> SegmentScores:
        """`examples[b]` holds the prompt (and passages) that `responses[b]` answers."""
        ...


def pack_segment_scores(scores: Sequence[Sequence[float]], char_ends: Sequence[Sequence[int]]) -> SegmentScores:
    """Pad ragged per-response lists into a SegmentScores (S = the longest response's count, at least 1).

    `scores[b][j]` is the score of segment j of response b, `char_ends[b][j]` its end; a response
    with no segment (empty text) is an empty list and gets an all-False mask row.
    Shape: returns scores (B, S), char_ends (B, S), mask (B, S).
    """
    import torch

    if len(scores) != len(char_ends):
        raise ValueError(f"pack_segment_scores: {len(scores)} score lists but {len(char_ends)} char_ends lists")
    for b, (s, e) in enumerate(zip(scores, char_ends)):
        if len(s) != len(e):
            raise ValueError(f"pack_segment_scores: response {b} has {len(s)} scores but {len(e)} segment ends")
    B = len(scores)
    S = max([len(s) for s in scores] + [1])  # S >= 1 keeps (B, S) tensors non-degenerate
    out = SegmentScores(
        scores=torch.zeros(B, S, dtype=torch.float32),
        char_ends=torch.zeros(B, S, dtype=torch.long),
        mask=torch.zeros(B, S, dtype=torch.bool),
    )
    for b, (s, e) in enumerate(zip(scores, char_ends)):
        n = len(s)
        if n:
            out.scores[b, :n] = torch.tensor([float(x) for x in s], dtype=torch.float32)
            out.char_ends[b, :n] = torch.tensor([int(x) for x in e], dtype=torch.long)
            out.mask[b, :n] = True
    return out
