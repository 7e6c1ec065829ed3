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


def krippendorff_alpha(units: list[list[int]]) -> float | None:
    """Krippendorff's alpha for nominal labels, any number of coders, missing values allowed.

    Shape: `units` is a list of units (e.g. segments), each the list of the labels its coders gave
    (length >= 0; units with fewer than two labels are not pairable and are left out).
    alpha = 1 - D_o / D_e from the coincidence matrix: D_o the observed share of disagreeing
    pairable values, D_e the share expected by chance from the pooled label frequencies.
    None when fewer than two values are pairable or only one label is used (D_e = 0)."""
    coincide: Counter = Counter()
    for labels in units:
        m = len(labels)
        if m < 2:
            continue
        counts = Counter(labels)
        for c in counts:
            for k in counts:
                pairs = counts[c] * (counts[k] - (1 if c == k else 0))
                if pairs:
                    coincide[(c, k)] += pairs / (m - 1)
    n = sum(coincide.values())
    if n <= 1:
        return None
    marginal: Counter = Counter()
    for (c, _k), v in coincide.items():
        marginal[c] += v
    observed = sum(v for (c, k), v in coincide.items() if c != k)
    expected = sum(marginal[c] * marginal[k] for c in marginal for k in marginal if c != k) / (n - 1)
    if expected == 0:
        return None
    return 1.0 - observed / expected


def edit_distance(a: list[str], b: list[str]) -> int:
    """Levenshtein distance between two token sequences (insert, delete, substitute: 1 each).

    Shape: a, b are lists of tokens (words); O(len(a) * len(b)) time, O(len(b)) memory."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


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
    alpha: float | None  # Krippendorff's alpha over the segments, all annotators of each task
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
    """task id -> {"kind", "text", "example_id", "by": annotator -> payload} for the latest version of
    each (task, annotator), for tasks that two or more annotators submitted."""
    with db.read_tx(engine) as conn:
        rows = conn.execute(
            select(db.submissions.c.task_id, db.submissions.c.version, db.submissions.c.payload, db.users.c.name,
                   db.tasks.c.kind, db.tasks.c.response_index, db.examples.c.data, db.examples.c.ext_id)
            .join(db.users, db.users.c.id == db.submissions.c.user_id)
            .join(db.tasks, db.tasks.c.id == db.submissions.c.task_id)
            .join(db.examples, db.examples.c.id == db.tasks.c.example_id)
            .order_by(db.submissions.c.task_id, db.submissions.c.version)
        ).all()
    tasks: dict[int, dict] = {}
    for r in rows:
        t = tasks.setdefault(r.task_id, {"kind": r.kind, "text": None, "example_id": r.ext_id, "by": {}})
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
        units: list[list[int]] = []
        exact_hits = n_spans = 0
        hits_u = hits_v = n_u = n_v = 0
        for t in annotate:
            segments = segment_text(t["text"], "subsentence")
            spans = {
                who: [Span(s["start"], s["end"], s["category"]) for s in p["spans"] if s["category"] in cats]
                for who, p in t["by"].items()
            }
            text = t["text"]
            coded = [label_segments(segments, spans[w], cats, text) for w in sorted(spans)]
            units.extend([c[i] for c in coded] for i in range(len(segments)))
            for u, v in itertools.combinations(sorted(spans), 2):
                su, sv = spans[u], spans[v]
                labels.extend(zip(label_segments(segments, su, cats, text), label_segments(segments, sv, cats, text)))
                exact_hits += len({(s.start, s.end, s.category) for s in su} & {(s.start, s.end, s.category) for s in sv})
                n_spans += len(su) + len(sv)
                hits_u += sum(_overlaps(s, [o for o in sv if o.category == s.category]) for s in su)
                hits_v += sum(_overlaps(s, [o for o in su if o.category == s.category]) for s in sv)
                n_u, n_v = n_u + len(su), n_v + len(sv)
        f1_exact = None if n_spans == 0 else 2 * exact_hits / n_spans
        return CategoryAgreement(name, len(labels), cohen_kappa(labels), krippendorff_alpha(units), n_spans, f1_exact,
                                 _f1(hits_v, n_v, hits_u, n_u))

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
        f"{'category':<18}{'segments':>9}{'kappa':>8}{'alpha':>8}{'spans':>7}{'F1 exact':>10}{'F1 overlap':>12}",
    ]
    for row in report["categories"] + report["rm_categories"]:
        lines.append(
            f"{row['category']:<18}{row['segments']:>9}{_num(row['kappa']):>8}{_num(row['alpha']):>8}{row['spans']:>7}"
            f"{_num(row['f1_exact']):>10}{_num(row['f1_overlap']):>12}"
        )
    lines.append(f"pairwise choices: {report['pairwise_judgements']} shared judgements, kappa {_num(report['pairwise_kappa'])}")
    return "\n".join(lines)


# --- per item and per annotator ----------------------------------------------------------------------


@dataclass
class _Tally:
    """Counts over annotator pairs, summed for one item, one annotator or everything."""

    exact_hits: int = 0
    spans: int = 0
    hits_u: int = 0
    hits_v: int = 0
    n_u: int = 0
    n_v: int = 0
    segment_pairs: list = None  # (label of u, label of v) per shared segment; 0 = no error, i = category i
    choice_pairs: list = None  # (choice of u, choice of v) per shared comparison pair
    edits: list = None  # word edit distance / longer length, per pair of corrected responses

    def __post_init__(self) -> None:
        self.segment_pairs, self.choice_pairs, self.edits = [], [], []

    def add_spans(self, su: list[Span], sv: list[Span]) -> None:
        key = lambda s: (s.start, s.end, s.category)  # noqa: E731
        self.exact_hits += len({key(s) for s in su} & {key(s) for s in sv})
        self.spans += len(su) + len(sv)
        self.hits_u += sum(_overlaps(s, [o for o in sv if o.category == s.category]) for s in su)
        self.hits_v += sum(_overlaps(s, [o for o in su if o.category == s.category]) for s in sv)
        self.n_u, self.n_v = self.n_u + len(su), self.n_v + len(sv)

    def merge(self, other: _Tally) -> None:
        for f in ("exact_hits", "spans", "hits_u", "hits_v", "n_u", "n_v"):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        self.segment_pairs += other.segment_pairs
        self.choice_pairs += other.choice_pairs
        self.edits += other.edits

    def row(self) -> dict:
        return {
            "spans": self.spans,
            "f1_exact": None if self.spans == 0 else 2 * self.exact_hits / self.spans,
            "f1_overlap": _f1(self.hits_v, self.n_v, self.hits_u, self.n_u),
            "segments": len(self.segment_pairs),
            "segment_kappa": cohen_kappa(self.segment_pairs),
            "pairwise_judgements": len(self.choice_pairs),
            "pairwise_kappa": cohen_kappa(self.choice_pairs),
            "corrections": len(self.edits),
            "edit_distance": None if not self.edits else sum(self.edits) / len(self.edits),
        }


def _segment_labels(text: str, spans: list[Span], segments, taxonomy: Taxonomy) -> list[int]:
    """Per segment: 0 for no error, else 1 + the index of the first category whose spans label it."""
    from finegrain.segment import label_segments

    labels = [0] * len(segments)
    for ci, cat in enumerate(taxonomy.span_categories):
        for si, hit in enumerate(label_segments(segments, [s for s in spans if s.category == cat], (cat,), text)):
            if hit and labels[si] == 0:
                labels[si] = ci + 1
    return labels


def _corrected_distance(text: str, a: str | None, b: str | None) -> float:
    """Word edit distance between two corrections (an absent one is the response itself), divided
    by the longer one's length in words: 0 identical, 1 nothing in common."""
    wa, wb = (a if a is not None else text).split(), (b if b is not None else text).split()
    longest = max(len(wa), len(wb))
    return 0.0 if longest == 0 else edit_distance(wa, wb) / longest


def agreement_by(engine: Engine, by: str, taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> list[dict]:
    """Agreement rows per item (task) or per annotator (against every other annotator of the same
    tasks): span F1 exact and overlap, segment-level Cohen's kappa (labels: no error or the span
    category) and, per item, Krippendorff's alpha over all its annotators; kappa on pairwise
    choices; the mean word edit distance between corrected responses (divided by length)."""
    from finegrain.segment import segment_text

    if by not in ("item", "annotator"):
        raise ValueError(f"--by: {by!r} is not allowed; choose item or annotator")
    tasks = _latest_payloads(engine)
    items: list[dict] = []
    people: dict[str, _Tally] = {}
    shared: dict[str, int] = {}
    for task_id, t in sorted(tasks.items()):
        tally = _Tally()
        alpha = None
        who = sorted(t["by"])
        if t["kind"] == "annotate":
            text = t["text"]
            segments = segment_text(text, "subsentence")
            spans = {w: [Span(s["start"], s["end"], s["category"]) for s in t["by"][w]["spans"]] for w in who}
            labels = {w: _segment_labels(text, spans[w], segments, taxonomy) for w in who}
            alpha = krippendorff_alpha([[labels[w][i] for w in who] for i in range(len(segments))])
            for u, v in itertools.combinations(who, 2):
                pair = _Tally()
                pair.add_spans(spans[u], spans[v])
                pair.segment_pairs = list(zip(labels[u], labels[v]))
                pair.edits = [_corrected_distance(text, t["by"][u].get("corrected"), t["by"][v].get("corrected"))]
                tally.merge(pair)
                for me in (u, v):
                    people.setdefault(me, _Tally()).merge(pair)
        else:
            judged = {w: {(j["a"], j["b"]): j["outcome"] for j in t["by"][w]["judgements"]} for w in who}
            for u, v in itertools.combinations(who, 2):
                pair = _Tally()
                pair.choice_pairs = [(judged[u][p], judged[v][p]) for p in judged[u] if p in judged[v]]
                tally.merge(pair)
                for me in (u, v):
                    people.setdefault(me, _Tally()).merge(pair)
        for w in who:
            shared[w] = shared.get(w, 0) + 1
        items.append({"task": task_id, "example_id": t["example_id"], "kind": t["kind"], "annotators": who,
                      "segment_alpha": alpha, **tally.row()})
    if by == "item":
        return items
    return [{"annotator": w, "tasks": shared[w], **people[w].row()} for w in sorted(people)]


def format_by(rows: list[dict], by: str) -> str:
    head = f"{'task':>6} {'example':<18}{'kind':<9}{'n':>3}" if by == "item" else f"{'annotator':<22}{'tasks':>6}"
    lines = [head + f"{'spans':>7}{'F1 exact':>10}{'F1 overlap':>12}{'seg kappa':>11}"
             + (f"{'seg alpha':>11}" if by == "item" else "") + f"{'pair kappa':>12}{'edit dist':>11}"]
    for r in rows:
        left = (f"{r['task']:>6} {r['example_id'][:17]:<18}{r['kind']:<9}{len(r['annotators']):>3}" if by == "item"
                else f"{r['annotator'][:21]:<22}{r['tasks']:>6}")
        lines.append(left + f"{r['spans']:>7}{_num(r['f1_exact']):>10}{_num(r['f1_overlap']):>12}{_num(r['segment_kappa']):>11}"
                     + (f"{_num(r['segment_alpha']):>11}" if by == "item" else "")
                     + f"{_num(r['pairwise_kappa']):>12}{_num(r['edit_distance']):>11}")
    if len(lines) == 1:
        lines.append("no task has two or more annotators yet")
    return "\n".join(lines)
