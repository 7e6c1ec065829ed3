"""Would a nonlinear model on the lexical RM's features beat its logistic regression? Gradient-boosted
trees (scikit-learn's HistGradientBoostingClassifier, depth 3, 100 rounds) against the configs' own
logistic model, on the folds `finegrain rm cv` uses (5-fold, the config's seed), each with its
threshold tuned on the training folds, and flagging every segment beside them. Error F1 per fold.
    .venv/bin/python bench/rm_lexical_trees.py relevance   # or factuality
"""
import sys
from pathlib import Path
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import f1_score
from finegrain.config import load_config
from finegrain.rewards.rm_cv import fold_split
from finegrain.rewards.rm_data import build_span_data, span_tasks
from finegrain.rewards.lexical import segment_features
from finegrain.rewards.rm_eval import best_threshold
from finegrain.data.load import load_examples
from finegrain.rewards.rm_config import RMTrainConfig
from finegrain.data.categories import DEFAULT_TAXONOMY

ROOT = Path(__file__).resolve().parents[1]


def xy(task, examples):
    """Feature rows and error labels of every segment. Shape: -> (S, F), (S,)."""
    d = build_span_data(examples, task.categories, task.level)
    X = [r for it in d.items for r in segment_features(it.example, it.response, it.segments, task.passages)]
    y = [v for it in d.items for v in it.labels]
    return np.array(X), np.array(y)


def main(cat: str) -> None:
    cfg = load_config(RMTrainConfig, str(ROOT / f"configs/rm_{cat}.yaml"), [])
    examples = load_examples(ROOT.parent / "shared/data/qa_feedback/feedback.json")
    (task,) = span_tasks(cfg, DEFAULT_TAXONOMY)
    weights = {0: 1.0, 1: cfg.error_weight}
    res = {"logistic": [], "trees": [], "flag all": []}
    for train, held in fold_split(examples, 5, cfg.seed):
        Xtr, ytr = xy(task, train)
        Xte, yte = xy(task, held)
        mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-12
        models = {"logistic": LogisticRegression(C=1.0 / cfg.l2, class_weight=weights, max_iter=10_000),
                  "trees": HistGradientBoostingClassifier(max_iter=100, learning_rate=0.05, max_depth=3, l2_regularization=1.0,
                                                          class_weight=weights, random_state=0)}
        for name, m in models.items():
            m.fit((Xtr - mu) / sd, ytr)
            t = best_threshold(m.predict_proba((Xtr - mu) / sd)[:, 1].tolist(), ytr.tolist())
            res[name].append(f1_score(yte, m.predict_proba((Xte - mu) / sd)[:, 1] >= t))
        res["flag all"].append(f1_score(yte, np.ones_like(yte)))
    for k, v in res.items():
        print(f"{cat} {k}: error F1 {np.mean(v):.3f} ± {np.std(v, ddof=1):.3f}", [round(x, 3) for x in v])


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "relevance")
