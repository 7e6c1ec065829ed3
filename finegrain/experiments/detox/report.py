"""Compare runs in one report: `report.md` (the paper's table) and `curves.png` (toxicity, KL vs steps).

A run folder is what the trainer writes (`config.yaml`, `metrics.jsonl`, `final/`) plus `eval/`
(`metrics.json`, `samples.jsonl`, written by `finegrain eval` or the demo). A folder with only
`eval/` is a policy that was evaluated without training (the initial policy of the demo).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finegrain.experiments.detox.metrics import DetoxMetrics, read_metrics

EVAL_DIR = "eval"


@dataclass
class RunSummary:
    label: str
    folder: Path
    metrics: DetoxMetrics | None  # held-out evaluation, when the run has one
    steps: list[int] = field(default_factory=list)  # logged PPO steps
    toxicity: list[float] = field(default_factory=list)  # mean toxicity of each step's responses
    kl: list[float] = field(default_factory=list)  # mean summed KL(pi || pi_ref) per response
    reward_mode: str | None = None  # holistic / dense, from config.yaml
    seed: int | None = None  # run.seed, from config.yaml (pairs the arms of one seed)
    seconds: float | None = None  # training wall-clock, summed over steps


def _reward_mode(cfg: dict[str, Any]) -> str | None:
    """The toxicity source's mode from a run's config (None: no identity-mapped toxicity source)."""
    for r in cfg.get("rewards") or []:
        if r.get("kind") == "toxicity" and r.get("mapping", "identity") == "identity" and float(r.get("weight", 1.0)) == 1.0:
            return r.get("mode")
    return None


def _source_name(cfg: dict[str, Any]) -> str:
    for r in cfg.get("rewards") or []:
        if r.get("kind") == "toxicity":
            return r.get("name") or "toxicity"
    return "toxicity"


def summarize_run(folder: str | Path, label: str | None = None) -> RunSummary:
    from finegrain.experiments.detox.task import toxicity_from_row
    from finegrain.kernel.run import run_config

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"run folder {folder} does not exist")
    eval_file = folder / EVAL_DIR / "metrics.json"
    summary = RunSummary(label or folder.name, folder, read_metrics(eval_file) if eval_file.is_file() else None)
    cfg = run_config(folder)
    summary.reward_mode = _reward_mode(cfg)
    summary.seed = (cfg.get("run") or {}).get("seed")
    log = folder / "metrics.jsonl"
    if not log.is_file():
        return summary
    source = _source_name(cfg)
    seconds = 0.0
    for line in log.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if "step" not in row or "kl" not in row:  # evaluation rows
            continue
        tox = toxicity_from_row(row, source) if summary.reward_mode else None
        summary.steps.append(int(row["step"]))
        summary.toxicity.append(float("nan") if tox is None else tox)
        summary.kl.append(float(row["kl"]))
        seconds += float(row.get("time/step", 0.0))
    summary.seconds = seconds or None
    return summary


# --- the table -------------------------------------------------------------------------------

COLUMNS = (
    ("avg_max_toxicity", "Avg. max toxicity ↓", "{:.3f}"),
    ("toxic_probability", "Toxic prob. ↓", "{:.3f}"),
    ("judge_avg_max_toxicity", "Judge: avg. max toxicity ↓", "{:.3f}"),  # the independent judge, when evaluated with one
    ("judge_toxic_probability", "Judge: toxic prob. ↓", "{:.3f}"),
    ("perplexity", "Perplexity ↓", "{:.2f}"),
    ("dist_2", "dist-2 ↑", "{:.3f}"),
    ("dist_3", "dist-3 ↑", "{:.3f}"),
    ("mean_toxicity", "Mean toxicity", "{:.3f}"),
    ("mean_length", "Length (tokens)", "{:.1f}"),
)


def _columns(runs: list[RunSummary]) -> list[tuple[str, str, str]]:
    """The columns some evaluated run has a value for (the judge's only when a run was judged)."""
    evaluated = [r.metrics.to_json() for r in runs if r.metrics is not None]
    return [c for c in COLUMNS if any(m.get(c[0]) is not None for m in evaluated)]


def _cell(fmt: str, value: float | None) -> str:
    return "-" if value is None else fmt.format(value)


def metrics_table(runs: list[RunSummary]) -> str:
    """The paper's table (Table 1 of Wu et al.: toxicity, fluency, diversity) as markdown."""
    columns = _columns(runs)
    head = "| Policy | " + " | ".join(title for _, title, _ in columns) + " |"
    rule = "|---|" + "|".join("---:" for _ in columns) + "|"
    rows = [head, rule]
    for run in runs:
        if run.metrics is None:
            continue
        m = run.metrics.to_json()
        rows.append(f"| {run.label} | " + " | ".join(_cell(fmt, m.get(key)) for key, _, fmt in columns) + " |")
    return "\n".join(rows)


def spread_table(groups: dict[str, list[RunSummary]]) -> str:
    """The same table over seeds: one row per policy, each figure as mean ± std over its runs."""
    columns = _columns([r for runs in groups.values() for r in runs])
    head = "| Policy | Seeds | " + " | ".join(title for _, title, _ in columns) + " |"
    rows = [head, "|---|---:|" + "|".join("---:" for _ in columns) + "|"]
    for label, runs in groups.items():
        evaluated = [r.metrics.to_json() for r in runs if r.metrics is not None]
        if not evaluated:
            continue
        cells = []
        for key, _, fmt in columns:
            values = [m[key] for m in evaluated if m.get(key) is not None]
            spread = f" ± {fmt.format(statistics.stdev(values))}" if len(values) > 1 else ""
            cells.append(fmt.format(statistics.mean(values)) + spread if values else "-")
        rows.append(f"| {label} | {len(evaluated)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def paired_runs_table(groups: dict[str, list[RunSummary]], a: str, b: str) -> str:
    """`a` minus `b` (two labels of `groups`) over the seeds both have evaluated (finegrain.evaluate.paired_table)."""
    from finegrain.evaluate import metrics_by_seed, paired_table

    keep = ("avg_max_toxicity", "toxic_probability", "judge_avg_max_toxicity", "judge_toxic_probability", "perplexity", "dist_2")
    return paired_table(a, b, metrics_by_seed(groups.get(a, [])), metrics_by_seed(groups.get(b, [])), [c for c in COLUMNS if c[0] in keep])


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last `window` values (fewer at the start); NaNs are skipped."""
    out = []
    for i in range(len(values)):
        chunk = [v for v in values[max(0, i - window + 1) : i + 1] if v == v]
        out.append(sum(chunk) / len(chunk) if chunk else float("nan"))
    return out


KL_LEVELS = (1.0, 2.0, 3.0, 4.0, 6.0)  # nats: where `equal_kl_table` compares runs


def at_kl(toxicity: list[float], kl: list[float], level: float, window: int = 10) -> tuple[int, float] | None:
    """(index, training toxicity) where a run first reaches `level` of KL to the initial policy: the first
    full `window` whose trailing mean KL is at least `level`, and the trailing mean toxicity of the same
    window; None when the run never got that far. Both are estimates from each step's rollouts, hence
    the smoothing."""
    kl_mean, tox_mean = moving_average(kl, window), moving_average(toxicity, window)
    for i in range(window - 1, len(kl_mean)):
        if kl_mean[i] >= level:
            return i, tox_mean[i]
    return None


Curve = tuple[list[int], list[float], list[float]]  # a run's logged steps, training toxicity, KL


def equal_kl_table(a: str, b: str, curves: dict[str, dict[int, Curve]], levels: tuple[float, ...] = KL_LEVELS,
                   window: int = 10) -> str:
    """The training toxicity of runs `a` and `b` (labels of `curves`: {label: {seed: Curve}}) where each
    first reaches a KL to the initial policy (`at_kl`), and `a` minus `b` paired by seed: whether one
    arm cuts more toxicity per nat of KL or only moves further from the initial policy in the same steps.
    A markdown table, one row per KL some run reached; empty when none did."""
    from finegrain.evaluate import paired_difference

    seeds = sorted(set(curves.get(a, {})) & set(curves.get(b, {})))
    rows = [f"| KL (nats) | {a} | {b} | {a} minus {b}, paired |", "|---:|---|---|---|"]
    for level in levels:
        reached = {label: {s: hit for s in seeds if (hit := at_kl(curves[label][s][1], curves[label][s][2], level, window))}
                   for label in (a, b)}
        if not any(reached.values()):
            continue
        cells = []
        for label in (a, b):
            hits = reached[label]
            if not hits:
                cells.append(f"not reached (0/{len(seeds)} seeds)")
                continue
            values = [v for _, v in hits.values()]
            steps = [curves[label][s][0][i] for s, (i, _) in hits.items()]
            spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.3f}{spread} ({len(values)}/{len(seeds)} seeds, step {min(steps)}"
                         + (f"-{max(steps)}" if max(steps) > min(steps) else "") + ")")
        both = [s for s in seeds if s in reached[a] and s in reached[b]]
        if len(both) > 1:
            d = paired_difference([reached[a][s][1] for s in both], [reached[b][s][1] for s in both])
            cells.append(f"{d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}] ({len(both)} seeds)")
        else:
            cells.append(f"{reached[a][both[0]][1] - reached[b][both[0]][1]:+.3f} (1 seed)" if both else "-")
        rows.append(f"| {level:g} | " + " | ".join(cells) + " |")
    return "\n".join(rows) if len(rows) > 2 else ""


def plot_curves(runs: list[RunSummary], path: str | Path, window: int = 10) -> Path | None:
    """Toxicity and KL against steps, one line per trained run (faint: per step; bold: moving
    average over `window` steps). Returns None when no run has a training log."""
    trained = [r for r in runs if r.steps]
    if not trained:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    fig, (ax_tox, ax_kl, ax_front) = plt.subplots(1, 3, figsize=(15, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(trained):
        c = colors[i % len(colors)]
        for ax, values in ((ax_tox, run.toxicity), (ax_kl, run.kl)):
            ax.plot(run.steps, values, color=c, alpha=0.25, linewidth=1)
            ax.plot(run.steps, moving_average(values, window), color=c, linewidth=2, label=run.label)
        first = min(window, len(run.steps)) - 1  # full windows only, as `at_kl` reads them
        ax_front.plot(moving_average(run.kl, window)[first:], moving_average(run.toxicity, window)[first:], color=c, linewidth=2, label=run.label)
    ax_tox.set(title="Toxicity of the training samples", xlabel="PPO step", ylabel="mean toxicity (embedded scorer)")
    ax_kl.set(title="KL to the initial policy", xlabel="PPO step", ylabel="KL(π ‖ π_ref) per response (nats)")
    ax_front.set(title="Toxicity against KL (equal KL: equal cost)", xlabel="KL(π ‖ π_ref) per response (nats)", ylabel="mean toxicity")
    for ax in (ax_tox, ax_kl, ax_front):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"faint: per step; bold: {window}-step moving average (right: both)", fontsize=9)
    fig.tight_layout()
    from finegrain.io import save_figure

    return save_figure(fig, path, dpi=110)


def write_report(
    runs: list[RunSummary],
    out_dir: str | Path,
    *,
    title: str = "finegrain report",
    intro: str = "",
    settings: dict[str, Any] | None = None,
    commands: list[str] | None = None,
    notes: list[str] | None = None,
    groups: dict[str, list[RunSummary]] | None = None,
    paired: tuple[str, str] | None = None,
) -> Path:
    """`out_dir/report.md` and `out_dir/curves.png`; returns the report's path. With `groups`
    (policy label -> its runs over seeds), a mean ± std table comes before the per-run one; with
    `paired` (two of its labels, a and b), a table of a minus b paired by seed follows it."""
    from finegrain.io import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = plot_curves(runs, out / "curves.png")
    lines = [f"# {title}", ""]
    if intro:
        lines += [intro, ""]
    evaluated = [r for r in runs if r.metrics is not None]
    if evaluated:
        m = evaluated[0].metrics
        lines += [f"Held-out evaluation: {m.prompts} prompts x {m.samples_per_prompt} samples each.", ""]
        if groups:
            lines += ["Mean ± standard deviation over seeds:", "", spread_table(groups), ""]
            table = paired_runs_table(groups, *paired) if paired else ""
            if table:
                lines += [f"{paired[0]} minus {paired[1]}, paired by seed (a metric moves beyond the seeds' noise when its "
                          "95% t interval does not hold 0):", "", table, ""]
        # one seed: the runs themselves, by label (the demo's single-seed runs carry the arm's label)
        by_label = groups or {r.label: [r] for r in runs}
        curves = {label: {(r.seed if groups else 0): (r.steps, r.toxicity, r.kl) for r in by_label.get(label, [])
                          if r.steps and (r.seed is not None or not groups)} for label in paired or ()}
        table = equal_kl_table(*paired, curves) if paired else ""
        if table:
            lines += ["Training toxicity at equal KL: each run's 10-step mean toxicity (the training scorer on its own "
                      "rollouts) where its 10-step mean KL to the initial policy first reaches each level"
                      + (", mean ± std over seeds, and the difference paired by seed with its 95% t interval" if groups else
                         " (one seed: no interval; run several seeds for one)")
                      + ". Arms that end at different KL are compared here at the same cost.", "", table, ""]
        if groups:
            lines += ["Each run:", ""]
        lines += [metrics_table(runs), ""]
    trained = [r for r in runs if r.steps]
    if trained:
        lines += ["| Run | Steps | Training time | Last-10-step toxicity | Last-10-step KL |", "|---|---:|---:|---:|---:|"]
        for r in trained:
            secs = f"{r.seconds / 60:.1f} min" if r.seconds else "-"
            lines.append(f"| {r.label} | {r.steps[-1]} | {secs} | {_tail_mean(r.toxicity):.3f} | {_tail_mean(r.kl):.3f} |")
        lines.append("")
    if png is not None:
        rel = png.name
        lines += [f"![toxicity and KL against steps]({rel})", ""]
    if settings:
        lines += ["## Settings", ""] + [f"- {k}: `{v}`" for k, v in settings.items()] + [""]
    if commands:
        lines += ["## Commands", "", "```bash", *commands, "```", ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["## Runs", ""] + [f"- {r.label}: `{r.folder}`" for r in runs] + [""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def _tail_mean(values: list[float], n: int = 10) -> float:
    tail = [v for v in values[-n:] if v == v]
    return sum(tail) / len(tail) if tail else float("nan")
