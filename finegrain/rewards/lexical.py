"""Lexical reward models (`backbone: lexical`): a logistic model on a few word-count features of each
segment (span RMs) or response (pairwise RMs), for annotation sets of a few hundred responses.

On QA-Feedback's 300 examples (5-fold cross-validation, README), the fine-tuned transformers did not beat
the trivial rules; a linear model on these features did for factuality and completeness. The features
are read from the text alone (no tokenizer, no truncation: the whole passages count):

span RMs, one row per segment (SEGMENT_FEATURES):
- position, relative_position (index / (segments - 1)), last (1 for the response's last segment),
  segments (the response's count): where in the answer the segment sits;
- log_words: log(1 + the segment's words);
- question_overlap: the share of its content words found in the question;
- novelty: the share of its content words not used by an earlier segment;
- max_overlap_earlier: its highest word-set Jaccard with an earlier segment (a repeat);
- passage_support (only where the RM reads the passages): the share of its content words found in the
  passages (1 for a segment without content words).

pairwise RMs, one row per response (RESPONSE_FEATURES): log_words, sentences, distinct_share (distinct
content words / content words), question_overlap, repeated_3grams; with passages also passage_support,
passage_coverage (the share of the passages' distinct words it uses) and log_passage_words_used.

Fitting (scikit-learn's LogisticRegression on standardised rows, L2 penalty `l2`): a span RM is a
classifier of the segment's error label, the error class weighted by `error_weight`; a pairwise RM is
a linear Bradley-Terry model, score = w . z(x), fitted as a logistic regression without intercept on
the differences of each pair's rows (both orders). Saved as `lexical.json` beside the card; scoring
needs numpy only. What a user must know: such an RM rewards what its features count, so a policy
trained on it can raise passage_support by copying the passages, and the QA evaluation's passage-support
rate is then no longer independent of the factuality reward (docs/reward-models.md).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finegrain.config import ConfigError
from finegrain.data.records import Example
from finegrain.io import atomic_write_json
from finegrain.rewards.base import SegmentScores, pack_segment_scores
from finegrain.rewards.card import RMCard, calibration_of
from finegrain.words import content_words, jaccard, passage_words, repeated_ngram_share, words

if TYPE_CHECKING:
    import numpy as np

    from finegrain.data.categories import Taxonomy
    from finegrain.rewards.rm_config import RMTrainConfig
    from finegrain.segment import Segment

LEXICAL = "lexical"  # the backbone name
MODEL_FILE = "lexical.json"
MODEL_CLASS = "LexicalModel"
SEGMENT_FEATURES = ("position", "relative_position", "last", "segments", "log_words", "question_overlap", "novelty",
                    "max_overlap_earlier")
RESPONSE_FEATURES = ("log_words", "sentences", "distinct_share", "question_overlap", "repeated_3grams")
PASSAGE_SEGMENT_FEATURES = ("passage_support",)
PASSAGE_RESPONSE_FEATURES = ("passage_support", "passage_coverage", "log_passage_words_used")
TRUNCATION = "none: the features read the whole question, passages and response"


def segment_feature_names(passages: bool) -> tuple[str, ...]:
    return SEGMENT_FEATURES + (PASSAGE_SEGMENT_FEATURES if passages else ())


def response_feature_names(passages: bool) -> tuple[str, ...]:
    return RESPONSE_FEATURES + (PASSAGE_RESPONSE_FEATURES if passages else ())


def _share(ws: Sequence[str], found: set[str], empty: float) -> float:
    return sum(w in found for w in ws) / len(ws) if ws else empty


def segment_features(example: Example, response: str, segments: Sequence["Segment"], passages: bool) -> list[list[float]]:
    """One row per segment, in `segment_feature_names(passages)` order."""
    question = set(content_words(example.prompt))
    support = passage_words(example.passages) if passages else set()
    texts = [s.text(response) for s in segments]
    sets = [set(words(t)) for t in texts]
    rows, earlier = [], set()
    n = len(texts)
    for i, text in enumerate(texts):
        cw = content_words(text)
        row = [float(i), i / (n - 1) if n > 1 else 0.0, float(i == n - 1), float(n), math.log1p(len(words(text))),
               _share(cw, question, 0.0), sum(w not in earlier for w in cw) / len(cw) if cw else 0.0,
               max((jaccard(sets[i], sets[j]) for j in range(i)), default=0.0)]
        if passages:
            row.append(_share(cw, support, 1.0))
        rows.append(row)
        earlier.update(cw)
    return rows


def response_features(example: Example, response: str, passages: bool) -> list[float]:
    """One row, in `response_feature_names(passages)` order."""
    from finegrain.segment import segment_text

    cw = content_words(response)
    repeated, grams = repeated_ngram_share(response)
    row = [math.log1p(len(words(response))), float(len(segment_text(response, "sentence"))),
           len(set(cw)) / len(cw) if cw else 0.0, _share(cw, set(content_words(example.prompt)), 0.0),
           repeated / grams if grams else 0.0]
    if passages:
        support = passage_words(example.passages)
        used = set(cw) & support
        row += [_share(cw, support, 0.0), len(used) / len(support) if support else 0.0, math.log1p(len(used))]
    return row


# --- the model --------------------------------------------------------------------------------


@dataclass
class LinearModel:
    """w . (x - mean) / scale + intercept over named features."""

    features: list[str]
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float

    def decision(self, rows: Sequence[Sequence[float]]) -> "np.ndarray":
        import numpy as np

        x = np.asarray(rows, dtype=np.float64).reshape(-1, len(self.features))
        return ((x - np.asarray(self.mean)) / np.asarray(self.scale)) @ np.asarray(self.coef) + self.intercept

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / MODEL_FILE
        atomic_write_json(path, asdict(self))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "LinearModel":
        path = Path(folder) / MODEL_FILE
        if not path.is_file():
            raise ConfigError(f"{folder}: {MODEL_FILE} is missing (its card says backbone lexical; retrain with `finegrain rm train`)")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            model = cls(**raw)
        except (json.JSONDecodeError, TypeError) as err:
            raise ConfigError(f"{path}: malformed lexical model: {err}") from None
        for key in ("mean", "scale", "coef"):
            if len(getattr(model, key)) != len(model.features):
                raise ConfigError(f"{path}: field {key}: {len(getattr(model, key))} values for {len(model.features)} features")
        return model


def fit_linear(rows: Sequence[Sequence[float]], labels: Sequence[int], names: Sequence[str], *, l2: float,
               class_weight: dict[int, float] | None = None, intercept: bool = True, pair_differences: bool = False) -> LinearModel:
    """Logistic regression on standardised rows. `pair_differences`: `rows` are (better - worse) differences
    of raw feature rows: fitted without intercept on both orders, standardised by scale only."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(rows, dtype=np.float64).reshape(-1, len(names))
    y = np.asarray(labels, dtype=np.int64)
    if pair_differences:
        x, y = np.vstack([x, -x]), np.r_[np.ones(len(x), dtype=np.int64), np.zeros(len(x), dtype=np.int64)]
        mean = np.zeros(x.shape[1])
    else:
        mean = x.mean(0)
    scale = x.std(0)
    scale[scale < 1e-12] = 1.0
    fitted = LogisticRegression(C=1.0 / l2, class_weight=class_weight, fit_intercept=intercept, max_iter=10_000)
    fitted.fit((x - mean) / scale, y)
    return LinearModel(list(names), mean.tolist(), scale.tolist(), fitted.coef_[0].tolist(),
                       float(fitted.intercept_[0]) if intercept else 0.0)


# --- the reward sources -----------------------------------------------------------------------


class LexicalSpanRM:
    """A lexical span RM as a RewardSource: P(error) of every segment."""

    def __init__(self, model: LinearModel, card: RMCard):
        self.model, self.card, self.name = model, card, card.name
        self.density = self.level = card.level

    def for_head(self, name: str) -> "LexicalSpanRM":
        self.card.for_head(name)  # a ConfigError unless `name` is its category
        return self

    def probabilities(self, examples: Sequence[Example], responses: Sequence[str]) -> tuple[list[list[float]], list[list[int]]]:
        """P(error) of every segment of every response, and the segments' character ends."""
        from finegrain.segment import segment_text

        if len(examples) != len(responses):
            raise ValueError(f"{len(examples)} examples for {len(responses)} responses")
        probs, ends = [], []
        for ex, text in zip(examples, responses):
            segments = segment_text(text, self.level)
            ends.append([s.end for s in segments])
            rows = segment_features(ex, text, segments, self.card.passages)
            probs.append([1.0 / (1.0 + math.exp(-z)) for z in self.model.decision(rows)] if rows else [])
        return probs, ends

    def score(self, examples: Sequence[Example], responses: Sequence[str]) -> SegmentScores:
        """Shape: scores (B, S) = P(error) of segment j; char_ends (B, S); mask (B, S)."""
        return pack_segment_scores(*self.probabilities(examples, responses))


class LexicalPairwiseRM:
    """A lexical pairwise RM as a RewardSource: one raw score per non-empty response."""

    def __init__(self, model: LinearModel, card: RMCard):
        self.model, self.card, self.name = model, card, card.name
        self.density = "sequence"
        self.mean, self.std = card.calibration.mean, card.calibration.std  # standardise with (score - mean) / std
        self.responses_cut = 0  # nothing is cut: the features read the whole text

    def for_head(self, name: str) -> "LexicalPairwiseRM":
        self.card.for_head(name)
        return self

    def raw_scores(self, examples: Sequence[Example], responses: Sequence[str]) -> list[float]:
        if len(examples) != len(responses):
            raise ValueError(f"{len(examples)} examples for {len(responses)} responses")
        if not responses:
            return []
        return [float(z) for z in self.model.decision([response_features(e, r, self.card.passages) for e, r in zip(examples, responses)])]

    def score(self, examples: Sequence[Example], responses: Sequence[str]) -> SegmentScores:
        from finegrain.rewards.pairwise_rm import sequence_scores

        return sequence_scores(self.raw_scores(examples, responses), responses)


def load_lexical(path: str | Path, card: RMCard) -> "LexicalSpanRM | LexicalPairwiseRM":
    model = LinearModel.load(path)
    return LexicalSpanRM(model, card) if card.kind == "span" else LexicalPairwiseRM(model, card)


# --- training ---------------------------------------------------------------------------------


def _card(cfg: "RMTrainConfig", *, kind: str, name: str, level: str, categories: list[str], label_map: dict[str, str],
          score: str, passages: bool, features: Sequence[str], data: dict[str, Any], training: dict[str, Any]) -> RMCard:
    return RMCard(
        kind=kind, name=name, level=level, categories=categories, label_map=label_map, score=score,
        input_template=f"features of each {'response' if kind == 'pairwise' else level}: {', '.join(features)}",
        passages=passages, truncation=TRUNCATION, marker=None, max_length=0, backbone=LEXICAL, tokenizer="none (words: finegrain/words.py)",
        data=data, training=training, calibration=calibration_of([]), backbone_kind=LEXICAL, model_class=MODEL_CLASS,
        finetune={"method": "logistic regression (scikit-learn)", "trainable_parameters": len(features) + (kind == "span"),
                  "parameters": len(features) + (kind == "span"), "l2": cfg.l2},
    )


def _training(cfg: "RMTrainConfig", seconds: float, cpu: float, validation_prompts: int, passages: bool) -> dict[str, Any]:
    from finegrain.config import to_dict

    return {**to_dict(cfg), "passages": passages, "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3), "steps": 1,
            "epoch_losses": [], "epochs_run": None, "validation_losses": [], "best_epoch": None, "device": "cpu",
            "validation_prompts": validation_prompts, "threads": 1}


def train_lexical_span(cfg: "RMTrainConfig", train_examples: Sequence[Example], out_dir: str | Path, *,
                       eval_examples: Sequence[Example] | None, train_file: str | Path | None, eval_file: str | Path | None,
                       taxonomy: "Taxonomy", log: Callable[[str], None]) -> RMCard:
    """Fit a lexical span RM on the segment labels; save it with its card (threshold, calibration, and
    held-out metrics as a fine-tuned span RM's)."""
    from finegrain.errors import TrainingError
    from finegrain.rewards import rm_common
    from finegrain.rewards.rm_data import build_span_data, span_tasks
    from finegrain.rewards.rm_eval import to_record
    from finegrain.rewards.span_rm import LABEL_MAP, count_segments, evaluate_span, fit_threshold, span_data_counts

    (task,) = span_tasks(cfg, taxonomy)
    fit_examples, val_examples = rm_common.validation_examples(train_examples, cfg.validation, cfg.seed)
    data, val_data = build_span_data(fit_examples, task.categories, task.level), build_span_data(val_examples, task.categories, task.level)
    segments, errors = count_segments(data)
    if not errors or errors == segments:
        raise TrainingError(f"the {task.name} RM needs segments with and without an error to learn from; "
                            f"the training data has {errors} of {segments} segments with one")
    log(f"{task.name}: {len(data.items)} responses, {segments} {task.level} segments, {errors} with an error "
        f"({data.empty_skipped} empty responses skipped)")
    names = segment_feature_names(task.passages)
    import sklearn.linear_model  # noqa: F401  (imported before the clock starts: the fit is what is timed)

    start, cpu = time.perf_counter(), time.process_time()
    rows = [row for it in data.items for row in segment_features(it.example, it.response, it.segments, task.passages)]
    labels = [y for it in data.items for y in it.labels]
    model = fit_linear(rows, labels, names, l2=cfg.l2, class_weight={0: 1.0, 1: cfg.error_weight})
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    log(f"fitted on {len(rows)} segments x {len(names)} features in {seconds:.2f} s; weights: "
        + ", ".join(f"{n} {w:+.2f}" for n, w in zip(names, model.coef)))
    card = _card(cfg, kind="span", name=task.name, level=task.level, categories=list(task.categories), label_map=dict(LABEL_MAP),
                 score="p_error", passages=task.passages, features=names,
                 data=rm_common.data_section(train_file, eval_file, train_inputs=len(rows), **span_data_counts(data)),
                 training={**_training(cfg, seconds, cpu, len(val_examples), task.passages), "level": task.level})
    rm = LexicalSpanRM(model, card)
    card.calibration, threshold = fit_threshold(cfg, rm, data, val_data, log)
    card.training.update(threshold)
    if eval_examples is not None:
        eval_data = build_span_data(eval_examples, task.categories, task.level)
        if eval_data.items:
            card.metrics = to_record(evaluate_span(rm, eval_data, card.training["threshold"]))
            card.data["eval_responses"] = len(eval_data.items)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir)
    card.save(out_dir)
    return card


def train_lexical_pairwise(cfg: "RMTrainConfig", train_examples: Sequence[Example], out_dir: str | Path, *,
                           eval_examples: Sequence[Example] | None, train_file: str | Path | None, eval_file: str | Path | None,
                           log: Callable[[str], None]) -> RMCard:
    """Fit a linear Bradley-Terry model on the pairs' feature differences; save it with its card."""
    from finegrain.rewards import rm_common
    from finegrain.rewards.pairwise_rm import evaluate_pairwise, pair_data, pairs_section, training_pairs
    from finegrain.rewards.rm_eval import to_record

    fit_examples, val_examples = rm_common.validation_examples(train_examples, cfg.validation, cfg.seed)
    data, n_pairs = training_pairs(cfg, fit_examples, log)
    names = response_feature_names(cfg.with_passages)
    import sklearn.linear_model  # noqa: F401  (imported before the clock starts: the fit is what is timed)

    start, cpu = time.perf_counter(), time.process_time()
    diffs, seen = [], []  # seen: the non-empty training responses' rows, for the calibration
    for g in data.groups:
        rows = [response_features(g.example, r, cfg.with_passages) for r in g.responses]
        diffs += [[b - w for b, w in zip(rows[i], rows[j])] for i, j in g.pairs]
        seen += [row for row, r in zip(rows, g.responses) if r.strip()]
    model = fit_linear(diffs, [1] * len(diffs), names, l2=cfg.l2, intercept=False, pair_differences=True)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    log(f"fitted on {len(diffs)} pairs x {len(names)} features in {seconds:.2f} s; weights: "
        + ", ".join(f"{n} {w:+.2f}" for n, w in zip(names, model.coef)))
    card = _card(cfg, kind="pairwise", name=cfg.category, level="sequence", categories=[],
                 label_map={"score": "higher is better (Bradley-Terry logit)"}, score="raw", passages=cfg.with_passages, features=names,
                 data=rm_common.data_section(train_file, eval_file, **pairs_section(cfg, data, fit_examples, n_pairs, responses_cut=0)),
                 training=_training(cfg, seconds, cpu, len(val_examples), cfg.with_passages))
    card.calibration = calibration_of([float(z) for z in model.decision(seen)])
    rm = LexicalPairwiseRM(model, card)
    if eval_examples is not None:
        eval_data = pair_data(cfg, eval_examples)
        if eval_data.groups:
            card.metrics = to_record(evaluate_pairwise(rm, eval_data, card.data["first_listed_wins"] >= 0.5))  # the side of the training pairs
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir)
    card.save(out_dir)
    return card
