"""Span-classifier reward models: per-segment error / no-error, trained from span annotations.

The model is a token classifier (any HF encoder; default the embedded MiniLM) whose input is the
prompt and the response with a marker token after each segment; only marker positions carry a
label, so it learns to say at the end of each segment whether that segment holds an error of the
RM's categories. As a RewardSource it returns P(error) per segment (density = its level); the
composer turns that into a reward (the paper: +/-0.3 relevance, +/-0.5 factuality).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from finegrain.data.categories import DEFAULT_TAXONOMY, Taxonomy
from finegrain.data.records import Example
from finegrain.rewards.lexical import LEXICAL
from finegrain.rewards.base import SegmentScores, pack_segment_scores
from finegrain.rewards.card import MODEL_CLASS, RMCard, calibration_of
from finegrain.rewards.rm_common import TrainedRM, with_cfg_threads
from finegrain.rewards.rm_data import (
    SpanData,
    SpanInput,
    SpanTask,
    build_span_data,
    encode_span,
    input_template,
    prompt_text,
    span_tasks,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from finegrain.rewards.rm_config import RMTrainConfig

IGNORE = -100  # label of every non-marker position (torch's cross-entropy ignore_index)
LABEL_MAP = {"0": "no error", "1": "error"}
TRUNCATION = (
    "the prompt is cut from its end (passages first, then the question, which keeps at least 64 tokens); "
    "the response is never cut: one too long for the window is read in several windows of whole segments, "
    "each with the prompt; a single segment longer than a window keeps its end"
)


def marker_id(tok: "PreTrainedTokenizerBase", model: "PreTrainedModel | None", marker: str | None) -> tuple[str, int]:
    """The marker token and its id: `marker`, else the tokenizer's separator. A marker the
    vocabulary lacks is added as a special token (the model's embeddings grow by one row)."""
    name = marker or tok.sep_token or tok.eos_token
    if name is None:
        name = "<seg>"
    if name not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [name]})
        if model is not None:
            model.resize_token_embeddings(len(tok))
    return name, tok.convert_tokens_to_ids(name)


# --- pure maths -------------------------------------------------------------------------------


def weighted_marker_loss(logits: "torch.Tensor", labels: "torch.Tensor", error_weight: float | Sequence[float]) -> "torch.Tensor":
    """Cross-entropy over marker positions, the error class weighted by `error_weight` (one weight, or
    one per head): a weighted mean, as torch's weighted cross-entropy defines it, sum(w l) / sum(w)
    over the markers, w = 1 for no error and the head's weight for an error. A multi-task model has K
    heads of two columns each: label c is class c % 2 (0 no error, 1 error) of head c // 2, and each
    marker's loss reads its own head's two columns only (K = 1: plain two-class cross-entropy).
    Shape: logits (N, L, 2K), labels (N, L) in [0, 2K) or IGNORE off the markers -> scalar."""
    import torch

    flat = labels.reshape(-1)  # (N*L,)
    pairs = logits.reshape(flat.shape[0], -1, 2).float()  # (N*L, K, 2)
    head = torch.where(flat == IGNORE, 0, flat // 2)  # (N*L,)
    own = pairs[torch.arange(flat.shape[0], device=logits.device), head]  # (N*L, 2): the marker's own head
    target = torch.where(flat == IGNORE, IGNORE, flat % 2)
    weights = [float(error_weight)] * pairs.shape[1] if isinstance(error_weight, (int, float)) else [float(w) for w in error_weight]
    if len(set(weights)) == 1:
        weight = torch.tensor([1.0, weights[0]], device=logits.device)
        return torch.nn.functional.cross_entropy(own, target, weight=weight, ignore_index=IGNORE)
    per_marker = torch.nn.functional.cross_entropy(own, target, ignore_index=IGNORE, reduction="none")  # (N*L,), 0 off the markers
    head_weight = torch.tensor(weights, device=logits.device)[head]  # (N*L,)
    w = torch.where(target == 1, head_weight, torch.ones_like(head_weight)) * (flat != IGNORE)
    return (w * per_marker).sum() / w.sum().clamp(min=1e-12)


def head_p_error(logits: "torch.Tensor", head: int) -> "torch.Tensor":
    """P(error) of head `head`: the softmax over its two columns (2h no error, 2h + 1 error).
    Shape: logits (N, L, 2K) -> (N, L)."""
    return logits[..., 2 * head : 2 * head + 2].float().softmax(-1)[..., 1]


@dataclass(frozen=True)
class BinaryCounts:
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def accuracy(self) -> float:
        total = self.tp + self.fp + self.fn + self.tn
        return (self.tp + self.tn) / total if total else 0.0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def count_binary(predicted: Sequence[int], gold: Sequence[int]) -> BinaryCounts:
    """Confusion counts with 1 = error as the positive class."""
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predictions for {len(gold)} labels")
    pairs = list(zip(predicted, gold))
    return BinaryCounts(
        tp=sum(1 for p, g in pairs if p and g),
        fp=sum(1 for p, g in pairs if p and not g),
        fn=sum(1 for p, g in pairs if not p and g),
        tn=sum(1 for p, g in pairs if not p and not g),
    )


# --- the reward source ------------------------------------------------------------------------


class SpanRewardModel(TrainedRM):
    """A trained span RM as a RewardSource: `score()` gives P(error) for every segment: of its card's head
    (a multi-task RM), averaged over its members (an ensemble)."""

    auto_class = "AutoModelForTokenClassification"

    def __init__(self, model: "PreTrainedModel | Sequence[PreTrainedModel]", tokenizer: "PreTrainedTokenizerBase", card: RMCard, **kwargs: Any):
        super().__init__(model, tokenizer, card, **kwargs)
        self.density = card.level
        self.level = card.level
        self.head = card.head_index  # which head's two logit columns to read
        self.marker, self.marker_id = marker_id(tokenizer, None, card.marker)

    def for_head(self, name: str) -> "SpanRewardModel":
        """The same loaded model(s) scoring another head of a multi-task RM (no second copy in memory)."""
        return SpanRewardModel(self.models, self.tokenizer, self.card.for_head(name), device=str(self.device),
                               batch_size=self.batch_size, bf16=self.bf16)

    def _inputs(self, example: Example, response: str, segments: Sequence[Any]) -> list[SpanInput]:
        prompt = prompt_text(example, self.card.passages)
        return encode_span(self.tokenizer, prompt, response, segments, self.card.max_length, self.marker_id)

    def probabilities(self, examples: Sequence[Example], responses: Sequence[str]) -> tuple[list[list[float]], list[list[int]]]:
        """P(error) of every segment of every response, and the segments' character ends."""
        from finegrain.segment import segment_text

        if len(examples) != len(responses):
            raise ValueError(f"{len(examples)} examples for {len(responses)} responses")
        owners, flat = [], []
        ends: list[list[int]] = []
        probs: list[list[float]] = []
        for b, (ex, text) in enumerate(zip(examples, responses)):
            segments = segment_text(text, self.level)
            ends.append([s.end for s in segments])
            probs.append([0.0] * len(segments))
            for inp in self._inputs(ex, text, segments):
                owners.append(b)
                flat.append(inp)
        for b, inp, p in zip(owners, flat, self._marker_probabilities(flat)):
            for j, pj in zip(inp.segment_indices, p):
                probs[b][j] = pj
        return probs, ends

    def score(self, examples: Sequence[Example], responses: Sequence[str]) -> SegmentScores:
        """Shape: scores (B, S) = P(error) of segment j; char_ends (B, S); mask (B, S)."""
        probs, ends = self.probabilities(examples, responses)
        return pack_segment_scores(probs, ends)

    def _marker_probabilities(self, inputs: list[SpanInput]) -> list[list[float]]:
        out: list[list[float]] = [[] for _ in inputs]
        for idx, p_error in self.batched(inputs, lambda logits: head_p_error(logits, self.head)):
            for row, i in enumerate(idx):
                out[i] = p_error[row, inputs[i].marker_positions].tolist()
        return out


# --- evaluation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpanMetrics:
    responses: int
    segments: int
    error_rate: float  # share of gold segments with an error
    accuracy: float
    precision: float  # of the error class
    recall: float
    f1: float
    f1_all_error: float  # the F1 of flagging every segment: the floor a useful RM must beat
    threshold: float
    recall_by_category: dict[str, float]  # share of segments hit by each annotation category flagged
    responses_per_second: float  # scoring throughput (encode + forward), batch as configured
    f1_ci: tuple[float, float] = (0.0, 0.0)  # 95% bootstrap interval over responses
    accuracy_ci: tuple[float, float] = (0.0, 0.0)
    ece: float = 0.0  # expected calibration error of P(error), 10 equal-width bins
    # the trivial rules on the same segments: flag_all (f1, accuracy), flag_none (accuracy), each with its interval
    baselines: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


def span_metrics(
    probs: Sequence[Sequence[float]], data: SpanData, categories: Sequence[str], threshold: float, seconds: float = 0.0,
) -> SpanMetrics:
    """Metrics of P(error) predictions for `data`'s segments at `threshold`, with the trivial
    baselines on the same segments and 95% bootstrap intervals over responses."""
    import numpy as np

    from finegrain.rewards import rm_eval
    from finegrain.segment import label_segments

    gold = [list(it.labels) for it in data.items]
    pred = [[int(p >= threshold) for p in ps] for ps in probs]
    rows = rm_eval.binary_count_rows(pred, gold)  # (R, 4)
    counts = BinaryCounts(*(int(x) for x in rows.sum(0)))
    f1 = rm_eval.estimate(rows, rm_eval.f1_of_counts)
    acc = rm_eval.estimate(rows, rm_eval.accuracy_of_counts)
    flag_all, flag_none = rm_eval.span_baseline_rows(gold)
    all_f1, all_acc = rm_eval.estimate(flag_all, rm_eval.f1_of_counts), rm_eval.estimate(flag_all, rm_eval.accuracy_of_counts)
    none_acc = rm_eval.estimate(flag_none, rm_eval.accuracy_of_counts)
    by_cat: dict[str, float] = {}
    for cat in categories:
        hit, found = 0, 0
        for it, ps in zip(data.items, probs):
            for lab, p in zip(label_segments(list(it.segments), list(it.spans), [cat], it.response), ps):
                if lab:
                    hit += 1
                    found += int(p >= threshold)
        if hit:
            by_cat[cat] = found / hit
    flat_p = [p for ps in probs for p in ps]
    flat_y = [y for ys in gold for y in ys]
    n_seg = int(rows.sum())
    return SpanMetrics(
        responses=len(data.items),
        segments=n_seg,
        error_rate=float(np.mean(flat_y)) if flat_y else 0.0,
        accuracy=counts.accuracy,
        precision=counts.precision,
        recall=counts.recall,
        f1=counts.f1,
        f1_all_error=all_f1.value,
        threshold=threshold,
        recall_by_category=by_cat,
        responses_per_second=len(data.items) / seconds if seconds > 0 else 0.0,
        f1_ci=(f1.low, f1.high),
        accuracy_ci=(acc.low, acc.high),
        ece=rm_eval.expected_calibration_error(flat_p, flat_y),
        baselines={
            "flag_all": {"f1": all_f1.value, "f1_ci": (all_f1.low, all_f1.high), "accuracy": all_acc.value},
            "flag_none": {"f1": 0.0, "accuracy": none_acc.value, "accuracy_ci": (none_acc.low, none_acc.high)},
        },
    )


def span_probabilities(rm: SpanRewardModel, data: SpanData) -> tuple[list[list[float]], float]:
    """P(error) of every segment of `data`'s responses, and the seconds scoring took."""
    import time

    start = time.perf_counter()
    probs, _ = rm.probabilities([it.example for it in data.items], [it.response for it in data.items])
    return probs, time.perf_counter() - start


def evaluate_span(rm: SpanRewardModel, data: SpanData, threshold: float | None = None) -> SpanMetrics:
    threshold = rm.card.training.get("threshold", 0.5) if threshold is None else threshold
    probs, seconds = span_probabilities(rm, data)
    return span_metrics(probs, data, rm.card.categories, threshold, seconds)


# --- training ---------------------------------------------------------------------------------


def _features(items: Sequence[Any], tok: "PreTrainedTokenizerBase", passages: bool, max_length: int, mid: int,
              head: int = 0) -> list[dict[str, list[int]]]:
    """The Trainer's examples: token-classification inputs whose labels sit on the markers only, as
    column 2 * head + label (the columns of the head that judges them)."""
    feats = []
    for it in items:
        prompt = prompt_text(it.example, passages)
        for inp in encode_span(tok, prompt, it.response, it.segments, max_length, mid):
            labels = [IGNORE] * len(inp.input_ids)
            for pos, j in zip(inp.marker_positions, inp.segment_indices):
                labels[pos] = 2 * head + it.labels[j]
            feat = {"input_ids": inp.input_ids, "attention_mask": [1] * len(inp.input_ids), "labels": labels}
            if inp.token_type_ids is not None:
                feat["token_type_ids"] = inp.token_type_ids
            feats.append(feat)
    return feats


def _head_labels(tasks: Sequence[SpanTask]) -> dict[int, str]:
    """id2label of the classifier: "no error"/"error" for one head, "<category>: no error"/... for several."""
    if len(tasks) == 1:
        return {0: "no error", 1: "error"}
    return {2 * i + y: f"{t.name}: {LABEL_MAP[str(y)]}" for i, t in enumerate(tasks) for y in (0, 1)}


@with_cfg_threads
def train_span_rm(
    cfg: "RMTrainConfig",
    train_examples: Sequence[Example],
    out_dir: str | Path,
    *,
    eval_examples: Sequence[Example] | None = None,
    train_file: str | Path | None = None,
    eval_file: str | Path | None = None,
    taxonomy: Taxonomy = DEFAULT_TAXONOMY,
    device: str | None = None,
    log: Callable[[str], None] = print,
) -> RMCard:
    """Fine-tune a token classifier on segment labels, save it with its card in `out_dir` (`backbone: lexical`:
    fit a logistic model on word-count features instead, finegrain/rewards/lexical.py). With
    `cfg.tasks`, one classifier with a head per category, trained on every category's inputs at once (mixed
    batches); with `cfg.ensemble` > 1, that many classifiers with consecutive seeds, scored as their mean."""
    if cfg.backbone == LEXICAL:
        from finegrain.rewards.lexical import train_lexical_span

        return train_lexical_span(cfg, train_examples, out_dir, eval_examples=eval_examples, train_file=train_file,
                                  eval_file=eval_file, taxonomy=taxonomy, log=log)
    import torch
    from transformers import DataCollatorForTokenClassification

    from finegrain.config import to_dict
    from finegrain.errors import TrainingError
    from finegrain.rewards import rm_common
    from finegrain.rewards.rm_eval import to_record

    # 1. data: segment and label every annotated response, for each head as its single-category RM does
    tasks = span_tasks(cfg, taxonomy)
    multi = len(tasks) > 1
    fit_examples, val_examples = rm_common.validation_examples(train_examples, cfg.validation, cfg.seed)
    datas = [build_span_data(fit_examples, t.categories, t.level) for t in tasks]
    val_datas = [build_span_data(val_examples, t.categories, t.level) for t in tasks]
    for task, data in zip(tasks, datas):
        if not data.items:
            raise TrainingError(f"no annotated, non-empty responses to train the {task.name} RM on")
        log(f"{task.name}: {len(data.items)} responses, {count_segments(data)[0]} {task.level} segments, {count_segments(data)[1]} with an error "
            f"({data.empty_skipped} empty responses skipped)")

    # 2. backbone, tokenizer, marker; 3. train with the HF Trainer: once per ensemble member
    dev = rm_common.pick_device(device)
    loss_func = None
    head_weights = cfg.head_error_weights()
    if head_weights != [1.0] or multi:  # several heads: each marker's loss on its own head's columns
        def loss_func(outputs: Any, labels: "torch.Tensor", num_items_in_batch: Any = None) -> "torch.Tensor":
            return weighted_marker_loss(outputs.logits, labels, head_weights)
    id2label = _head_labels(tasks)
    models, results = [], []
    for member in rm_common.member_configs(cfg):
        torch.manual_seed(member.seed)
        model, tok, kind = rm_common.load_backbone(
            member, "token", num_labels=len(id2label), id2label=id2label, label2id={v: k for k, v in id2label.items()}
        )
        marker, mid = marker_id(tok, model, cfg.marker)
        if cfg.finetune == "lora":
            model = rm_common.add_lora(model, cfg, "token")
        finetune = rm_common.finetune_section(cfg, model)
        if not models:  # the inputs are the same for every member
            max_length = rm_common.backbone_max_length(cfg.max_length, tok, model.config)
            feats = [f for i, (t, d) in enumerate(zip(tasks, datas)) for f in _features(d.items, tok, t.passages, max_length, mid, i)]
            val_feats = [f for i, (t, d) in enumerate(zip(tasks, val_datas))
                         for f in _features(d.items, tok, t.passages, max_length, mid, i)]
            log(f"{len(feats)} model inputs (max {max(len(f['input_ids']) for f in feats)} tokens, limit {max_length})"
                + (f", {len(val_feats)} validation inputs from {len(val_examples)} prompts" if val_feats else ""))
        if cfg.ensemble > 1:
            log(f"ensemble member {len(models) + 1}/{cfg.ensemble}, seed {member.seed}")
        results.append(rm_common.fit(model, tok, member, dev, feats, val_feats,
                                     DataCollatorForTokenClassification(tok, label_pad_token_id=IGNORE), loss_func, log))
        models.append(rm_common.merged(model))

    # 4. save the model(s), then calibrate, set the threshold and evaluate each head as the RewardSource it will be
    out_dir = Path(out_dir)
    members = rm_common.save_models(models, tok, out_dir)
    template = f"{{segment 1}} {marker} {{segment 2}} {marker} ..."
    primary = tasks[0]
    card = RMCard(
        kind="span",
        backbone_kind=kind,
        model_class=MODEL_CLASS["span"],
        finetune=finetune,
        name="+".join(t.name for t in tasks),
        level="+".join(t.level for t in tasks),
        categories=[c for t in tasks for c in t.categories],
        label_map=dict(LABEL_MAP) if not multi else {str(k): v for k, v in id2label.items()},
        score="p_error",
        input_template=input_template(tok, primary.passages, template) if not multi else "per head, see heads",
        passages=any(t.passages for t in tasks),
        truncation=TRUNCATION,
        marker=marker,
        max_length=max_length,
        backbone=cfg.backbone,
        tokenizer=type(tok).__name__,
        data=rm_common.data_section(
            train_file, eval_file, train_inputs=len(feats), **({} if multi else span_data_counts(datas[0]))
        ),
        training={**to_dict(cfg), **({} if multi else {"level": primary.level, "passages": primary.passages}),
                  **rm_common.training_record(results, [m.seed for m in rm_common.member_configs(cfg)]),
                  "device": str(dev), "validation_prompts": len(val_examples),
                  "threads": torch.get_num_threads()},  # inside torch_threads(cfg.threads)
        calibration=calibration_of([]),
        heads=[{"name": t.name, "level": t.level, "categories": list(t.categories), "passages": t.passages,
                "input_template": input_template(tok, t.passages, template), "calibration": dataclasses.asdict(calibration_of([])),
                "training": {"level": t.level, "passages": t.passages, "threshold": cfg.threshold, "error_weight": w},
                "data": span_data_counts(d), "metrics": {}} for t, d, w in zip(tasks, datas, head_weights)] if multi else [],
        members=members,
    )
    eval_datas = [build_span_data(eval_examples, t.categories, t.level) for t in tasks] if eval_examples is not None else []
    for i, task in enumerate(tasks):
        rm = SpanRewardModel(models, tok, card.for_head(task.name), device=str(dev), batch_size=cfg.score_batch_size, bf16=cfg.bf16)
        calibration, training = fit_threshold(cfg, rm, datas[i], val_datas[i], log)
        metrics, data = {}, {}
        if eval_datas and eval_datas[i].items:
            metrics = to_record(evaluate_span(rm, eval_datas[i], training["threshold"]))
            data = {"eval_responses": len(eval_datas[i].items)}
        if multi:
            card.heads[i].update(calibration=dataclasses.asdict(calibration), metrics=metrics)
            card.heads[i]["training"].update(training)
            card.heads[i]["data"].update(data)
        else:
            card.calibration, card.metrics = calibration, metrics
            card.training.update(training)
            card.data.update(data)
    card.save(out_dir)
    return card


def count_segments(data: SpanData) -> tuple[int, int]:
    """(segments, error segments)."""
    return sum(len(it.labels) for it in data.items), sum(sum(it.labels) for it in data.items)


def span_data_counts(data: SpanData) -> dict[str, int]:
    segments, errors = count_segments(data)
    return {"train_responses": len(data.items), "train_segments": segments, "train_error_segments": errors,
            "empty_skipped": data.empty_skipped}


def fit_threshold(cfg: "RMTrainConfig", rm: SpanRewardModel, data: SpanData, val_data: SpanData,
                   log: Callable[[str], None]) -> tuple[Any, dict[str, float]]:
    """One head's calibration over its training segments and its threshold: the config's, or the best on
    the validation split (else the training data); both candidates are recorded either way."""
    from finegrain.rewards.rm_eval import best_threshold

    probs, _ = span_probabilities(rm, data)
    out = {"threshold": cfg.threshold,
           "threshold_on_train": best_threshold([p for ps in probs for p in ps], [y for it in data.items for y in it.labels])}
    if val_data.items:
        val_probs, _ = span_probabilities(rm, val_data)
        out["threshold_on_validation"] = best_threshold([p for ps in val_probs for p in ps], [y for it in val_data.items for y in it.labels])
    if cfg.tune_threshold:
        out["threshold"] = out.get("threshold_on_validation", out["threshold_on_train"])
        log(f"{rm.name}: threshold {out['threshold']:.3f} (best error F1 on the "
            f"{'validation split' if val_data.items else 'training data'})")
    return calibration_of([p for ps in probs for p in ps]), out
