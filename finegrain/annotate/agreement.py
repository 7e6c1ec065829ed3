"""`finegrain annotate agreement`: how far annotators agree, on tasks that more than one annotated.

Per span category (and per reward-model category, which pools its span categories):
- segment-level Cohen's kappa: each response is cut into sub-sentence segments
  (`finegrain.segment.segment_text`); each annotator's spans label every segment 1/0 for the category
  (`label_segments`, the same rule the reward models train on); kappa over the segment labels of
  every pair of annotators on every shared task, pooled;
- span F1, exact (same start, end and category) and overlap (a span counts as found when the other
  annotator has an overlapping span of the category), micro-averaged over annotator pairs.
And Cohen's kappa on pairwise choices (0 equal, 1 a better, 2 b better) for comparison tasks.
Latest versions only.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from dataclasses import asdict, dataclass

from sqlalchemy import Engine, select

from finegrain.annotate import db
from finegrain.data.categories import DEFAULT_TAXONOMY, Taxonomy
from finegrain.data.records import Span


def cohen_kappa(pairs: list[tuple[int, int]]) -> float | None:
    """Cohen's kappa of two raters' labels; None when chance agreement is 1 (a single label used)."""
    if not pairs:
        return None
    n = len(pairs)
    observed = sum(x == y for x, y in pairs) / n
    first, second = Counter(x for x, _ in pairs), Counter(y for _, y in pairs)
    expected = sum(first[k] * second[k] for k in first) / (n * n)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def _f1(precision_hits: int, n_pred: int, recall_hits: int, n_gold: int) -> float | None:
    if n_pred + n_gold == 0:
        return None
    p = precision_hits / n_pred if n_pred else 0.0
    r = recall_hits / n_gold if n_gold else 0.0
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def _overlaps(s: Span, others: list[Span]) -> bool:
    return any(s.start < o.end and o.start < s.end for o in others)


@dataclass
class CategoryAgreement:
    category: str
    segments: int  # segment-label pairs compared
    kappa: float | None
    spans: int  # spans of the category, over both annotators of every pair
    f1_exact: float | None
    f1_overlap: float | None


@dataclass
class Report:
    annotate_tasks: int  # tasks with two or more annotators
    compare_tasks: int
    categories: list[CategoryAgreement]
    rm_categories: list[CategoryAgreement]
    pairwise_judgements: int
    pairwise_kappa: float | None


def _latest_payloads(engine: Engine) -> dict[int, dict]:
    """task id -> {"kind", "text", annotator -> payload} for the latest version of each (task, annotator)."""
    with db.read_tx(engine) as conn:
        rows = conn.execute(
            select(db.submissions.c.task_id, db.submissions.c.version, db.submissions.c.payload, db.users.c.name,
                   db.tasks.c.kind, db.tasks.c.response_index, db.examples.c.data)
            .join(db.users, db.users.c.id == db.submissions.c.user_id)
            .join(db.tasks, db.tasks.c.id == db.submissions.c.task_id)
            .join(db.examples, db.examples.c.id == db.tasks.c.example_id)
            .order_by(db.submissions.c.task_id, db.submissions.c.version)
        ).all()
    tasks: dict[int, dict] = {}
    for r in rows:
        t = tasks.setdefault(r.task_id, {"kind": r.kind, "text": None, "by": {}})
        if r.kind == "annotate" and t["text"] is None:
            t["text"] = json.loads(r.data)["responses"][r.response_index]
        t["by"][r.name] = json.loads(r.payload)  # later versions overwrite earlier ones
    return {k: v for k, v in tasks.items() if len(v["by"]) >= 2}


def agreement(engine: Engine, taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> dict:
    from finegrain.segment import label_segments, segment_text

    tasks = _latest_payloads(engine)
    annotate = [t for t in tasks.values() if t["kind"] == "annotate"]
    compare = [t for t in tasks.values() if t["kind"] == "compare"]
    groups = [(c, (c,)) for c in taxonomy.span_categories]
    rm_groups = [(rm, taxonomy.categories_for(rm)) for rm in taxonomy.rm_categories]

    def measure(name: str, cats: tuple[str, ...]) -> CategoryAgreement:
        labels: list[tuple[int, int]] = []
        exact_hits = n_spans = 0
        hits_u = hits_v = n_u = n_v = 0
        for t in annotate:
            segments = segment_text(t["text"], "subsentence")
            spans = {
                who: [Span(s["start"], s["end"], s["category"]) for s in p["spans"] if s["category"] in cats]
                for who, p in t["by"].items()
            }
            for u, v in itertools.combinations(sorted(spans), 2):
                su, sv = spans[u], spans[v]
                text = t["text"]
                labels.extend(zip(label_segments(segments, su, cats, text), label_segments(segments, sv, cats, text)))
                exact_hits += len({(s.start, s.end, s.category) for s in su} & {(s.start, s.end, s.category) for s in sv})
                n_spans += len(su) + len(sv)
                hits_u += sum(_overlaps(s, [o for o in sv if o.category == s.category]) for s in su)
                hits_v += sum(_overlaps(s, [o for o in su if o.category == s.category]) for s in sv)
                n_u, n_v = n_u + len(su), n_v + len(sv)
        f1_exact = None if n_spans == 0 else 2 * exact_hits / n_spans
        return CategoryAgreement(name, len(labels), cohen_kappa(labels), n_spans, f1_exact, _f1(hits_v, n_v, hits_u, n_u))

    choices: list[tuple[int, int]] = []
    for t in compare:
        judged = {who: {(j["a"], j["b"]): j["outcome"] for j in p["judgements"]} for who, p in t["by"].items()}
        for u, v in itertools.combinations(sorted(judged), 2):
            choices.extend((judged[u][pair], judged[v][pair]) for pair in judged[u] if pair in judged[v])
    report = Report(
        annotate_tasks=len(annotate),
        compare_tasks=len(compare),
        categories=[measure(n, c) for n, c in groups],
        rm_categories=[measure(n, c) for n, c in rm_groups],
        pairwise_judgements=len(choices),
        pairwise_kappa=cohen_kappa(choices),
    )
    return asdict(report)


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def format_report(report: dict) -> str:
    lines = [
        f"tasks with 2+ annotators: {report['annotate_tasks']} span-annotation, {report['compare_tasks']} comparison",
        f"{'category':<18}{'segments':>9}{'kappa':>8}{'spans':>7}{'F1 exact':>10}{'F1 overlap':>12}",
    ]
    for row in report["categories"] + report["rm_categories"]:
        lines.append(
            f"{row['category']:<18}{row['segments']:>9}{_num(row['kappa']):>8}{row['spans']:>7}"
            f"{_num(row['f1_exact']):>10}{_num(row['f1_overlap']):>12}"
        )
    lines.append(f"pairwise choices: {report['pairwise_judgements']} shared judgements, kappa {_num(report['pairwise_kappa'])}")
    return "\n".join(lines)
