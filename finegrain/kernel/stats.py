"""Statistics by name: a recipe's per-step statistics are a NamedTuple of floats, and several of them
(micro-batches, minibatches) add up field by field, never by position in an anonymous vector.

    class SFTStats(NamedTuple):
        loss: float
        tokens: float
    total = add_stats([SFTStats(1.0, 3), SFTStats(2.0, 4)])   # SFTStats(loss=3.0, tokens=7)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, TypeVar

S = TypeVar("S", bound=tuple)


def add_stats(stats: Sequence[S]) -> S:
    """Field-wise sum of NamedTuples of one type (torchtune's `PPOStats(*map(sum, zip(*stats)))`)."""
    if not stats:
        raise ValueError("add_stats needs at least one value")
    return type(stats[0])(*map(sum, zip(*stats)))  # type: ignore[return-value]


def divide_stats(stats: S, n: float) -> S:
    """Every field divided by `n` (a sum over n items -> their mean)."""
    return type(stats)(*(v / n for v in stats))  # type: ignore[return-value]


def stats_row(stats: NamedTuple, prefix: str = "") -> dict[str, float]:
    """A metrics row: {prefix + field: value}."""
    return {f"{prefix}{k}": float(v) for k, v in stats._asdict().items()}


class PreferenceStats(NamedTuple):
    """A preference loss's statistics over some pairs, as sums (add them, then `preference_row`)."""

    loss: float
    chosen_reward: float  # implicit reward of the chosen responses
    rejected_reward: float
    correct: float  # pairs whose chosen response has the strictly higher implicit reward
    pairs: float


def preference_stats(out) -> PreferenceStats:
    """From a `finegrain.preference.PreferenceLoss`."""
    return PreferenceStats(
        float(out.losses.detach().sum()), float(out.chosen_rewards.sum()), float(out.rejected_rewards.sum()),
        float((out.chosen_rewards > out.rejected_rewards).sum()), float(out.losses.shape[0]),
    )


def preference_row(s: PreferenceStats, prefix: str = "") -> dict[str, float]:
    """Means per pair, under the names TRL logs (rewards/chosen, rewards/rejected, rewards/margins,
    rewards/accuracies) plus `accuracy` and `loss`."""
    n = max(s.pairs, 1)
    return {
        f"{prefix}loss": s.loss / n,
        f"{prefix}rewards/chosen": s.chosen_reward / n,
        f"{prefix}rewards/rejected": s.rejected_reward / n,
        f"{prefix}rewards/margins": (s.chosen_reward - s.rejected_reward) / n,
        f"{prefix}accuracy": s.correct / n,
        f"{prefix}pairs": s.pairs,
    }
