"""The README's cross-validation table, one row per `finegrain rm cv` report (cv.json):
category (a multi-task RM: one row per head), backbone and training choice, the RM's metric (mean ± sample std over the folds done),
the trivial rules on the same held-out folds, training CPU seconds per fold and scoring throughput.

    python bench/rm_cv_table.py runs/cv/relevance runs/cv-base/factuality ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def pm(summary: dict, key: str) -> str:
    v = summary.get(key)
    return f"{v['mean']:.3f} ± {v['spread']:.3f}" if v else "not measured"


def row(report: dict, category: str | None = None) -> str:
    """The row of `category` (a head of a multi-task RM; default: the report's own category)."""
    cfg = report["config"]
    category = category or report["category"]
    s = report["tasks"][category]["summary"] if category != report["category"] else report["summary"]
    trained = (f"lexical, logistic regression, l2 {cfg.get('l2', 1.0):g}" if cfg["backbone"] == "lexical" else
               f"{cfg['backbone']}, {cfg['finetune']}, {cfg['epochs']:g} epochs, lr {cfg['lr']:g}")
    choice = ("none trained (`--baselines-only`)" if report["baselines_only"] else
              trained + (", threshold tuned on the training folds" if cfg.get("tune_threshold") else "")
              + (f", multi-task ({' + '.join(cfg['tasks'])})" if cfg.get("tasks") else "")
              + (f", mean of {cfg['ensemble']} seeds" if cfg.get("ensemble", 1) > 1 else ""))
    folds = f"{report['folds_done']} of {report['folds']}"
    cpu = pm(s, "train_cpu_seconds").replace("not measured", "-")
    speed = f"{s['responses_per_second']['mean']:.0f}/s" if "responses_per_second" in s else "-"
    if report["kind"] == "span":
        metric = f"F1 {pm(s, 'f1')} (tuned threshold: {pm(s, 'f1_tuned_threshold')}); accuracy {pm(s, 'accuracy')}"
        if report["baselines_only"]:
            metric = "not measured"
        base = f"flag all F1 {pm(s, 'flag_all_f1')}; flag none accuracy {pm(s, 'flag_none_accuracy')}"
    else:
        metric = "not measured" if report["baselines_only"] else f"pairwise accuracy {pm(s, 'accuracy')}"
        base = f"longer wins {pm(s, 'longer_wins_accuracy')}; majority {pm(s, 'majority_accuracy')}"
    return f"| {category} | {choice} | {folds} | {metric} | {base} | {cpu} | {speed} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="folders holding a cv.json")
    args = parser.parse_args()
    print("| category | backbone, training | folds | RM on held-out folds (mean ± std) | trivial rules, same folds | training CPU s per fold | scoring |")
    print("|---|---|---|---|---|---|---|")
    for folder in args.folders:
        report = json.loads((Path(folder) / "cv.json").read_text(encoding="utf-8"))
        for category in report.get("tasks") or [report["category"]]:  # a multi-task RM: a row per head
            print(row(report, category))


if __name__ == "__main__":
    main()
