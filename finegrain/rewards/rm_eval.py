"""Honest evaluation of reward models: trivial baselines, bootstrap intervals, calibration, folds.

Everything here is pure statistics on lists and numpy arrays (no model, no torch): the RM's
predictions come in, numbers come out. Shape legend: R responses (span RMs) or prompts (pairwise
RMs), the units that are resampled together, since segments of one response and pairs of one
prompt are not independent; N segments; M bootstrap resamples.

- baselines a span RM must beat: flag every segment (its F1 is the floor of error F1), flag none
  (its accuracy is the floor of accuracy); a pairwise RM: the longer response wins, and the
  majority position (the first- or second-listed response of a pair, whichever wins more often);
- a 95% percentile bootstrap interval over units;
- expected calibration error and the reliability diagram's bins, for span RMs' P(error);
- k folds of examples (each example in exactly one held-out fold) and the threshold that
  maximises error F1, chosen on training predictions only.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BOOTSTRAP_SAMPLES = 1000


# --- counting ---------------------------------------------------------------------------------


def binary_count_rows(predicted: Sequence[Sequence[int]], gold: Sequence[Sequence[int]]) -> np.ndarray:
    """Per-response confusion counts (tp, fp, fn, tn), 1 = error the positive class.
    Shape: R ragged lists each way -> (R, 4)."""
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} prediction lists for {len(gold)} label lists")
    rows = np.zeros((len(gold), 4), dtype=np.int64)
    for r, (ps, gs) in enumerate(zip(predicted, gold)):
        if len(ps) != len(gs):
            raise ValueError(f"response {r}: {len(ps)} predictions for {len(gs)} labels")
        for p, g in zip(ps, gs):
            rows[r, (0 if g else 1) if p else (2 if g else 3)] += 1
    return rows


def f1_of_counts(counts: np.ndarray) -> np.ndarray:
    """Error-class F1 = 2tp / (2tp + fp + fn), 0 where there is no positive at all.
    Shape: (..., 4) -> (...)."""
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    den = 2 * tp + fp + fn
    return np.where(den > 0, 2 * tp / np.maximum(den, 1), 0.0)


def accuracy_of_counts(counts: np.ndarray) -> np.ndarray:
    """(tp + tn) / all. Shape: (..., 4) -> (...)."""
    total = counts.sum(-1)
    return np.where(total > 0, (counts[..., 0] + counts[..., 3]) / np.maximum(total, 1), 0.0)


def pair_accuracy_of_counts(counts: np.ndarray) -> np.ndarray:
    """right / pairs. Shape: (..., 2) columns (right, pairs) -> (...)."""
    return np.where(counts[..., 1] > 0, counts[..., 0] / np.maximum(counts[..., 1], 1), 0.0)


# --- bootstrap --------------------------------------------------------------------------------


def bootstrap_interval(
    units: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], *, samples: int = BOOTSTRAP_SAMPLES,
    level: float = 0.95, seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic(sum of resampled units)`.
    Resamples the R units (rows) with replacement `samples` times, sums each resample's rows
    and applies `statistic` to the (M, C) sums. Shape: units (R, C) -> (low, high)."""
    if len(units) == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(units), size=(samples, len(units)))  # (M, R)
    sums = units[idx].sum(axis=1)  # (M, C)
    values = statistic(sums)  # (M,)
    alpha = (1.0 - level) / 2
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return (float(low), float(high))


@dataclass(frozen=True)
class Estimate:
    """A metric with its 95% bootstrap interval."""

    value: float
    low: float
    high: float


def estimate(units: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], seed: int = 0) -> Estimate:
    """The statistic on all units and its bootstrap interval. Shape: units (R, C)."""
    return Estimate(float(statistic(units.sum(0))), *bootstrap_interval(units, statistic, seed=seed))


# --- span baselines and calibration -------------------------------------------------------------


def span_baseline_rows(gold: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-response counts of flagging every segment and of flagging none. Shape: -> (R, 4) each."""
    return (binary_count_rows([[1] * len(g) for g in gold], gold), binary_count_rows([[0] * len(g) for g in gold], gold))


def expected_calibration_error(probs: Sequence[float], labels: Sequence[int], bins: int = 10) -> float:
    """ECE: sum over equal-width P(error) bins of |mean P - share of errors| weighted by the bin's
    share of segments. Shape: probs (N,), labels (N,) -> scalar."""
    table = reliability_table(probs, labels, bins)
    n = sum(b.count for b in table)
    return sum(b.count / n * abs(b.mean_p - b.error_rate) for b in table if b.count) if n else 0.0


@dataclass(frozen=True)
class ReliabilityBin:
    low: float
    high: float
    count: int  # segments whose P(error) falls in [low, high) ([low, 1] for the last bin)
    mean_p: float  # their mean predicted P(error)
    error_rate: float  # the share of them that are errors


def reliability_table(probs: Sequence[float], labels: Sequence[int], bins: int = 10) -> list[ReliabilityBin]:
    """The reliability diagram's bins. Shape: probs (N,), labels (N,) -> `bins` rows."""
    if len(probs) != len(labels):
        raise ValueError(f"{len(probs)} probabilities for {len(labels)} labels")
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    which = np.minimum((p * bins).astype(np.int64), bins - 1)  # (N,): P = 1 goes to the last bin
    table = []
    for b in range(bins):
        sel = which == b
        n = int(sel.sum())
        table.append(ReliabilityBin(b / bins, (b + 1) / bins, n, float(p[sel].mean()) if n else 0.0,
                                    float(y[sel].mean()) if n else 0.0))
    return table


def plot_reliability(path: str | Path, table: Sequence[ReliabilityBin], title: str) -> Path:
    """Reliability diagram (observed error rate against mean P(error) per bin, with the diagonal
    and the bins' segment counts) as a PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(4.5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    used = [b for b in table if b.count]
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    top.plot([b.mean_p for b in used], [b.error_rate for b in used], marker="o", label="RM")
    top.set_ylabel("observed error rate")
    top.set_title(title, fontsize=9)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.legend(fontsize=8, loc="upper left")
    width = table[0].high - table[0].low if table else 0.1
    bottom.bar([b.low for b in table], [b.count for b in table], width=width, align="edge", color="tab:blue", alpha=0.6)
    bottom.set_xlabel("predicted P(error)")
    bottom.set_ylabel("segments")
    fig.tight_layout()
    from finegrain.io import save_figure

    return save_figure(fig, path, dpi=100)


def best_threshold(probs: Sequence[float], labels: Sequence[int]) -> float:
    """The P(error) threshold that maximises error F1 on these (training) predictions: the midpoint
    between the chosen cut's two neighbouring probabilities, so the same data is split the same way.
    0.5 when there is no error label. Shape: probs (N,), labels (N,) -> scalar."""
    if len(probs) != len(labels):
        raise ValueError(f"{len(probs)} probabilities for {len(labels)} labels")
    positives = sum(1 for y in labels if y)
    if not positives:
        return 0.5
    order = sorted(zip(probs, labels), key=lambda t: -t[0])
    best_f1, best_t, tp = -1.0, 0.5, 0
    for k, (p, y) in enumerate(order):  # flag the top k + 1
        tp += int(bool(y))
        if k + 1 < len(order) and order[k + 1][0] == p:
            continue  # a threshold cannot split equal probabilities
        f1 = 2 * tp / (k + 1 + positives)
        if f1 > best_f1:
            nxt = order[k + 1][0] if k + 1 < len(order) else 0.0
            best_f1, best_t = f1, (p + nxt) / 2
    return float(best_t)


# --- pairwise baselines -----------------------------------------------------------------------


def longer_wins_rows(lengths: Sequence[Sequence[int]], pairs: Sequence[Sequence[tuple[int, int]]]) -> np.ndarray:
    """Per-prompt (right, pairs) of the rule "the longer response is better"; a pair of equal
    lengths counts half. Shape: R prompts -> (R, 2) floats."""
    rows = np.zeros((len(pairs), 2))
    for r, (ls, ps) in enumerate(zip(lengths, pairs)):
        rows[r, 0] = sum(1.0 if ls[b] > ls[w] else 0.5 if ls[b] == ls[w] else 0.0 for b, w in ps)
        rows[r, 1] = len(ps)
    return rows


def first_listed_share(pairs: Sequence[Sequence[tuple[int, int]]]) -> float:
    """Share of pairs whose better response is the first-listed one (the lower index)."""
    n = sum(len(ps) for ps in pairs)
    return sum(1 for ps in pairs for b, w in ps if b < w) / n if n else 0.5


def majority_rows(pairs: Sequence[Sequence[tuple[int, int]]], first_wins: bool) -> np.ndarray:
    """Per-prompt (right, pairs) of always picking the first-listed (or second-listed) response.
    Shape: R prompts -> (R, 2)."""
    return np.array([[sum(1 for b, w in ps if (b < w) == first_wins), len(ps)] for ps in pairs], dtype=np.float64).reshape(-1, 2)


def to_record(metrics: object) -> dict:
    """A metrics dataclass as the plain JSON data a card or report stores (tuples become lists), so
    that what is saved and what is read back compare equal."""
    import dataclasses
    import json

    return json.loads(json.dumps(dataclasses.asdict(metrics)))


# --- folds ------------------------------------------------------------------------------------


def kfold_indices(n: int, k: int, seed: int = 0) -> list[list[int]]:
    """Split range(n) into k held-out folds of near-equal size after a shuffle by `seed`: every
    index is in exactly one fold."""
    if k < 2 or k > n:
        raise ValueError(f"need 2 <= folds <= {n} examples, got {k}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [sorted(order[f::k]) for f in range(k)]


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return (0.0, 0.0)
    return (float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0)
