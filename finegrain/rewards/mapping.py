"""Mappings from a source's segment score to a reward, as small frozen dataclasses.

Each mapping is a pure function of a score tensor (any shape, elementwise), so the composer can
apply it to a (B, S) block and leave padding alone. The paper's settings, as mappings:

- relevance:    BinaryError(reward_ok=+0.3, reward_error=-0.3)  on P(error) per sub-sentence
- factuality:   BinaryError(reward_ok=+0.5, reward_error=-0.5)  on P(error) per sentence
- completeness: Standardize(mean, std, scale=0.3)               on the sequence RM's score
- toxicity:     Affine() (identity): the toxicity sources already emit rewards
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    import torch


def _check_finite(obj: object, **values: float) -> None:
    for name, value in values.items():
        if not math.isfinite(value):
            raise ValueError(f"{type(obj).__name__}.{name} must be a finite number, got {value!r}")


@dataclass(frozen=True)
class Affine:
    """reward = score * scale + bias."""

    scale: float = 1.0
    bias: float = 0.0

    def __post_init__(self) -> None:
        _check_finite(self, scale=self.scale, bias=self.bias)

    def __call__(self, scores: "torch.Tensor") -> "torch.Tensor":
        """Shape: any -> same."""
        return scores * self.scale + self.bias


@dataclass(frozen=True)
class Standardize:
    """reward = (score - mean) / std * scale + bias; mean and std come from the RM's scores on
    held-out data (the paper standardises its completeness RM this way, scale 0.3)."""

    mean: float
    std: float
    scale: float = 1.0
    bias: float = 0.0

    def __post_init__(self) -> None:
        _check_finite(self, mean=self.mean, std=self.std, scale=self.scale, bias=self.bias)
        if self.std <= 0:
            raise ValueError(f"Standardize.std must be > 0, got {self.std!r}")

    def __call__(self, scores: "torch.Tensor") -> "torch.Tensor":
        """Shape: any -> same."""
        return (scores - self.mean) / self.std * self.scale + self.bias


@dataclass(frozen=True)
class BinaryError:
    """A span RM's P(error) -> a fixed reward: `reward_error` when P(error) >= threshold, else
    `reward_ok` (the paper: +/-0.3 for relevance, +/-0.5 for factuality). The same rule as
    `finegrain rm eval` and the card's tuned threshold use, so the rewards are the evaluated classifier's."""

    reward_ok: float = 0.3
    reward_error: float = -0.3
    threshold: float = 0.5

    def __post_init__(self) -> None:
        _check_finite(self, reward_ok=self.reward_ok, reward_error=self.reward_error, threshold=self.threshold)
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"BinaryError.threshold must be in [0, 1] (a probability), got {self.threshold!r}")

    def __call__(self, scores: "torch.Tensor") -> "torch.Tensor":
        """Shape: any -> same."""
        import torch

        ok = torch.full_like(scores, self.reward_ok)
        return torch.where(scores >= self.threshold, torch.full_like(scores, self.reward_error), ok)


Mapping = Union[Affine, Standardize, BinaryError]
