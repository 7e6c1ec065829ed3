"""Could the lexical span RM do better with another model or more features? On the folds `finegrain rm
cv` uses (5-fold, the config's seed), each model with its threshold tuned on the training folds, error
F1 per fold, flagging every segment beside them:
- trees: gradient-boosted trees (scikit-learn's HistGradientBoostingClassifier, depth 3, 100 rounds)
  on the same features, against the config's own logistic model;
- the logistic model with each of five more features, then all five: the segment's largest word
  overlap with a *later* segment, its share of content words, whether it opens with a discourse
  marker or pronoun, its passage support (relevance's config reads no passages), whether it ends a
  sentence.
    .venv/bin/python bench/rm_lexical_variants.py relevance   # or factuality
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
from finegrain.words import content_words, jaccard, passage_words, words

ROOT = Path(__file__).resolve().parents[1]


EXTRA = ("overlap_later", "content_share", "opens_with_marker", "passage_support", "ends_sentence")
MARKERS = {"and", "but", "also", "however", "so", "additionally", "furthermore", "moreover", "this", "it", "they"}


def extra_features(item) -> list[list[float]]:
    """One row of the EXTRA features per segment of a response."""
    texts = [s.text(item.response) for s in item.segments]
    sets = [set(content_words(t)) for t in texts]
    support = passage_words(item.example.passages)
    rows = []
    for i, t in enumerate(texts):
        w, cw = words(t), content_words(t)
        rows.append([max((jaccard(sets[i], sets[j]) for j in range(i + 1, len(texts))), default=0.0),
                     len(cw) / len(w) if w else 0.0, float(bool(w) and w[0] in MARKERS),
                     sum(x in support for x in cw) / len(cw) if cw else 1.0, float(t.rstrip()[-1:] in ".!?")])
    return rows


def xy(task, examples, extra: tuple[int, ...] = ()):
    """Feature rows (the RM's, then the chosen EXTRA columns) and error labels of every segment.
    Shape: -> (S, F), (S,)."""
    d = build_span_data(examples, task.categories, task.level)
    X = [r + [e[k] for k in extra] for it in d.items
         for r, e in zip(segment_features(it.example, it.response, it.segments, task.passages), extra_features(it))]
    y = [v for it in d.items for v in it.labels]
    return np.array(X), np.array(y)


def fold_f1(cfg, task, examples, make_model, extra: tuple[int, ...] = ()) -> list[float]:
    f1s = []
    for train, held in fold_split(examples, 5, cfg.seed):
        Xtr, ytr = xy(task, train, extra)
        Xte, yte = xy(task, held, extra)
        mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-12
        m = make_model().fit((Xtr - mu) / sd, ytr)
        t = best_threshold(m.predict_proba((Xtr - mu) / sd)[:, 1].tolist(), ytr.tolist())
        f1s.append(f1_score(yte, m.predict_proba((Xte - mu) / sd)[:, 1] >= t))
    return f1s


def main(cat: str) -> None:
    cfg = load_config(RMTrainConfig, str(ROOT / f"configs/rm_{cat}.yaml"), [])
    examples = load_examples(ROOT.parent / "shared/data/qa_feedback/feedback.json")
    (task,) = span_tasks(cfg, DEFAULT_TAXONOMY)
    weights = {0: 1.0, 1: cfg.error_weight}

    def logistic():
        return LogisticRegression(C=1.0 / cfg.l2, class_weight=weights, max_iter=10_000)

    def trees():
        return HistGradientBoostingClassifier(max_iter=100, learning_rate=0.05, max_depth=3, l2_regularization=1.0,
                                              class_weight=weights, random_state=0)

    flag_all = [f1_score(y, np.ones_like(y)) for y in (xy(task, held)[1] for _, held in fold_split(examples, 5, cfg.seed))]
    rows = {"flag all": flag_all, "logistic (the RM)": fold_f1(cfg, task, examples, logistic), "trees": fold_f1(cfg, task, examples, trees)}
    for k, name in enumerate(EXTRA):
        rows[f"logistic + {name}"] = fold_f1(cfg, task, examples, logistic, (k,))
    rows["logistic + all five"] = fold_f1(cfg, task, examples, logistic, tuple(range(len(EXTRA))))
    for name, f1s in rows.items():
        print(f"{cat} {name}: error F1 {np.mean(f1s):.3f} ± {np.std(f1s, ddof=1):.3f}", [round(x, 3) for x in f1s])


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "relevance")
