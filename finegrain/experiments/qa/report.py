"""The QA report: one table over policies (SFT, holistic and fine-grained PPO, DPO and SimPO on
human and span pairs, the presets), the RMs' held-out metrics beside their trivial baselines, and
two plots: `rewards.png` (each reward source and the KL against PPO steps) and `presets.png`
(answer length against the relevance error rate and against completeness, for the presets).

A run folder is what a trainer writes (`config.yaml`, `metrics.jsonl`, `final/`) plus `eval/`
(`metrics.json`, `samples.jsonl`) from `finegrain eval --task qa`.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from finegrain.experiments.qa.metrics import QAMetrics, read_metrics, read_samples

COLUMNS = (
    ("relevance_error_rate", "Rel. err. ↓", "{:.3f}"),
    ("factuality_error_rate", "Fact. err. ↓", "{:.3f}"),
    ("completeness", "Compl. ↑", "{:+.2f}"),
    ("win_rate", "Win vs SFT ↑", "{:.2f}"),
    ("rouge_l", "ROUGE-L ↑", "{:.3f}"),
    ("repeated_3grams", "Rep. 3-grams ↓", "{:.3f}"),
    ("duplicate_sentences", "Dup. sent. ↓", "{:.3f}"),
    ("passage_support", "Supported ↑", "{:.3f}"),
    ("length_tokens", "Tokens", "{:.1f}"),
    ("length_sentences", "Sentences", "{:.2f}"),
)
PRESETS = (("preset-short", "short"), ("ppo-finegrained", "medium"), ("preset-long", "long"))


@dataclass
class QARun:
    label: str
    folder: Path
    metrics: QAMetrics | None
    steps: list[int] = field(default_factory=list)
    rewards: dict[str, list[float]] = field(default_factory=dict)  # source -> mean reward per step (before normalisation)
    kl: list[float] = field(default_factory=list)
    seconds: float | None = None
    seed: int | None = None  # run.seed from config.yaml (pairs two policies' runs of one seed)


def summarize(folder: str | Path, label: str | None = None) -> QARun:
    from finegrain.kernel.run import run_config

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"run folder {folder} does not exist")
    eval_file = folder / "eval" / "metrics.json"
    run = QARun(label or folder.name, folder, read_metrics(eval_file) if eval_file.is_file() else None)
    run.seed = (run_config(folder).get("run") or {}).get("seed")
    if run.seed is None and eval_file.is_file():  # an evaluation of an untrained (or elsewhere trained) policy: its sampling seed
        run.seed = (json.loads(eval_file.read_text(encoding="utf-8")).get("settings") or {}).get("seed")
    log = folder / "metrics.jsonl"
    if not log.is_file():
        return run
    seconds = 0.0
    for line in log.read_text(encoding="utf-8").splitlines():
        row = json.loads(line) if line.strip() else {}
        if "step" not in row or "kl" not in row:  # evaluation rows, and the recipes' (SFT/DPO) rows
            continue
        run.steps.append(int(row["step"]))
        run.kl.append(float(row["kl"]))
        for key, value in row.items():
            if key.startswith("reward/") and key not in ("reward/total", "reward/penalised", "reward/normalised"):
                run.rewards.setdefault(key[len("reward/"):], []).append(float(value))
        seconds += float(row.get("time/step", 0.0))
    run.seconds = seconds or None
    return run


def _cell(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    spread = f" ± {fmt.format(statistics.stdev(values)).lstrip('+')}" if len(values) > 1 else ""
    return fmt.format(statistics.mean(values)) + spread


def metrics_table(groups: dict[str, list[QARun]]) -> str:
    """One row per policy; over several seeds each cell is mean ± std."""
    evaluated = {label: [r.metrics.to_json() for r in runs if r.metrics is not None] for label, runs in groups.items()}
    columns = [c for c in COLUMNS if any(m.get(c[0]) is not None for ms in evaluated.values() for m in ms)]
    rows = ["| Policy | Seeds | " + " | ".join(t for _, t, _ in columns) + " |", "|---|---:|" + "|".join("---:" for _ in columns) + "|"]
    for label, ms in evaluated.items():
        if ms:
            cells = [_cell([m[k] for m in ms if m.get(k) is not None], fmt) for k, _, fmt in columns]
            rows.append(f"| {label} | {len(ms)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def paired_runs_table(a_runs: list[QARun], b_runs: list[QARun], a: str, b: str) -> str:
    """`a` minus `b` over the seeds both have evaluated (finegrain.evaluate.paired_table)."""
    from finegrain.evaluate import metrics_by_seed, paired_table

    return paired_table(a, b, metrics_by_seed(a_runs), metrics_by_seed(b_runs), COLUMNS)


VERSUS_COLUMNS = tuple(c for c in COLUMNS if c[0] not in ("win_rate", "factuality_error_rate", "duplicate_sentences", "length_tokens"))


def versus_baseline_table(groups: dict[str, list[QARun]], baseline: str, columns: Sequence[tuple[str, str, str]] = VERSUS_COLUMNS) -> str:
    """Each policy minus `baseline` (the SFT policy), paired by seed: one row per policy with two seeds or
    more in common with it, one cell per metric: the mean difference and its 95% t interval, in bold
    when the interval leaves out 0. A policy sampled with the same seed as the baseline gives the same
    answer wherever training left it unchanged, so pairing takes most of the sampling noise out."""
    from finegrain.evaluate import metrics_by_seed, paired_metrics

    base = metrics_by_seed(groups.get(baseline, []))
    rows = [f"| minus {baseline}, paired by seed | Seeds | " + " | ".join(t for _, t, _ in columns) + " |",
            "|---|---:|" + "|".join("---:" for _ in columns) + "|"]
    for label, runs in groups.items():
        mine = metrics_by_seed(runs)
        seeds = sorted(set(mine) & set(base)) if label != baseline else []
        if len(seeds) < 2:
            continue
        diffs, cells = paired_metrics(mine, base, columns), []
        for key, _, _ in columns:
            if key not in diffs:
                cells.append("-")
                continue
            d, f = diffs[key]
            cell = f"{f.format(d.mean)} [{f.format(d.low)}, {f.format(d.high)}]"
            cells.append(cell if d.within_noise else f"**{cell}**")
        rows.append(f"| {label} | {len(seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(rows) if len(rows) > 2 else ""


QUESTION_COLUMNS = (
    ("relevance_error_rate", "Rel. err. ↓", "{:+.3f}"),
    ("completeness", "Compl. ↑", "{:+.2f}"),
    ("length_tokens", "Tokens", "{:+.1f}"),
    ("length_sentences", "Sentences", "{:+.2f}"),
)


def question_difference(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]], key: str) -> Any:
    """`key` of answers `a` minus answers `b` over the questions both answered, as the evaluation computes
    it (the relevance error rate pooled over segments; the others a mean per answer), with its 95%
    bootstrap interval resampling questions (`rm_eval.estimate`); None when the answers lack the figure."""
    import numpy as np

    from finegrain.rewards.rm_eval import estimate

    ids = sorted(set(a) & set(b))
    if not ids:
        return None
    if key == "relevance_error_rate":
        if any("relevance_flags" not in x[i] for x in (a, b) for i in ids):
            return None
        units = np.array([[sum(a[i]["relevance_flags"]), len(a[i]["relevance_flags"]), sum(b[i]["relevance_flags"]), len(b[i]["relevance_flags"])]
                          for i in ids], dtype=float)  # (Q, 4): flagged and judged segments of each answer

        def statistic(s: Any) -> Any:
            return s[..., 0] / np.maximum(s[..., 1], 1) - s[..., 2] / np.maximum(s[..., 3], 1)
    else:
        field_name = {"length_tokens": "tokens", "length_sentences": "sentences"}.get(key, key)
        if any(x[i].get(field_name) is None for x in (a, b) for i in ids):
            return None
        units = np.array([[a[i][field_name] - b[i][field_name], 1.0] for i in ids])  # (Q, 2): difference, count

        def statistic(s: Any) -> Any:
            return s[..., 0] / s[..., 1]
    return estimate(units, statistic)


def versus_baseline_by_question(groups: dict[str, list[QARun]], baseline: str, columns: Sequence[tuple[str, str, str]] = QUESTION_COLUMNS) -> str:
    """Each policy evaluated at a single seed that the baseline shares, minus the baseline at that seed,
    paired by question: the difference over the questions and its 95% bootstrap interval (resampling
    questions), in bold where it leaves out 0. It shows how much the choice of questions moves a figure,
    not how much another training seed would (`versus_baseline_table` does that from two seeds on)."""
    base = {r.seed: r for r in groups.get(baseline, []) if r.metrics is not None}
    rows = [f"| minus {baseline}, paired by question | Seed | Questions | " + " | ".join(t for _, t, _ in columns) + " |",
            "|---|---:|---:|" + "|".join("---:" for _ in columns) + "|"]
    for label, runs in groups.items():
        seeds = [r.seed for r in runs if r.metrics is not None and r.seed in base]
        if label == baseline or len(seeds) != 1:
            continue
        mine = read_samples(next(r.folder for r in runs if r.seed == seeds[0]) / "eval")
        theirs = read_samples(base[seeds[0]].folder / "eval")
        cells = []
        for key, _, fmt in columns:
            d = question_difference(mine, theirs, key)
            cell = "-" if d is None else f"{fmt.format(d.value)} [{fmt.format(d.low)}, {fmt.format(d.high)}]"
            cells.append(f"**{cell}**" if d is not None and (d.low > 0 or d.high < 0) else cell)
        if any(c != "-" for c in cells):
            rows.append(f"| {label} | {seeds[0]} | {len(set(mine) & set(theirs))} | " + " | ".join(cells) + " |")
    return "\n".join(rows) if len(rows) > 2 else ""


def rm_heldout_metrics(rm_dir: str | Path, heldout_file: str | Path) -> dict[str, Any]:
    """Each RM's metrics on the held-out file, with the trivial baselines it must beat (span RMs:
    the F1 of flagging every segment and the accuracy of flagging none; pairwise RMs: chance, 0.5)."""
    import dataclasses

    from finegrain.data.load import load_examples
    from finegrain.experiments.qa.metrics import load_role_rms

    examples = load_examples(heldout_file)
    out: dict[str, Any] = {}
    for role, rm, card in load_role_rms(rm_dir):
        if card.kind == "span":
            from finegrain.rewards.rm_data import build_span_data
            from finegrain.rewards.span_rm import evaluate_span

            data = build_span_data(examples, card.categories, card.level)
            if not data.items:
                continue
            m = dataclasses.asdict(evaluate_span(rm, data))
            out[role] = {"metric": "segment accuracy / error F1", "value": [m["accuracy"], m["f1"]],
                         "baseline": [1 - m["error_rate"], m["f1_all_error"]], "segments": m["segments"], "error_rate": m["error_rate"]}
        else:
            from finegrain.rewards.pairwise_rm import evaluate_pairwise, pair_data
            from finegrain.rewards.rm_config import RMTrainConfig

            cfg = RMTrainConfig(kind="pairwise", category=card.name, coverage=card.training.get("coverage", "rouge2"),
                                margin=card.training.get("margin", 0.05))
            pairs = pair_data(cfg, examples)
            if not pairs.groups:
                continue
            m = dataclasses.asdict(evaluate_pairwise(rm, pairs))
            out[role] = {"metric": "pairwise accuracy", "value": [m["accuracy"]], "baseline": [0.5], "pairs": m["pairs"]}
    return out


def rm_table(metrics: dict[str, Any]) -> str:
    rows = ["| RM (held-out) | metric | value | trivial baseline | items |", "|---|---|---:|---:|---:|"]
    for role, m in metrics.items():
        value = " / ".join(f"{v:.3f}" for v in m["value"])
        base = " / ".join(f"{v:.3f}" for v in m["baseline"])
        items = f"{m['segments']} segments" if "segments" in m else f"{m['pairs']} pairs"
        rows.append(f"| {role} | {m['metric']} | {value} | {base} | {items} |")
    return "\n".join(rows)


def _save(fig: Any, path: Path) -> Path:
    from finegrain.io import save_figure

    return save_figure(fig, path)


def plot_rewards(runs: list[QARun], path: Path, window: int = 5) -> Path | None:
    """Every reward source's mean reward (mapped, before normalisation) and the KL against PPO steps."""
    trained = [r for r in runs if r.steps]
    if not trained:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from finegrain.experiments.detox.report import moving_average

    sources = sorted({s for r in trained for s in r.rewards})
    fig, axes = plt.subplots(1, len(sources) + 1, figsize=(4.2 * (len(sources) + 1), 3.8), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(trained):
        c = colors[i % len(colors)]
        for ax, values in [*((axes[0][k], run.rewards.get(s)) for k, s in enumerate(sources)), (axes[0][-1], run.kl)]:
            if values:
                ax.plot(run.steps, values, color=c, alpha=0.25, linewidth=1)
                ax.plot(run.steps, moving_average(values, window), color=c, linewidth=2, label=run.label)
    for k, s in enumerate(sources):
        axes[0][k].set(title=f"reward: {s}", xlabel="PPO step", ylabel="mean summed reward per answer")
    axes[0][-1].set(title="KL to the SFT policy", xlabel="PPO step", ylabel="KL per answer (nats)")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"faint: per step; bold: {window}-step moving average", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_presets(groups: dict[str, list[QARun]], names: dict[str, str], path: Path) -> Path | None:
    """Answer length (tokens) against the relevance error rate and against completeness, one point
    per preset and seed."""
    points = [(tag, r.metrics) for key, tag in PRESETS for r in groups.get(names.get(key, key), []) if r.metrics is not None]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rel, ax_comp) = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, key, title in ((ax_rel, "relevance_error_rate", "relevance error rate (RM)"), (ax_comp, "completeness", "completeness (RM, standardised)")):
        for tag, m in points:
            value = getattr(m, key)
            if value is not None:
                ax.scatter(m.length_tokens, value, label=tag)
                ax.annotate(tag, (m.length_tokens, value), fontsize=8)
        ax.set(xlabel="answer length (tokens)", ylabel=title, title=f"presets: length vs {title.split(' (')[0]}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def write_qa_report(groups: dict[str, list[Path]], out_dir: str | Path, labels: dict[str, str] | None = None, *,
                    rm_dir: str | Path | None = None, settings: dict[str, Any] | None = None, command: str | None = None,
                    title: str = "Long-form QA: fine-grained vs holistic RLHF",
                    paired: tuple[str, str] | None = ("ppo-finegrained", "ppo-holistic"), baseline: str | None = "sft") -> Path:
    """`report.md`, `rewards.png`, `presets.png` in `out_dir` from run folders grouped by policy (one
    folder per seed); returns the report's path. Folders that do not exist yet are left out. `paired`:
    two keys of `groups` whose difference, paired by seed, gets a table when both have two seeds or more;
    `baseline`: the key every other policy is compared with, paired by seed (`versus_baseline_table`)."""
    from finegrain.io import atomic_write_text

    labels = labels or {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = {labels.get(k, k): [summarize(f, labels.get(k, k)) for f in folders if Path(f).is_dir()] for k, folders in groups.items()}
    runs = {k: v for k, v in runs.items() if v}
    first_seed = [rs[0] for rs in runs.values()]
    rewards_png = plot_rewards(first_seed, out / "rewards.png")
    presets_png = plot_presets(runs, labels, out / "presets.png")
    lines = [f"# {title}", ""]
    evaluated = [r.metrics for rs in runs.values() for r in rs if r.metrics is not None]
    if evaluated:
        lines += [f"Held-out evaluation: {evaluated[0].questions} questions, one answer each. RM-judged: relevance and factuality "
                  "error rates (share of sub-sentences / sentences flagged), completeness (standardised), win rate against the SFT "
                  "policy under the preference RM. Independent of the RMs: ROUGE-L against the gold answer, repeated word 3-grams, "
                  "near-duplicate sentences, passage support (share of sentences whose content words are in the passages), length.", "",
                  metrics_table(runs), ""]
        a, b = (labels.get(k, k) for k in paired) if paired else ("", "")
        table = paired_runs_table(runs.get(a, []), runs.get(b, []), a, b) if paired else ""
        if table:
            lines += [f"{a} minus {b}, paired by seed (a figure moves beyond the seeds' noise when its 95% t interval "
                      "does not hold 0):", "", table, ""]
        versus = versus_baseline_table(runs, labels.get(baseline, baseline)) if baseline else ""
        if versus:
            lines += [f"Each policy minus {labels.get(baseline, baseline)}, paired by seed (the same seed samples both policies' "
                      "answers): mean difference [95% t interval], in bold where the interval leaves out 0:", "", versus, ""]
        by_question = versus_baseline_by_question(runs, labels.get(baseline, baseline)) if baseline else ""
        if by_question:
            lines += [f"Each policy of one seed minus {labels.get(baseline, baseline)} at that seed, paired by question: the difference "
                      "[95% bootstrap interval, resampling the questions], in bold where the interval leaves out 0. It measures how "
                      "much the choice of questions moves a figure, not how much another training seed would: with one seed, a bold "
                      "figure can still be that seed's luck.", "", by_question, ""]
    heldout_rm = Path(rm_dir) / "heldout.json" if rm_dir else None
    if heldout_rm is not None and heldout_rm.is_file():
        lines += ["Reward models on the held-out questions' annotated answers:", "", rm_table(json.loads(heldout_rm.read_text(encoding="utf-8"))), ""]
    trained = [r for r in first_seed if r.steps]
    if trained:
        lines += ["| PPO run | Steps | Training time | Last-5-step KL |", "|---|---:|---:|---:|"]
        for r in trained:
            secs = f"{r.seconds / 60:.1f} min" if r.seconds else "-"
            tail = r.kl[-5:]
            lines.append(f"| {r.label} | {r.steps[-1]} | {secs} | {sum(tail) / len(tail):.3f} |")
        lines.append("")
    for png, what in ((rewards_png, "reward per source and KL against steps"), (presets_png, "presets: length against relevance and completeness")):
        if png is not None:
            lines += [f"![{what}]({png.name})", ""]
    if settings:
        lines += ["## Settings", ""] + [f"- {k}: `{v}`" for k, v in settings.items()] + [""]
    if command:
        lines += ["## Command", "", "```bash", command, "```", ""]
    lines += ["## Runs", ""] + [f"- {label}: " + ", ".join(f"`{r.folder}`" for r in rs) for label, rs in runs.items()] + [""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
