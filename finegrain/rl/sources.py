"""The `rewards:` list of a train config -> the weighted reward sources the rollout scores with.

    rewards:
      - {kind: toxicity, mode: dense, weight: 1.0}                    # the paper's detox reward
      - {kind: rm, path: runs/rm-relevance, mapping: binary, reward_ok: 0.3, reward_error: -0.3}
      - {kind: rm, path: runs/rm-completeness, mapping: standardize, scale: 0.3}
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from finegrain.config import ConfigError

if TYPE_CHECKING:
    from finegrain.rewards.compose import WeightedSource
    from finegrain.rewards.mapping import Mapping
    from finegrain.rl.config import RewardConfig


def check_sources(rewards: Sequence["RewardConfig"]) -> None:
    """Fail fast on what can be checked without loading a model: RM folders and their cards."""
    from finegrain.rewards.card import RMCard

    for i, r in enumerate(rewards):
        if r.kind == "rm":
            folder = Path(r.path or "")
            if not folder.is_dir():
                raise ConfigError(f"rewards[{i}].path: {r.path!r} is not a folder (a trained reward model's)")
            card = RMCard.load(folder)
            if r.mapping == "standardize" and card.kind == "span":
                raise ConfigError(f"rewards[{i}].mapping: standardize is for sequence RMs; {r.path} is a span RM (use binary)")


def build_mapping(r: "RewardConfig", calibration_mean: float | None = None, calibration_std: float | None = None) -> "Mapping":
    from finegrain.rewards.mapping import Affine, BinaryError, Standardize

    if r.mapping == "identity":
        return Affine()
    if r.mapping == "affine":
        return Affine(scale=r.scale, bias=r.bias)
    if r.mapping == "binary":
        return BinaryError(reward_ok=r.reward_ok, reward_error=r.reward_error, threshold=r.threshold)
    mean = r.mean if r.mean is not None else calibration_mean
    std = r.std if r.std is not None else calibration_std
    if mean is None or std is None:
        raise ConfigError(f"rewards ({r.label}): standardize needs mean and std (set them, or use an RM whose card has a calibration)")
    return Standardize(mean=mean, std=std, scale=r.scale, bias=r.bias)


def build_sources(rewards: Sequence["RewardConfig"], *, bf16: bool | None = None) -> list["WeightedSource"]:
    """Load every configured source, with its weight and mapping."""
    from finegrain.rewards.compose import RewardTerm, WeightedSource

    check_sources(rewards)
    out = []
    for r in rewards:
        if r.kind == "toxicity":
            from finegrain.rewards.toxicity import ToxicityReward, load_scorer

            source = ToxicityReward(load_scorer(r.scorer), mode=r.mode, name=r.label)
            mapping = build_mapping(r)
        else:
            from finegrain.rewards.card import RMCard, load_reward_model

            card = RMCard.load(r.path or "")
            source = load_reward_model(r.path or "", bf16=bf16)
            mapping = build_mapping(r, card.calibration.mean, card.calibration.std)
        out.append(WeightedSource(source=source, term=RewardTerm(name=r.label, weight=r.weight, mapping=mapping)))
    return out
