"""`finegrain annotate suggest`: order the annotators' queues by what the trained reward models are
least sure of, so the next hour of annotation teaches them most (uncertainty sampling).

For every example still in the database, each span RM scores every segment of each annotated
response (P(error)) and each pairwise RM scores every response. A segment is uncertain when its
probability is near the RM's threshold (`closeness`), and when RMs of the same category (several
seeds, or retrained versions) disagree about it (`spread`); a comparison is uncertain when the RMs'
P(a better than b) is near one half, or they disagree. An example's priority is its most uncertain
segment or pair. `--apply` stores the priorities; the queue then lists the most uncertain examples
first (both of an example's tasks together), and `--clear` goes back to import order.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, select, update

from finegrain.annotate import db
from finegrain.data.records import Example, Passage, Response


def closeness(p: float, threshold: float) -> float:
    """1 at the threshold, 0 at the far end of [0, 1]: how undecided one probability is.

    Shape: scalars. closeness(t, t) = 1; closeness(0, 0.5) = closeness(1, 0.5) = 0;
    with threshold 0.3, p = 0.65 gives 1 - 0.35 / 0.7 = 0.5."""
    far = max(threshold, 1.0 - threshold)
    return max(0.0, 1.0 - abs(p - threshold) / far)


def segment_uncertainty(probs: Sequence[Sequence[float]], thresholds: Sequence[float]) -> list[float]:
    """Per segment: the mean closeness over the R models of one category plus the spread (population
    standard deviation) of their probabilities, doubled so that total disagreement (half at 0, half
    at 1: std 0.5) counts as much as a probability on the threshold.

    Shape: probs is R lists of S probabilities (the same S segments); thresholds has R entries;
    returns S values in [0, 2]."""
    if not probs:
        return []
    r, s = len(probs), len(probs[0])
    out = []
    for j in range(s):
        column = [probs[k][j] for k in range(r)]
        mean_close = sum(closeness(p, t) for p, t in zip(column, thresholds)) / r
        mu = sum(column) / r
        spread = math.sqrt(sum((p - mu) ** 2 for p in column) / r)
        out.append(mean_close + 2.0 * spread)
    return out


def pair_uncertainty(scores: Sequence[Sequence[float]]) -> list[float]:
    """Per pair (a, b), a < b, of K responses: closeness of the mean P(a better) = sigmoid(s_a - s_b)
    to 1/2, plus twice the spread of that probability over the R pairwise models.

    Shape: scores is R lists of K raw scores; returns K(K-1)/2 values in [0, 2], pairs in
    itertools.combinations order."""
    if not scores:
        return []
    k = len(scores[0])
    out = []
    for a in range(k):
        for b in range(a + 1, k):
            ps = [1.0 / (1.0 + math.exp(-(s[a] - s[b]))) for s in scores]
            mu = sum(ps) / len(ps)
            spread = math.sqrt(sum((p - mu) ** 2 for p in ps) / len(ps))
            out.append(closeness(mu, 0.5) + 2.0 * spread)
    return out


@dataclass
class Suggestion:
    example_pk: int
    example_id: str
    priority: float  # the most uncertain segment or pair
    where: str  # which: "response 1, segment 3 (relevance)" or "pair (0, 2)"
    tasks: list[int]


def _examples(engine: Engine) -> list[tuple[int, str, Example, list[tuple[int, str, int | None]]]]:
    with db.read_tx(engine) as conn:
        rows = conn.execute(select(db.examples.c.id, db.examples.c.ext_id, db.examples.c.data).order_by(db.examples.c.id)).all()
        tasks = conn.execute(select(db.tasks.c.id, db.tasks.c.example_id, db.tasks.c.kind, db.tasks.c.response_index)).all()
    by_example: dict[int, list] = {}
    for t in tasks:
        by_example.setdefault(t.example_id, []).append((t.id, t.kind, t.response_index))
    out = []
    for r in rows:
        d = json.loads(r.data)
        ex = Example(r.ext_id, d["prompt"], tuple(Response(t) for t in d["responses"]),
                     tuple(Passage(p["title"], tuple(p["sentences"])) for p in d["passages"]), reference=d.get("reference"))
        out.append((r.id, r.ext_id, ex, by_example.get(r.id, [])))
    return out


def suggest(engine: Engine, rm_dirs: Sequence[str], *, device: str | None = None, log=print) -> list[Suggestion]:
    """Score every example with the RMs; most uncertain first."""
    from finegrain.rewards.card import load_heads

    models = [rm for d in rm_dirs for rm in load_heads(d, device=device, bf16=False).values()]  # a multi-task RM: each head
    span_groups: dict[str, list] = {}
    pair_models = []
    for m in models:
        if m.card.kind == "span":
            span_groups.setdefault(m.card.name, []).append(m)
        else:
            pair_models.append(m)
    for name, group in span_groups.items():
        levels = {m.level for m in group}
        if len(levels) > 1:
            from finegrain.config import ConfigError

            raise ConfigError(f"--rm: the {name} RMs segment at different levels ({', '.join(sorted(levels))}); give RMs of one level per category")
    items = _examples(engine)
    log(f"scoring {len(items)} examples with {len(models)} reward model(s): "
        + ", ".join(f"{n} x{len(g)}" for n, g in span_groups.items()) + (f", pairwise x{len(pair_models)}" if pair_models else ""))
    out = []
    for pk, ext_id, ex, tasks in items:
        best, where = -1.0, ""
        annotated = sorted({ri for _, kind, ri in tasks if kind == "annotate"})
        for i in annotated:
            text = ex.responses[i].text
            for name, group in span_groups.items():
                probs = [m.probabilities([ex], [text])[0][0] for m in group]
                thresholds = [float(m.card.training.get("threshold", 0.5)) for m in group]
                for j, u in enumerate(segment_uncertainty(probs, thresholds)):
                    if u > best:
                        best, where = u, f"response {i + 1}, segment {j + 1} ({name})"
        if pair_models and any(kind == "compare" for _, kind, _ in tasks) and len(ex.responses) >= 2:
            texts = [r.text for r in ex.responses]
            scores = [m.raw_scores([ex] * len(texts), texts) for m in pair_models]
            pairs = [(a, b) for a in range(len(texts)) for b in range(a + 1, len(texts))]
            for (a, b), u in zip(pairs, pair_uncertainty(scores)):
                if u > best:
                    best, where = u, f"pair ({a}, {b})"
        if best >= 0:
            out.append(Suggestion(pk, ext_id, best, where, [t for t, _, _ in tasks]))
    out.sort(key=lambda s: (-s.priority, s.example_pk))
    return out


def apply_priorities(engine: Engine, suggestions: Sequence[Suggestion]) -> int:
    """Store each example's priority on its tasks (the queue lists higher first); returns tasks updated."""
    n = 0
    with db.write_tx(engine) as conn:
        for s in suggestions:
            if s.tasks:
                n += conn.execute(update(db.tasks).where(db.tasks.c.id.in_(s.tasks)).values(priority=s.priority)).rowcount
    return n


def clear_priorities(engine: Engine) -> int:
    with db.write_tx(engine) as conn:
        return conn.execute(update(db.tasks).where(db.tasks.c.priority.is_not(None)).values(priority=None)).rowcount
