"""Pairwise sequence reward models, trained with the Bradley-Terry loss.

- `preference`: the holistic RM, from the annotators' pairwise judgements (ties dropped);
- `completeness`: pairs of responses ranked by how much of the corrected response each covers.

A sequence classifier with one output reads (prompt, response) and gives a scalar score; the loss
-log sigmoid(r_better - r_worse) is averaged over a batch's pairs. Each step reads every response
of its prompts once, whatever the number of pairs it is in. As a RewardSource it returns the raw
score, one segment per response (density "sequence"); the card's calibration holds the score's
mean and std over the training responses, for the trainer to standardise with.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from finegrain.data.records import Example
from finegrain.rewards.base import SegmentScores, pack_segment_scores
from finegrain.rewards.card import MODEL_CLASS, RMCard, calibration_of
from finegrain.rewards.lexical import LEXICAL
from finegrain.rewards.rm_common import TrainedRM, pad_batch, with_cfg_threads
from finegrain.rewards.rm_data import (
    PairData,
    SequenceInput,
    completeness_data,
    encode_sequence,
    input_template,
    preference_data,
    prompt_text,
    with_extra_pairs,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from finegrain.rewards.rm_config import RMTrainConfig

TRUNCATION = (
    "the prompt is cut from its end (passages first, then the question, which keeps at least 64 tokens); "
    "a response that alone exceeds the rest of the window keeps its beginning (counted as response_cut)"
)


# --- pure maths -------------------------------------------------------------------------------


def bradley_terry_loss(better: "torch.Tensor", worse: "torch.Tensor") -> "torch.Tensor":
    """Mean of -log sigmoid(r_better - r_worse) over pairs.
    Shape: better (P,), worse (P,) -> scalar."""
    import torch

    return -torch.nn.functional.logsigmoid(better.float() - worse.float()).mean()


def pairwise_accuracy(scores: Sequence[Sequence[float]], pairs: Sequence[Sequence[tuple[int, int]]]) -> tuple[int, int]:
    """(pairs whose better response scores strictly higher, pairs) over all prompts."""
    right = sum(1 for s, ps in zip(scores, pairs) for b, w in ps if s[b] > s[w])
    return right, sum(len(ps) for ps in pairs)


def pair_data(cfg: "RMTrainConfig", examples: Sequence[Example], *, training: bool = False) -> PairData:
    """The RM's pairs; for training, with the auxiliary pairs of `cfg.extra_pairs` (never evaluated on)."""
    data = completeness_data(examples, cfg.coverage, cfg.margin) if cfg.category == "completeness" else preference_data(examples)
    if training and cfg.extra_pairs:
        data = with_extra_pairs(data, examples, cfg.extra_pairs)
    return data


# --- the reward source ------------------------------------------------------------------------


class PairwiseRewardModel(TrainedRM):
    """A trained sequence RM as a RewardSource: one raw score per non-empty response (an ensemble's:
    the mean of its members' scores)."""

    auto_class = "AutoModelForSequenceClassification"

    def __init__(self, model: "PreTrainedModel | Sequence[PreTrainedModel]", tokenizer: "PreTrainedTokenizerBase", card: RMCard, **kwargs: Any):
        super().__init__(model, tokenizer, card, **kwargs)
        self.density = "sequence"
        self.mean = card.calibration.mean  # standardise with (score - mean) / std
        self.std = card.calibration.std
        self.responses_cut = 0  # responses longer than the window, scored on their beginning

    def raw_scores(self, examples: Sequence[Example], responses: Sequence[str]) -> list[float]:
        """The model's score of every (prompt, response); empty responses are scored too."""
        if len(examples) != len(responses):
            raise ValueError(f"{len(examples)} examples for {len(responses)} responses")
        inputs = [
            encode_sequence(self.tokenizer, prompt_text(ex, self.card.passages), r, self.card.max_length)
            for ex, r in zip(examples, responses)
        ]
        self.responses_cut += sum(x.response_cut for x in inputs)
        out = [0.0] * len(inputs)
        for idx, scores in self.batched(inputs, lambda logits: logits[:, 0].float()):
            for row, i in enumerate(idx):
                out[i] = float(scores[row])
        return out

    def score(self, examples: Sequence[Example], responses: Sequence[str]) -> SegmentScores:
        return sequence_scores(self.raw_scores(examples, responses), responses)


def sequence_scores(raw: Sequence[float], responses: Sequence[str]) -> SegmentScores:
    """A sequence RM's raw scores as one segment per non-empty response, ending at its last character.
    Shape: scores (B, 1) raw score; char_ends (B, 1) = len(response); mask (B, 1) False for empty responses."""
    scores = [[s] if r.strip() else [] for s, r in zip(raw, responses)]
    ends = [[len(r)] if r.strip() else [] for r in responses]
    return pack_segment_scores(scores, ends)


@dataclass
class GroupCollator:
    """Batches prompts: all their responses become rows; `labels` holds each pair's
    (better row, worse row), which the Bradley-Terry loss reads."""

    pad_id: int

    def __call__(self, groups: list[dict[str, Any]]) -> dict[str, "torch.Tensor"]:
        import torch

        rows: list[SequenceInput] = []
        pairs: list[tuple[int, int]] = []
        for g in groups:
            base = len(rows)
            rows.extend(g["inputs"])
            pairs.extend((base + b, base + w) for b, w in g["pairs"])
        batch = pad_batch(rows, self.pad_id)
        batch["labels"] = torch.tensor(pairs, dtype=torch.long)  # (P, 2)
        return batch


def bt_loss_from_outputs(outputs: Any, labels: "torch.Tensor", num_items_in_batch: Any = None) -> "torch.Tensor":
    """The Trainer's loss hook. Shape: outputs.logits (N, 1), labels (P, 2) row indices -> scalar."""
    scores = outputs.logits[:, 0]  # (N,)
    return bradley_terry_loss(scores[labels[:, 0]], scores[labels[:, 1]])


def group_features(data: PairData, tok: "PreTrainedTokenizerBase", cfg: "RMTrainConfig", max_length: int) -> tuple[list[dict[str, Any]], int]:
    """The Trainer's examples, one per prompt (all its responses and its pairs), and how many
    responses had to be cut."""
    feats, cut = [], 0
    for g in data.groups:
        prompt = prompt_text(g.example, cfg.with_passages)
        inputs = [encode_sequence(tok, prompt, r, max_length) for r in g.responses]
        cut += sum(x.response_cut for x in inputs)
        feats.append({"inputs": inputs, "pairs": list(g.pairs)})
    return feats, cut


# --- evaluation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairwiseMetrics:
    prompts: int
    pairs: int
    accuracy: float  # share of pairs whose better response scores higher
    dropped: int  # ties (preference) or pairs closer than the margin (completeness)
    responses_per_second: float  # scoring throughput (encode + forward)
    accuracy_ci: tuple[float, float] = (0.0, 0.0)  # 95% bootstrap interval over prompts
    # the trivial rules on the same pairs: longer_wins (equal lengths count half) and majority
    # (always the first- or second-listed response, whichever wins more often: `first_wins`)
    baselines: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


def group_scores(data: PairData, flat: Sequence[float]) -> list[list[float]]:
    """Cut the flat list of every group's response scores back into one list per group."""
    scores, k = [], 0
    for g in data.groups:
        scores.append(list(flat[k : k + len(g.responses)]))
        k += len(g.responses)
    return scores


def pairwise_metrics(data: PairData, scores: Sequence[Sequence[float]], seconds: float = 0.0,
                     first_wins: bool | None = None) -> PairwiseMetrics:
    """Pairwise accuracy of `scores` (one list per group) with the trivial baselines on the same
    pairs and 95% bootstrap intervals over prompts. `first_wins`: the majority rule's side, chosen
    on training data (None: the side that wins more often in `data` itself, an optimistic baseline)."""
    import numpy as np

    from finegrain.rewards import rm_eval

    pairs = [g.pairs for g in data.groups]
    rows = np.array([pairwise_accuracy([s], [ps]) for s, ps in zip(scores, pairs)], dtype=np.float64).reshape(-1, 2)
    acc = rm_eval.estimate(rows, rm_eval.pair_accuracy_of_counts)
    longer = rm_eval.estimate(rm_eval.longer_wins_rows([[len(r) for r in g.responses] for g in data.groups], pairs),
                              rm_eval.pair_accuracy_of_counts)
    side = rm_eval.first_listed_share(pairs) >= 0.5 if first_wins is None else first_wins
    major = rm_eval.estimate(rm_eval.majority_rows(pairs, side), rm_eval.pair_accuracy_of_counts)
    n_resp = sum(len(g.responses) for g in data.groups)
    return PairwiseMetrics(
        prompts=len(data.groups),
        pairs=int(rows[:, 1].sum()),
        accuracy=acc.value,
        dropped=data.ties_dropped,
        responses_per_second=n_resp / seconds if seconds > 0 else 0.0,
        accuracy_ci=(acc.low, acc.high),
        baselines={
            "longer_wins": {"accuracy": longer.value, "accuracy_ci": (longer.low, longer.high)},
            "majority": {"accuracy": major.value, "accuracy_ci": (major.low, major.high), "first_wins": bool(side),
                         "chosen_on": "this data" if first_wins is None else "training data"},
        },
    )


def pair_scores(rm: PairwiseRewardModel, data: PairData) -> tuple[list[list[float]], float]:
    """Every group's response scores, and the seconds scoring took."""
    examples = [g.example for g in data.groups for _ in g.responses]
    responses = [r for g in data.groups for r in g.responses]
    start = time.perf_counter()
    flat = rm.raw_scores(examples, responses)
    return group_scores(data, flat), time.perf_counter() - start


def evaluate_pairwise(rm: PairwiseRewardModel, data: PairData, first_wins: bool | None = None) -> PairwiseMetrics:
    scores, seconds = pair_scores(rm, data)
    return pairwise_metrics(data, scores, seconds, first_wins)


# --- training ---------------------------------------------------------------------------------


def training_pairs(cfg: "RMTrainConfig", examples: Sequence[Example], log: Callable[[str], None]) -> tuple[PairData, int]:
    """The pairs to train on (with `cfg.extra_pairs`) and their number, logged; none is a TrainingError."""
    from finegrain.errors import TrainingError

    data = pair_data(cfg, examples, training=True)
    n_pairs = sum(len(g.pairs) for g in data.groups)
    if not n_pairs:
        raise TrainingError(f"no pairs to train the {cfg.category} RM on (need pairwise judgements"
                            + (" or corrected responses" if cfg.category == "completeness" else "") + ")")
    log(f"{cfg.category}: {len(data.groups)} prompts, {n_pairs} pairs ({data.ties_dropped} "
        f"{'ties' if cfg.category == 'preference' else 'near-ties'} and {data.empty_dropped} pairs with an empty response dropped)")
    return data, n_pairs


def pairs_section(cfg: "RMTrainConfig", data: PairData, fit_examples: Sequence[Example], n_pairs: int, responses_cut: int) -> dict[str, Any]:
    """The card's record of a pairwise RM's training pairs."""
    from finegrain.rewards.rm_eval import first_listed_share

    return dict(
        train_prompts=len(data.groups), train_pairs=n_pairs,
        dropped_ties_or_close=data.ties_dropped, dropped_empty=data.empty_dropped, responses_cut=responses_cut,
        first_listed_wins=first_listed_share([g.pairs for g in pair_data(cfg, fit_examples).groups]),  # the majority rule's side
        extra_pairs=list(cfg.extra_pairs or []),
        pairs_from=("annotator judgements, ties dropped" if cfg.category == "preference" else
                    f"{cfg.coverage} recall of the corrected response, pairs differing by >= {cfg.margin}"),
    )


@with_cfg_threads
def train_pairwise_rm(
    cfg: "RMTrainConfig",
    train_examples: Sequence[Example],
    out_dir: str | Path,
    *,
    eval_examples: Sequence[Example] | None = None,
    train_file: str | Path | None = None,
    eval_file: str | Path | None = None,
    device: str | None = None,
    log: Callable[[str], None] = print,
) -> RMCard:
    """Fine-tune a one-output sequence classifier with the Bradley-Terry loss; save it with its card
    (`backbone: lexical`: fit a linear Bradley-Terry model on word-count features, finegrain/rewards/lexical.py)."""
    if cfg.backbone == LEXICAL:
        from finegrain.rewards.lexical import train_lexical_pairwise

        return train_lexical_pairwise(cfg, train_examples, out_dir, eval_examples=eval_examples, train_file=train_file,
                                      eval_file=eval_file, log=log)
    import torch

    from finegrain.config import to_dict
    from finegrain.rewards import rm_common
    from finegrain.rewards.rm_eval import to_record

    # 1. data: (better, worse) pairs per prompt
    fit_examples, val_examples = rm_common.validation_examples(train_examples, cfg.validation, cfg.seed)
    data, n_pairs = training_pairs(cfg, fit_examples, log)
    val_data = pair_data(cfg, val_examples)

    # 2. backbone and inputs; 3. train with the HF Trainer and the Bradley-Terry loss: once per ensemble member
    dev = rm_common.pick_device(device)
    models, results = [], []
    for member in rm_common.member_configs(cfg):
        torch.manual_seed(member.seed)
        model, tok, kind = rm_common.load_backbone(member, "sequence", num_labels=1)
        if cfg.finetune == "lora":
            model = rm_common.add_lora(model, cfg, "sequence")
        finetune = rm_common.finetune_section(cfg, model)
        if not models:  # the inputs are the same for every member
            max_length = rm_common.backbone_max_length(cfg.max_length, tok, model.config)
            feats, cut = group_features(data, tok, cfg, max_length)
            val_feats, _ = group_features(val_data, tok, cfg, max_length)
            log(f"{sum(len(f['inputs']) for f in feats)} responses read per epoch (limit {max_length} tokens, {cut} responses cut)"
                + (f", {len(val_feats)} validation prompts" if val_feats else ""))
        if cfg.ensemble > 1:
            log(f"ensemble member {len(models) + 1}/{cfg.ensemble}, seed {member.seed}")
        results.append(rm_common.fit(model, tok, member, dev, feats, val_feats, GroupCollator(tok.pad_token_id or 0),
                                     bt_loss_from_outputs, log))
        models.append(rm_common.merged(model))

    # 4. save, calibrate on the training responses, evaluate on held-out prompts
    out_dir = Path(out_dir)
    members = rm_common.save_models(models, tok, out_dir)
    card = RMCard(
        kind="pairwise",
        backbone_kind=kind,
        model_class=MODEL_CLASS["pairwise"],
        finetune=finetune,
        name=cfg.category,
        level="sequence",
        categories=[],
        label_map={"score": "higher is better (Bradley-Terry logit)"},
        score="raw",
        input_template=input_template(tok, cfg.with_passages),
        passages=cfg.with_passages,
        truncation=TRUNCATION,
        marker=None,
        max_length=max_length,
        backbone=cfg.backbone,
        tokenizer=type(tok).__name__,
        data=rm_common.data_section(train_file, eval_file, **pairs_section(cfg, data, fit_examples, n_pairs, cut)),
        training={**to_dict(cfg), "passages": cfg.with_passages,
                  **rm_common.training_record(results, [m.seed for m in rm_common.member_configs(cfg)]),
                  "device": str(dev), "validation_prompts": len(val_examples),
                  "threads": torch.get_num_threads()},  # inside torch_threads(cfg.threads)
        calibration=calibration_of([]),
        members=members,
    )
    rm = PairwiseRewardModel(models, tok, card, device=str(dev), batch_size=cfg.score_batch_size, bf16=cfg.bf16)
    seen = [(g.example, r) for g in data.groups for r in g.responses if r.strip()]
    card.calibration = calibration_of(rm.raw_scores([e for e, _ in seen], [r for _, r in seen]))
    if eval_examples is not None:
        eval_data = pair_data(cfg, eval_examples)
        if eval_data.groups:
            card.metrics = to_record(evaluate_pairwise(rm, eval_data, card.data["first_listed_wins"] >= 0.5))
    card.save(out_dir)
    return card
