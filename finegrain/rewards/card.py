"""The reward-model card, `finegrain_rm.json`, saved beside every trained RM's HF files, and
`load_reward_model(path)`, which reads it and builds the matching RewardSource.

The card says what the model is (kind, categories, level, label map, input template, backbone,
tokenizer), what it learnt from (data file hashes, sizes, what was dropped), how (training
settings and time), how its scores are spread over the training data (calibration: the trainer
standardises a sequence RM with them) and how well it does on held-out data (metrics).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finegrain.config import ConfigError
from finegrain.io import atomic_write_json

if TYPE_CHECKING:
    from finegrain.rewards.base import RewardSource

CARD_FILE = "finegrain_rm.json"
CARD_VERSION = 1  # later fields (backbone_kind, model_class, finetune) have defaults: older cards still load
# what each entry of a multi-task card's `heads` holds (see RMCard.for_head)
HEAD_FIELDS = ("name", "level", "categories", "passages", "input_template", "calibration", "training", "data")
MODEL_CLASS = {"span": "AutoModelForTokenClassification", "pairwise": "AutoModelForSequenceClassification"}


@dataclass(frozen=True)
class Calibration:
    """Mean and std of the RM's score over the training data (span RMs: P(error) per segment;
    pairwise RMs: the raw score per response)."""

    mean: float
    std: float
    count: int


@dataclass
class RMCard:
    kind: str  # "span" or "pairwise"
    name: str  # the RM category: relevance, factuality, completeness, preference, ...
    level: str  # density of its scores: subsentence, sentence or sequence
    categories: list[str]  # span: annotation categories counted as errors; pairwise: []
    label_map: dict[str, str]  # span: {"0": "no error", "1": "error"}; pairwise: {"score": ...}
    score: str  # what `score()` returns: "p_error" (span) or "raw" (pairwise; standardise with calibration)
    input_template: str
    passages: bool  # whether the input holds the source passages
    truncation: str  # what happens when an input is longer than the backbone allows
    marker: str | None  # span: the token after every segment
    max_length: int
    backbone: str  # what it was fine-tuned from (embedded name, path or hub id)
    tokenizer: str  # tokenizer class; the tokenizer files are saved beside the model
    data: dict[str, Any]  # train/eval files, their sha256, item counts, what was dropped and why
    training: dict[str, Any]  # every setting of RMTrainConfig, plus seconds, steps, device, final loss
    calibration: Calibration
    metrics: dict[str, Any] = field(default_factory=dict)  # held-out evaluation, see `finegrain rm eval`
    backbone_kind: str = "encoder"  # "encoder" (BERT-like), "decoder" (a causal LM: heads read causally) or "lexical" (no transformer)
    # how to load the saved folder: transformers' Auto class (the architecture is in its config.json)
    model_class: str = ""  # AutoModelForTokenClassification (span) or AutoModelForSequenceClassification (pairwise)
    finetune: dict[str, Any] = field(default_factory=lambda: {"method": "full"})  # full or lora (merged), parameter counts
    # a multi-task span RM: one entry per head (name, level, categories, passages, input_template, calibration,
    # training (its threshold), data, metrics); head i reads logit columns 2i (no error) and 2i+1 (error). [] otherwise
    heads: list[dict[str, Any]] = field(default_factory=list)
    # an ensemble: the subfolders holding each member's weights (scores are averaged over them); []: the folder itself
    members: list[str] = field(default_factory=list)
    version: int = CARD_VERSION

    @property
    def head_names(self) -> list[str]:
        return [h["name"] for h in self.heads]

    @property
    def head_index(self) -> int:
        """Which head this card describes: its logit columns are 2i and 2i+1 (0 for a single-category RM)."""
        return self.head_names.index(self.name) if self.name in self.head_names else 0

    def for_head(self, name: str, field_name: str = "head") -> "RMCard":
        """The card of one category of this RM: for a multi-task RM, its head's level, categories, passages,
        calibration, threshold and metrics over the shared settings; for any other RM, itself when `name` is its
        category. A name it lacks is a ConfigError naming `field_name`."""
        if not self.heads:
            if name != self.name:
                raise ConfigError(f"{field_name}: {name!r}: this RM has one head, {self.name!r}")
            return self
        if name not in self.head_names:
            raise ConfigError(f"{field_name}: {name!r} is not a head of this multi-task RM; its heads: {', '.join(self.head_names)}")
        h = self.heads[self.head_names.index(name)]
        return dataclasses.replace(
            self, name=name, level=h["level"], categories=list(h["categories"]), passages=h["passages"],
            input_template=h["input_template"], calibration=Calibration(**h["calibration"]), metrics=h.get("metrics", {}),
            training={**self.training, **h["training"]}, data={**self.data, **h["data"]},
        )

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CARD_FILE
        atomic_write_json(path, asdict(self))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "RMCard":
        path = Path(folder) / CARD_FILE
        if not path.is_file():
            raise ConfigError(f"{folder} is not a finegrain reward model: {CARD_FILE} is missing (train one with `finegrain rm train`)")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        if raw.get("version") != CARD_VERSION:
            raise ConfigError(f"{path}: card version {raw.get('version')!r} is not supported (expected {CARD_VERSION})")
        if raw.get("kind") not in ("span", "pairwise"):
            raise ConfigError(f"{path}: field kind: {raw.get('kind')!r} is not 'span' or 'pairwise'")
        for i, head in enumerate(raw.get("heads") or []):
            missing = [k for k in HEAD_FIELDS if not isinstance(head, dict) or k not in head]
            if missing:
                raise ConfigError(f"{path}: field heads[{i}]: {missing[0]!r} is missing (a head has {', '.join(HEAD_FIELDS)})")
        try:
            raw["calibration"] = Calibration(**raw["calibration"])
            return cls(**raw)
        except (KeyError, TypeError) as err:
            raise ConfigError(f"{path}: malformed card: {err}") from None


def calibration_of(values: list[float]) -> Calibration:
    """Mean and (population) std; std 1.0 when there are fewer than two values or no spread,
    so standardising never divides by zero."""
    n = len(values)
    if n == 0:
        return Calibration(0.0, 1.0, 0)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / n
    std = math.sqrt(var)
    return Calibration(mean, std if std > 1e-8 else 1.0, n)


def load_reward_model(
    path: str | Path, *, device: str | None = None, batch_size: int = 16, bf16: bool | None = None, card: RMCard | None = None,
    head: str | None = None,
) -> "RewardSource":
    """A trained RM folder -> a RewardSource (SpanRewardModel or PairwiseRewardModel), from its card
    (read here unless the caller read it already). A multi-task RM scores one category: `head`, or the
    one its card (from `RMCard.for_head`) describes."""
    card = card if card is not None else RMCard.load(path)
    if head is not None:
        card = card.for_head(head)
    elif card.heads and card.name not in card.head_names:
        raise ConfigError(f"{path}: a multi-task RM with heads {', '.join(card.head_names)}: choose one "
                          f"(head=... here, `head:` in a reward source)")
    if card.backbone_kind == "lexical":
        from finegrain.rewards.lexical import load_lexical

        return load_lexical(path, card)
    if card.model_class not in ("", MODEL_CLASS[card.kind]):
        raise ConfigError(f"{Path(path) / CARD_FILE}: field model_class: {card.model_class!r} does not fit a {card.kind} RM "
                          f"(expected {MODEL_CLASS[card.kind]})")
    if card.kind == "span":
        from finegrain.rewards.span_rm import SpanRewardModel

        return SpanRewardModel.from_pretrained(path, card, device=device, batch_size=batch_size, bf16=bf16)
    from finegrain.rewards.pairwise_rm import PairwiseRewardModel

    return PairwiseRewardModel.from_pretrained(path, card, device=device, batch_size=batch_size, bf16=bf16)


def load_heads(path: str | Path, *, card: RMCard | None = None, **kwargs: Any) -> dict[str, "RewardSource"]:
    """Every category an RM folder scores, as {category: RewardSource}: each head of a multi-task RM
    (all sharing one loaded model), or the one category of any other RM. `kwargs` go to
    `load_reward_model` (device, batch_size, bf16)."""
    card = card if card is not None else RMCard.load(path)
    if not card.heads:
        return {card.name: load_reward_model(path, card=card, **kwargs)}
    out: dict[str, RewardSource] = {}
    for name in card.head_names:
        out[name] = load_reward_model(path, card=card.for_head(name), **kwargs) if not out else next(iter(out.values())).for_head(name)
    return out
