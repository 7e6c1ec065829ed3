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
