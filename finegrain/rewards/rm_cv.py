"""k-fold cross-validation of a reward-model configuration over one feedback file (`finegrain rm cv`).

The examples (prompts) are shuffled by the seed and dealt into k folds; each fold is held out once
while an RM is trained on the other k-1 with the same settings. Nothing is chosen on the held-out
fold: a span RM's tuned threshold comes from its training folds' predictions, the majority rule's
side from the training folds' pairs. Each fold reports the RM's metric with the trivial baselines
on the same held-out data; the summary gives the mean and the spread (sample std) over folds.
"""

from __future__ import annotations

import dataclasses
import random
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finegrain.data.categories import DEFAULT_TAXONOMY, Taxonomy
from finegrain.data.records import Example
from finegrain.rewards import rm_eval

if TYPE_CHECKING:
    from finegrain.rewards.rm_config import RMTrainConfig


def fold_split(examples: Sequence[Example], folds: int, seed: int, train_examples: int | None = None) -> list[tuple[list[Example], list[Example]]]:
    """(training examples, held-out examples) for each fold; every example is held out exactly once.
    `train_examples`: train on only that many of the other folds' examples (drawn by `seed`), for a
    learning curve whose held-out folds stay the same."""
    held = rm_eval.kfold_indices(len(examples), folds, seed)
    out = []
    for idx in held:
        keep = set(idx)
        train = [ex for i, ex in enumerate(examples) if i not in keep]
        if train_examples is not None and train_examples < len(train):
            train = [train[i] for i in sorted(random.Random(seed).sample(range(len(train)), train_examples))]
        out.append((train, [examples[i] for i in idx]))
    return out


FoldResult = tuple[dict[str, Any], list[float], list[int]]  # a fold's row, and a span head's held-out P(error) and labels


def _span_fold(cfg: "RMTrainConfig", train: list[Example], held: list[Example], folder: Path | None,
               taxonomy: Taxonomy, device: str | None, log: Callable[[str], None]) -> dict[str, FoldResult]:
    """Each head's held-out row (one head unless cfg.tasks), all from one training on `train`."""
    from finegrain.rewards.card import load_heads
    from finegrain.rewards.rm_data import build_span_data, span_tasks
    from finegrain.rewards.span_rm import span_metrics, span_probabilities, train_span_rm

    tasks = span_tasks(cfg, taxonomy)
    card = train_span_rm(cfg, train, folder, taxonomy=taxonomy, device=device, log=log) if folder is not None else None
    out: dict[str, FoldResult] = {}
    rms = load_heads(folder, card=card, device=device, batch_size=cfg.score_batch_size, bf16=cfg.bf16) if card is not None else {}
    for task in tasks:
        data = build_span_data(held, task.categories, task.level)
        gold = [list(it.labels) for it in data.items]
        if card is None:  # baselines only: a metric that never flags, on the same segments
            m = span_metrics([[0.0] * len(g) for g in gold], data, task.categories, 0.5)
            out[task.name] = {"baselines": m.baselines, "segments": m.segments, "error_rate": m.error_rate}, [], []
            continue
        head, rm = card.for_head(task.name), rms[task.name]  # a multi-task RM's heads share one loaded model
        probs, seconds = span_probabilities(rm, data)
        fixed = span_metrics(probs, data, task.categories, cfg.threshold, seconds)
        tuned_t = float(head.training["threshold_on_train"])
        tuned = span_metrics(probs, data, task.categories, tuned_t, seconds)
        row = {
            **{k: v for k, v in dataclasses.asdict(fixed).items() if k != "recall_by_category"},
            "f1_tuned_threshold": tuned.f1, "accuracy_tuned_threshold": tuned.accuracy, "threshold_tuned": tuned_t,
            "threshold_used": head.training["threshold"],
            "train_cpu_seconds": head.training["cpu_seconds"], "train_seconds": head.training["seconds"],
            "epochs_run": head.training.get("epochs_run"),
        }
        if head.training["threshold"] != cfg.threshold:  # the config asked for the tuned threshold: report that
            used = span_metrics(probs, data, task.categories, float(head.training["threshold"]), seconds)
            row.update(f1=used.f1, accuracy=used.accuracy, precision=used.precision, recall=used.recall, f1_ci=used.f1_ci)
        out[task.name] = row, [p for ps in probs for p in ps], [y for ys in gold for y in ys]
    return out


def _pairwise_fold(cfg: "RMTrainConfig", train: list[Example], held: list[Example], folder: Path | None,
                   device: str | None, log: Callable[[str], None]) -> dict[str, Any]:
    from finegrain.rewards.card import load_reward_model
    from finegrain.rewards.pairwise_rm import pair_data, pair_scores, pairwise_metrics, train_pairwise_rm

    data = pair_data(cfg, held)
    side = rm_eval.first_listed_share([g.pairs for g in pair_data(cfg, train).groups]) >= 0.5
    if folder is None:
        m = pairwise_metrics(data, [[0.0] * len(g.responses) for g in data.groups], first_wins=side)
        return {"baselines": m.baselines, "pairs": m.pairs}
    card = train_pairwise_rm(cfg, train, folder, device=device, log=log)
    rm = load_reward_model(folder, device=device, batch_size=cfg.score_batch_size, bf16=cfg.bf16, card=card)
    scores, seconds = pair_scores(rm, data)
    m = pairwise_metrics(data, scores, seconds, first_wins=side)
    return {**dataclasses.asdict(m), "train_cpu_seconds": card.training["cpu_seconds"],
            "train_seconds": card.training["seconds"], "epochs_run": card.training.get("epochs_run")}


SUMMARY_KEYS = {
    "span": ("f1", "accuracy", "f1_tuned_threshold", "accuracy_tuned_threshold", "ece", "train_cpu_seconds",
             "responses_per_second"),
    "pairwise": ("accuracy", "train_cpu_seconds", "responses_per_second"),
}
BASELINE_KEYS = {
    "span": (("flag_all", "f1"), ("flag_all", "accuracy"), ("flag_none", "accuracy")),
    "pairwise": (("longer_wins", "accuracy"), ("majority", "accuracy")),
}


def summarise(kind: str, rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and spread (sample std over folds) of every reported metric and baseline."""
    out: dict[str, dict[str, float]] = {}
    for key in SUMMARY_KEYS[kind]:
        values = [r[key] for r in rows if r.get(key) is not None]
        if values:
            mean, spread = rm_eval.mean_and_spread(values)
            out[key] = {"mean": mean, "spread": spread}
    for rule, metric in BASELINE_KEYS[kind]:
        mean, spread = rm_eval.mean_and_spread([r["baselines"][rule][metric] for r in rows])
        out[f"{rule}_{metric}"] = {"mean": mean, "spread": spread}
    return out


def cross_validate(
    cfg: "RMTrainConfig",
    examples: Sequence[Example],
    out_dir: str | Path,
    *,
    folds: int = 5,
    seed: int = 0,
    data_file: str | Path | None = None,
    taxonomy: Taxonomy = DEFAULT_TAXONOMY,
    device: str | None = None,
    keep_models: bool = False,
    baselines_only: bool = False,
    train_examples: int | None = None,
    only_folds: Sequence[int] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train and evaluate `cfg` on each of `folds` folds of `examples`; write each fold to
    `fold-N.json` as it finishes, then `cv.json` (and, for a span RM, `reliability.png` of the pooled
    held-out predictions) in `out_dir`; return the report. A fold already saved in `out_dir` by a run
    with the same settings, data and folds is reused, so an interrupted run resumes and folds can run
    in parallel processes (`only_folds`: compute only these, report those and any saved)."""
    from finegrain.config import to_dict
    from finegrain.io import atomic_write_json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # what a saved fold must match to be reused: the settings, the data, the folds
    key = {"config": _config_key(cfg), "data_sha256": _examples_digest(examples), "folds": folds, "seed": seed,
           "train_examples": train_examples, "baselines_only": baselines_only}
    heads = cfg.head_names if cfg.kind == "span" else [cfg.category]  # several: a multi-task RM's categories
    rows: dict[str, list[dict[str, Any]]] = {h: [] for h in heads}
    pooled: dict[str, tuple[list[float], list[int]]] = {h: ([], []) for h in heads}
    n_train = 0
    for f, (train, held) in enumerate(fold_split(examples, folds, seed, train_examples)):
        n_train = len(train)
        saved = _saved_fold(out_dir / f"fold-{f}.json", key)
        if saved is None and only_folds is not None and f not in only_folds:
            continue
        if saved is not None:
            log(f"fold {f} ({f + 1} of {folds}): reusing {out_dir / f'fold-{f}.json'}")
            results = {cfg.category: (saved["row"], saved["probs"], saved["labels"]),
                       **{h: (t["row"], t["probs"], t["labels"]) for h, t in saved.get("tasks", {}).items()}}
        else:
            log(f"fold {f} ({f + 1} of {folds}): {len(train)} training examples, {len(held)} held out")
            with tempfile.TemporaryDirectory(prefix="finegrain-cv-", dir=out_dir) as tmp:
                folder = None if baselines_only else (out_dir / f"fold-{f}" if keep_models else Path(tmp) / "rm")
                if cfg.kind == "span":
                    results = _span_fold(cfg, train, held, folder, taxonomy, device, log)
                else:
                    results = {cfg.category: (_pairwise_fold(cfg, train, held, folder, device, log), [], [])}
            for row, _, _ in results.values():
                row["fold"] = f
                row["held_out_examples"] = len(held)
            own, p, y = results[cfg.category]  # saved as a single-category fold is, the other heads beside it
            others = {h: {"row": r, "probs": hp, "labels": hy} for h, (r, hp, hy) in results.items() if h != cfg.category}
            atomic_write_json(out_dir / f"fold-{f}.json", {**key, "row": own, "probs": p, "labels": y, **({"tasks": others} if others else {})})
        for h in heads:
            row, p, y = results[h]
            pooled[h][0].extend(p)
            pooled[h][1].extend(y)
            rows[h].append(row)
            log(format_fold(cfg.kind, row) if len(heads) == 1 else f"  {h}: {format_fold(cfg.kind, row).lstrip()}")
    per_head = {h: _head_report(cfg, h, rows[h], *pooled[h], folds, out_dir, own=h == cfg.category) for h in heads}
    report: dict[str, Any] = {
        "kind": cfg.kind, "category": cfg.category, "folds": folds, "folds_done": len(rows[cfg.category]), "seed": seed,
        "train_examples": n_train, "examples": len(examples), "data_file": str(data_file) if data_file else None,
        "baselines_only": baselines_only, "config": to_dict(cfg), **per_head[cfg.category],
    }
    if len(heads) > 1:  # a multi-task RM: every head's report, each on the same folds as its single-category RM's
        report["tasks"] = per_head
    atomic_write_json(out_dir / "cv.json", report)
    return report


def _head_report(cfg: "RMTrainConfig", head: str, rows: list[dict[str, Any]], pooled_p: list[float], pooled_y: list[int],
                 folds: int, out_dir: Path, own: bool) -> dict[str, Any]:
    """One category's summary over its folds and, for a span head, the reliability of its pooled held-out
    predictions (`reliability.png`; a multi-task RM's other heads: `reliability-<category>.png`)."""
    out: dict[str, Any] = {"summary": summarise(cfg.kind, rows) if rows else {}, "per_fold": rows}
    if pooled_p:
        table = rm_eval.reliability_table(pooled_p, pooled_y)
        out["ece_pooled"] = rm_eval.expected_calibration_error(pooled_p, pooled_y)
        out["reliability"] = [dataclasses.asdict(b) for b in table]
        rm_eval.plot_reliability(out_dir / ("reliability.png" if own else f"reliability-{head}.png"), table,
                                 f"{head} RM, {len(rows)} of {folds} folds held out (ECE {out['ece_pooled']:.3f})")
    return out


# Settings added after folds were first saved, left out of a fold's key at their defaults so that the folds
# saved before they existed are still reused.
LATER_DEFAULTS = {"tasks": None, "ensemble": 1}


def _config_key(cfg: "RMTrainConfig") -> dict[str, Any]:
    from finegrain.config import to_dict

    return {k: v for k, v in to_dict(cfg).items() if not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])}


def _examples_digest(examples: Sequence[Example]) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps([dataclasses.asdict(e) for e in examples], sort_keys=True, default=str).encode()).hexdigest()


def _saved_fold(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """A fold an earlier (or a parallel) run of the same cross-validation finished, else None."""
    import json

    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    return saved if all(saved.get(k) == v for k, v in json.loads(json.dumps(key)).items()) else None


def format_fold(kind: str, row: dict[str, Any]) -> str:
    b = row["baselines"]
    if kind == "span":
        base = f"flag all F1 {b['flag_all']['f1']:.3f}, flag none accuracy {b['flag_none']['accuracy']:.3f}"
        if "f1" not in row:
            return f"  fold {row['fold']}: {base}"
        return (f"  fold {row['fold']}: error F1 {row['f1']:.3f} (tuned threshold {row['threshold_tuned']:.2f}: "
                f"{row['f1_tuned_threshold']:.3f}), accuracy {row['accuracy']:.3f}; {base}; "
                f"training {row['train_cpu_seconds']} s CPU")
    base = f"longer wins {b['longer_wins']['accuracy']:.3f}, majority {b['majority']['accuracy']:.3f}"
    if "accuracy" not in row:
        return f"  fold {row['fold']}: {base}"
    return f"  fold {row['fold']}: pairwise accuracy {row['accuracy']:.3f}; {base}; training {row['train_cpu_seconds']} s CPU"


def format_summary(report: dict[str, Any]) -> str:
    done = "" if report["folds_done"] == report["folds"] else f" ({report['folds_done']} folds done)"
    lines = [f"{report['category']} ({report['kind']}), {report['folds']}-fold over {report['examples']} examples{done}, "
             "mean ± spread (sample std over folds):"]
    for key, v in report["summary"].items():
        lines.append(f"  {key}: {v['mean']:.3f} ± {v['spread']:.3f}")
    if "ece_pooled" in report:
        lines.append(f"  ece (pooled held-out predictions): {report['ece_pooled']:.3f}")
    for head, part in report.get("tasks", {}).items():
        if head == report["category"]:
            continue
        lines.append(f"{head} head of the same multi-task RM:")
        lines += [f"  {key}: {v['mean']:.3f} ± {v['spread']:.3f}" for key, v in part["summary"].items()]
        if "ece_pooled" in part:
            lines.append(f"  ece (pooled held-out predictions): {part['ece_pooled']:.3f}")
    return "\n".join(lines)
