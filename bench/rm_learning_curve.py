"""An RM's learning curve from `finegrain rm cv` reports (cv.json) made with different `--train-examples`
on the same folds: for a span RM, held-out error F1 (at the config's threshold and at the one tuned on the
training folds) beside flagging every segment; for a pairwise RM, pairwise accuracy beside longer-wins and
the majority rule; against the number of training examples.

    python bench/rm_learning_curve.py runs/cv/relevance-n60 runs/cv/relevance-n120 runs/cv/relevance-n180 runs/cv/relevance \\
        --out docs/rm-learning-curve-relevance.png

Prints a markdown table; with --out, also a PNG. A report without `train_examples` used every
training example of its folds (240 of QA-Feedback's 300 with 5 folds).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def point(folder: Path) -> dict:
    report = json.loads((folder / "cv.json").read_text(encoding="utf-8"))
    n = report.get("train_examples") or round(report["examples"] * (report["folds"] - 1) / report["folds"])
    s = report["summary"]
    return {"n": n, "folds": f"{report['folds_done']} of {report['folds']}", "category": report["category"], "kind": report["kind"],
            **{k: (s[k]["mean"], s[k]["spread"]) for k, _, _ in CURVES[report["kind"]]}}


# per kind: (summary key, label, plot style)
CURVES = {
    "span": (("f1", "RM, threshold of the config", "o-"), ("f1_tuned_threshold", "RM, threshold tuned on training folds", "s-"),
             ("flag_all_f1", "flag every segment", "k--")),
    "pairwise": (("accuracy", "RM", "o-"), ("longer_wins_accuracy", "longer wins", "k--"), ("majority_accuracy", "majority", "k:")),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", type=Path, nargs="+", help="rm cv output folders (each with cv.json)")
    parser.add_argument("--out", type=Path, help="write the plot here (PNG)")
    args = parser.parse_args()
    points = sorted((point(f) for f in args.reports), key=lambda p: p["n"])
    if len({p["category"] for p in points}) > 1:
        raise SystemExit("reports of different categories: " + ", ".join(sorted({p["category"] for p in points})))
    curves = CURVES[points[0]["kind"]]
    print("| training examples | folds | " + " | ".join(label for _, label, _ in curves) + " |")
    print("|---:|---|" + "---|" * len(curves))
    for p in points:
        cells = [f"{p[k][0]:.3f} ± {p[k][1]:.3f}" for k, _, _ in curves]
        print(f"| {p['n']} | {p['folds']} | " + " | ".join(cells) + " |")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from finegrain.io import save_figure

        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        ns = [p["n"] for p in points]
        for key, label, style in curves:
            ax.errorbar(ns, [p[key][0] for p in points], yerr=[p[key][1] for p in points], fmt=style, capsize=3, label=label)
        ax.set_xlabel("training examples")
        ax.set_ylabel(f"held-out {'error F1' if points[0]['kind'] == 'span' else 'pairwise accuracy'} (fold mean ± std)")
        ax.set_title(f"{points[0]['category']} RM learning curve")
        ax.legend(fontsize=8)
        fig.tight_layout()
        save_figure(fig, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
