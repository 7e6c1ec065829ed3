"""The `rewards:` list of a train config -> the weighted reward sources the rollout scores with.

    rewards:
      - {kind: toxicity, mode: dense, weight: 1.0}                    # the paper's detox reward
      - {kind: rm, path: runs/rm-relevance, mapping: binary, reward_ok: 0.3, reward_error: -0.3}
      - {kind: rm, path: runs/rm-completeness, mapping: standardize, scale: 0.3}
      - {kind: rm, path: runs/rm-multitask, head: factuality, mapping: binary, reward_ok: 0.5, reward_error: -0.5}
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finegrain.config import ConfigError

if TYPE_CHECKING:
    from finegrain.rewards.card import RMCard
    from finegrain.rewards.compose import WeightedSource
    from finegrain.rewards.mapping import Mapping
    from finegrain.rl.config import RewardConfig


def check_sources(rewards: Sequence["RewardConfig"]) -> list["RMCard | None"]:
    """Fail fast on what can be checked without loading a model: RM folders and their cards, the head
    of a multi-task RM. Returns each source's card (a multi-task RM's: its head's; None for a non-RM
    source): the only time a card is read."""
    from finegrain.rewards.card import RMCard

    cards: list[RMCard | None] = []
    for i, r in enumerate(rewards):
        card = None
        if r.kind == "rm":
            folder = Path(r.path or "")
            if not folder.is_dir():
                raise ConfigError(f"rewards[{i}].path: {r.path!r} is not a folder (a trained reward model's)")
            card = RMCard.load(folder)
            if r.head is not None:
                card = card.for_head(r.head, f"rewards[{i}].head")
            elif card.heads:
                raise ConfigError(f"rewards[{i}].head: {r.path} is a multi-task RM; name the category to score with "
                                  f"(one of {', '.join(card.head_names)})")
            if r.mapping == "standardize" and card.kind == "span":
                raise ConfigError(f"rewards[{i}].mapping: standardize is for sequence RMs; {r.path} is a span RM (use binary)")
        cards.append(card)
    return cards


def build_mapping(r: "RewardConfig", card: "RMCard | None" = None) -> "Mapping":
    """The source's score -> reward mapping; an RM's card supplies the defaults (its calibration for
    `standardize`, the threshold it was trained with for `binary`)."""
    from finegrain.rewards.mapping import Affine, BinaryError, Standardize

    if r.mapping == "identity":
        return Affine()
    if r.mapping == "affine":
        return Affine(scale=r.scale, bias=r.bias)
    if r.mapping == "binary":
        card_threshold = card.training.get("threshold") if card is not None else None
        threshold = r.threshold if r.threshold is not None else card_threshold if card_threshold is not None else 0.5
        return BinaryError(reward_ok=r.reward_ok, reward_error=r.reward_error, threshold=threshold)
    mean = r.mean if r.mean is not None else card.calibration.mean if card is not None else None
    std = r.std if r.std is not None else card.calibration.std if card is not None else None
    if mean is None or std is None:
        raise ConfigError(f"rewards ({r.label}): standardize needs mean and std (set them, or use an RM whose card has a calibration)")
    return Standardize(mean=mean, std=std, scale=r.scale, bias=r.bias)


def build_sources(
    rewards: Sequence["RewardConfig"], cards: Sequence["RMCard | None"] | None = None, *, device: str | None = None, bf16: bool | None = None
) -> list["WeightedSource"]:
    """Load every configured source, with its weight and mapping, on `device` (None: the best one
    available; bf16 None: where the hardware runs it natively). `cards`: what `check_sources`
    returned (read again when not given)."""
    from finegrain.rewards.compose import RewardTerm, WeightedSource

    cards = list(cards) if cards is not None else check_sources(rewards)
    out = []
    loaded: dict[Path, Any] = {}  # a multi-task RM's folder -> its loaded model, shared by its heads' sources
    for r, card in zip(rewards, cards):
        if r.kind == "toxicity":
            from finegrain.rewards.toxicity import ToxicityReward, load_scorer

            source = ToxicityReward(load_scorer(r.scorer), mode=r.mode, name=r.label)
        else:
            from finegrain.rewards.card import load_reward_model

            folder = Path(r.path or "").resolve()
            if card is not None and card.heads and folder in loaded:
                source = loaded[folder].for_head(card.name)
            else:
                source = load_reward_model(r.path or "", device=device, bf16=bf16, card=card)
                loaded[folder] = source
        out.append(WeightedSource(source=source, term=RewardTerm(name=r.label, weight=r.weight, mapping=build_mapping(r, card))))
    return out
