"""The fair detoxification study (issue 9): holistic vs fine-grained PPO that differ only in where the
reward is placed, over seeds, reward normalisations and two prompt sets, two runs at a time; and the
same two arms trained by GRPO and RLOO (issue 12, `--algos ppo grpo rloo`).

    .venv/bin/python bench/detox_study.py plan                  # the jobs, in the order they run
    .venv/bin/python bench/detox_study.py run --workers 2       # train + evaluate every job not done yet
    .venv/bin/python bench/detox_study.py summarize             # OUT/summary.md, OUT/summary.json, OUT/curves.png, OUT/kl-frontier.png
    .venv/bin/python bench/detox_study.py run --algos ppo grpo rloo --groups shipped-grpo shipped-rloo   # critic-free arms only
    .venv/bin/python bench/detox_study.py run ... --keep bench/results/detox-study   # also keep each run's small files to commit
    .venv/bin/python bench/detox_study.py run --kl-coefs 0.02 0.1 --kl-seeds 0 1 --groups shipped-batch shipped-batch-kl0.02 shipped-batch-kl0.1
                                                                # the KL sweep: both arms compared at equal KL
    .venv/bin/python bench/detox_study.py run --curve-seeds 0 1 --groups shipped-batch-100steps --workers 1
                                                                # the long curves: both arms, 100 steps (curves-100steps.png)

A job is one (prompt set, reward normalisation, seed, arm): `finegrain train` with
configs/detox_{holistic,finegrained}.yaml (which differ only in the reward mode) and the overrides
below, then `finegrain eval` of its final policy on the held-out prompts with the same seed.
GRPO and RLOO jobs run `finegrain train grpo|rloo` with configs/detox_critic_free_{arm}.yaml
(PPO's settings, a test keeps them equal; the groups normalise the rewards, so no reward_norm) and
sit in the groups `shipped-grpo` and `shipped-rloo`. The initial policy is evaluated once per
(prompt set, seed). Every run uses one thread, so two
workers fill this machine's two cores. A finished job (its eval/metrics.json exists) is skipped:
run the same command again after an interruption. Jobs run in priority order (`plan` shows it), so
a study cut short still holds the most important comparisons.

Prompt sets: `shipped` (finegrain/assets/detox_prompts*.jsonl) and `rtp` (RealToxicityPrompts from
../shared/data, split by `finegrain.experiments.detox.task.load_detox_split`: the 100 prompts with the smallest SHA-1
held out).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from finegrain.evaluate import paired_difference, seeds_needed  # noqa: E402
from finegrain.experiments.detox.report import equal_kl_table, moving_average, summarize_run  # noqa: E402

FINEGRAIN = [sys.executable, "-m", "finegrain.cli"]  # this checkout's code (PYTHONPATH below), whatever is installed
RTP = ROOT.parent / "shared" / "data" / "realtoxicityprompts" / "prompts.jsonl"
ARMS = ("holistic", "finegrained")
FIGURES = ("avg_max_toxicity", "toxic_probability", "judge_avg_max_toxicity", "judge_toxic_probability",
           "perplexity", "dist_2", "dist_3", "kl")


CRITIC_FREE = ("grpo", "rloo")
# critic-free variants: group name -> (recipe, overrides); fine-grained arm only (with one segment per
# response the holistic arm is the recipe's own holistic arm)
VARIANTS = {"grpo-responses": ("grpo", ["critic_free.dense_baseline=responses"])}


@dataclass(frozen=True)
class Job:
    prompts: str  # shipped | rtp
    norm: str  # ppo.reward_norm, or "initial" for the untrained policy; for GRPO/RLOO the algorithm's name
    seed: int
    arm: str  # holistic | finegrained | initial
    steps: int
    kl_coef: float | None = None  # None: the config's (0.05); else ppo.kl_coef for the KL sweep

    @property
    def group(self) -> str:
        steps = "" if self.steps == 30 or self.arm == "initial" else f"-{self.steps}steps"
        kl = "" if self.kl_coef is None else f"-kl{self.kl_coef:g}"
        return f"{self.prompts}-{self.norm}{steps}{kl}"

    def folder(self, out: Path) -> Path:
        return out / self.group / f"seed-{self.seed}" / self.arm

    @property
    def name(self) -> str:
        return (f"{self.prompts}/{self.norm}/seed {self.seed}/{self.arm}" + ("" if self.steps == 30 else f"/{self.steps} steps")
                + ("" if self.kl_coef is None else f"/kl {self.kl_coef:g}"))


def plan(default_norm: str, other_norms: list[str], seeds: list[int], rtp_seeds: list[int], norm_seeds: list[int],
         algos: list[str] = ("ppo",), kl_coefs: list[float] = (), kl_seeds: list[int] = (0,),
         curve_seeds: list[int] = (), curve_steps: int = 100) -> list[Job]:
    """Jobs in priority order: the main table's first three seeds, one seed of every other normalisation,
    GRPO and RLOO on the main table's first three seeds (when asked for), the KL sweep (when asked for),
    RealToxicityPrompts, the main table's remaining seeds, the long curves (when asked for), more seeds
    of the other normalisations."""
    jobs: list[Job] = []

    def add(prompts: str, norm: str, seed_list: list[int], kl_coef: float | None = None, steps: int = 30) -> None:
        for seed in seed_list:
            for arm in ARMS:
                if (norm == "segment" or norm in VARIANTS) and arm == "holistic":
                    continue  # one segment per response: `segment` normalises exactly as `batch` does; a variant's holistic arm is its recipe's
                jobs.append(Job(prompts, norm, seed, arm, steps, kl_coef))

    add("shipped", default_norm, seeds[:3])
    for norm in other_norms:
        add("shipped", norm, norm_seeds[:1])
    for algo in algos:
        if algo in CRITIC_FREE or algo in VARIANTS:
            add("shipped", algo, seeds[:3])
    for kl in kl_coefs:
        add("shipped", default_norm, list(kl_seeds), kl)
    add("rtp", default_norm, rtp_seeds)
    add("shipped", default_norm, seeds[3:])
    add("shipped", default_norm, list(curve_seeds), steps=curve_steps)
    for norm in other_norms:
        add("shipped", norm, norm_seeds[1:])
    initial = [Job("shipped", "initial", s, "initial", 30) for s in seeds] + [Job("rtp", "initial", s, "initial", 30) for s in rtp_seeds]
    return initial[:1] + jobs + initial[1:]  # later seeds' initial rows last: only the seeds trained need them


def prompt_files(out: Path, prompts: str) -> tuple[Path, Path]:
    """(training prompts, held-out prompts) as files."""
    from finegrain.experiments.detox.task import load_detox_split, shipped_prompt_files, write_prompts

    if prompts == "shipped":
        return shipped_prompt_files()
    train, held = out / "rtp-train.jsonl", out / "rtp-heldout.jsonl"
    if not held.is_file():
        split = load_detox_split(RTP, heldout=100)
        out.mkdir(parents=True, exist_ok=True)
        write_prompts(split.train, train)
        write_prompts(split.heldout, held)
    return train, held


def sh(cmd: list[str], log: Path) -> bool:
    """Run one command on one CPU thread (two side by side fill two cores without spinning on each other)."""
    import os

    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with log.open("a", encoding="utf-8") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env).returncode == 0


KEPT = ("config.yaml", "metrics.jsonl", "eval/metrics.json")  # what `summarize` reads: a few kB a run


def keep_results(job: Job, out: Path, keep: Path) -> None:
    """Copy a finished job's small files (not its checkpoints) to KEEP, in OUT's layout, so that
    `summarize --out KEEP` gives the same tables: the record of a study outlives its run folders."""
    import shutil

    for name in KEPT:
        src = job.folder(out) / name
        if src.is_file():
            dst = job.folder(keep) / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            if name == "config.yaml":  # no path of this machine in a committed file
                dst.write_text(portable(dst.read_text(encoding="utf-8"), out), encoding="utf-8")


def portable(text: str, out: Path) -> str:
    """`text` with this checkout's and OUT's absolute paths made relative (the repository's; `OUT/...`)."""
    for prefix, label in ((Path(out).resolve(), "OUT"), (ROOT, ".")):
        text = text.replace(f"{prefix}/", f"{label}/").replace(str(prefix), label)
    return text


def run_job(job: Job, out: Path, evaluate: bool = True, train: bool = True, keep: Path | None = None,
            precision: str = "auto") -> str:
    if keep is not None and (job.folder(keep) / "eval" / "metrics.json").is_file():
        return f"{job.name}: kept before (in {keep})"  # a study resumed on a machine without the old run folders
    message = _run_job(job, out, evaluate, train, precision)
    if keep is not None and (job.folder(out) / "eval" / "metrics.json").is_file():
        keep_results(job, out, keep)
    return message


def _run_job(job: Job, out: Path, evaluate: bool, train: bool, precision: str = "auto") -> str:
    folder = job.folder(out)
    if (folder / "eval" / "metrics.json").is_file():
        return f"{job.name}: done before"
    if not train and job.arm != "initial" and not (folder / "final").is_dir():
        return f"{job.name}: not trained yet"
    if not evaluate and (job.arm == "initial" or (folder / "final").is_dir()):
        return f"{job.name}: nothing to train"
    t0 = time.perf_counter()
    train_file, held_file = prompt_files(out, job.prompts)
    log = folder.parent / f"{job.arm}.log"
    if job.arm != "initial" and not (folder / "final").is_dir():
        resume = ["--resume"] if (folder / "checkpoints" / "latest").is_file() else []
        if job.norm in CRITIC_FREE:
            recipe = [job.norm, "--config", f"configs/detox_critic_free_{job.arm}.yaml"]
        elif job.norm in VARIANTS:
            name, overrides = VARIANTS[job.norm]
            recipe = [name, "--config", f"configs/detox_critic_free_{job.arm}.yaml", *overrides]
        else:
            recipe = ["ppo", "--config", f"configs/detox_{job.arm}.yaml", f"ppo.reward_norm={job.norm}"]
            if job.kl_coef is not None:
                recipe.append(f"ppo.kl_coef={job.kl_coef:g}")
        cmd = [*FINEGRAIN, "train", *recipe, *resume, f"run.out={folder}", f"run.seed={job.seed}", f"run.steps={job.steps}",
               "run.threads=1", "run.progress=false", "run.save_every=5", f"data.prompts={train_file}"]
        if precision != "auto":
            cmd.append(f"model.precision={precision}")
        # a checkpoint every 5 steps: a run takes an hour or more on one core here, and an interrupted one goes
        # on from its last checkpoint (exact resume: the same trajectory as an uninterrupted run)
        if not sh(cmd, log):
            return f"{job.name}: training FAILED (see {log})"
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # final/ holds the policy; 1.6 GB each otherwise
    if not evaluate:
        return f"{job.name}: trained in {(time.perf_counter() - t0) / 60:.1f} min"
    policy = "smollm2-135m" if job.arm == "initial" else str(folder / "final")
    cmd = [*FINEGRAIN, "eval", policy, "--prompts", str(held_file), "--seed", str(job.seed), "--out", str(folder / "eval")]
    if precision != "auto":
        cmd.append(f"--{precision}")
    if not sh(cmd, log):
        return f"{job.name}: evaluation FAILED (see {log})"
    return f"{job.name}: done in {(time.perf_counter() - t0) / 60:.1f} min"


# --- the summary ----------------------------------------------------------------------------


def _mean_std(values: list[float]) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} (n={len(values)})"


def paired_interval(diffs: list[float]) -> str:
    """Mean of paired differences with its 95% t interval (finegrain.evaluate.paired_difference)."""
    if len(diffs) < 2:
        return "-"
    d = paired_difference(diffs, [0.0] * len(diffs))
    return f"{d.mean:+.3f}, 95% CI [{d.low:+.3f}, {d.high:+.3f}]"


def power_note(scorer: list[float], judge: list[float], effects: tuple[float, ...] = (0.02, 0.05)) -> str:
    """How much these seeds can see: the smallest difference a paired t test at 5% detects with 80%
    power at the observed spread of each judge's paired differences, and the seeds that differences of
    `effects` would need (finegrain.evaluate: the spread is estimated from few seeds, so these are
    planning figures, not results)."""
    if len(scorer) < 2:
        return ""
    s, j = (paired_difference(d, [0.0] * len(d)) for d in (scorer, judge))
    need = "; ".join(f"{e:.2f}: {seeds_needed(e, s.sd) or '>10000'} (scorer), {seeds_needed(e, j.sd) or '>10000'} (judge)" for e in effects)
    return (f"Power: with {s.n} seeds and the spread of the paired differences (sd {s.sd:.3f} scorer, {j.sd:.3f} judge), a paired "
            f"t test at 5% detects with 80% power a difference of {s.detectable():.3f} (scorer) or {j.detectable():.3f} (judge); "
            f"seeds needed for 80% power at a true difference of {need}.")


def steps_to(steps: list[int], toxicity: list[float], target: float, window: int = 10) -> int | None:
    """The first step whose trailing `window`-step mean training toxicity is at most `target`; full
    windows only (from the `window`-th step), so that one lucky early batch does not count."""
    for i, (step, value) in enumerate(zip(steps, moving_average(toxicity, window))):
        if i >= window - 1 and value <= target:
            return step
    return None


def equal_kl(per_seed: dict[str, dict[int, dict]]) -> list[str]:
    """The arms' training toxicity at equal KL (finegrain's `equal_kl_table`), from the runs' training
    logs: a check that one arm does not simply go further from the initial policy. Lines for the summary
    (empty without both arms' KL curves)."""
    curves = {arm: {s: (r["curve"][0], r["curve"][1], r["kl_curve"]) for s, r in per_seed[arm].items() if "kl_curve" in r} for arm in ARMS}
    table = equal_kl_table("finegrained", "holistic", curves)
    if not table:
        return []
    return ["", "Training toxicity at equal KL (10-step means where each run's 10-step mean KL first reaches the level; "
                "the training scorer on the training rollouts; `finegrain.experiments.detox.report.equal_kl_table`):", "", table]


def plot_frontier(groups: dict, path: Path) -> bool:
    """Training toxicity against KL (10-step means, full windows), one line per seed and arm, one panel per
    group with both arms; False when no group has them."""
    panels = [g for g in sorted(groups) if all(any("kl_curve" in r for r in groups[g].get(a, {}).values()) for a in ARMS)]
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from finegrain.io import save_figure

    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False)
    for ax, group in zip(axes[0], panels):
        for arm, colour in zip(ARMS, ("tab:blue", "tab:orange")):
            for i, r in enumerate(r for r in groups[group][arm].values() if "kl_curve" in r):
                kl, tox = moving_average(r["kl_curve"], 10)[9:], moving_average(r["curve"][1], 10)[9:]
                ax.plot(kl, tox, color=colour, alpha=0.7, linewidth=1, label=arm if i == 0 else None)
        ax.set_title(group, fontsize=9)
        ax.set_xlabel("KL to the initial policy")
    axes[0][0].set_ylabel("training toxicity")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return True


def _kl_coef(folder: Path) -> float | None:
    """The run's KL coefficient from its config.yaml (PPO: ppo.kl_coef; GRPO/RLOO: critic_free.kl_coef)."""
    import yaml

    path = folder / "config.yaml"
    cfg = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {}
    for section in ("ppo", "critic_free"):
        if isinstance(cfg.get(section), dict) and "kl_coef" in cfg[section]:
            return float(cfg[section]["kl_coef"])
    return None


def collect(out: Path) -> dict:
    """Every finished evaluation under OUT, as {group: {arm: {seed: figures}}}."""
    groups: dict[str, dict[str, dict[int, dict]]] = {}
    for metrics in sorted(out.glob("*/seed-*/*/eval/metrics.json")):
        folder = metrics.parent.parent
        group, seed, arm = folder.parent.parent.name, int(folder.parent.name.split("-")[1]), folder.name
        run = summarize_run(folder)
        figures = json.loads(metrics.read_text(encoding="utf-8"))
        row = {k: figures.get(k, float("nan")) for k in FIGURES if k != "kl"}
        if run.steps:
            row["kl"] = statistics.mean(run.kl[-10:])
            row["train_toxicity_first5"] = statistics.mean(run.toxicity[:5])
            row["train_toxicity_last10"] = statistics.mean(run.toxicity[-10:])
            row["curve"] = [run.steps, run.toxicity]
            row["kl_curve"] = run.kl
            row["kl_coef"] = _kl_coef(folder)
            if run.seconds:
                row["s_per_step"] = run.seconds / len(run.steps)  # wall time, two one-thread runs side by side
        groups.setdefault(group, {}).setdefault(arm, {})[seed] = row
    return groups


ALGO_GROUPS = {"PPO": "shipped-batch", "GRPO": "shipped-grpo", "GRPO, responses baseline": "shipped-grpo-responses", "RLOO": "shipped-rloo"}


def side_by_side(groups: dict, title: str, label: str, rows: dict[str, str]) -> list[str]:
    """One table of several groups (rows: {row label: group}), each arm it has, on the seeds every
    one of those runs finished; empty when fewer than two groups have runs."""
    present = {name: g for name, g in rows.items() if g in groups}
    if len(present) < 2:
        return []
    runs_of = [(name, g, arm) for name, g in present.items() for arm in ARMS if groups[g].get(arm)]
    seeds = sorted(set.intersection(*(set(groups[g][arm]) for _, g, arm in runs_of)))
    if not seeds:
        return []
    cols = ("avg_max_toxicity", "judge_avg_max_toxicity", "toxic_probability", "perplexity", "dist_2", "kl", "s_per_step")
    lines = [f"## {title}", "", f"Seeds {seeds}, the same for every row; steps to 50%: the first step whose "
             "10-step mean training toxicity (full windows: from step 10) is at most half the seed's initial one ('-': not within the run).", "",
             f"| {label} | arm | " + " | ".join(cols) + " | steps to 50% |", "|---|---|" + "---:|" * (len(cols) + 1)]
    # a seed's starting toxicity: its first 5 steps, averaged over every run of that seed (all start from the same policy)
    start = {s: statistics.mean(groups[g][arm][s]["train_toxicity_first5"] for _, g, arm in runs_of
                                if "train_toxicity_first5" in groups[g][arm][s]) for s in seeds}
    for name, g, arm in runs_of:
        runs = [groups[g][arm][s] for s in seeds]
        cells = [_mean_std([r.get(k, float("nan")) for r in runs]) for k in cols]
        reach = [str(steps_to(*r["curve"], 0.5 * start[s]) or "-") for s, r in zip(seeds, runs) if "curve" in r]
        lines.append(f"| {name} | {arm} | " + " | ".join(cells) + f" | {', '.join(reach)} |")
    return lines + [""]


def kl_sweep(groups: dict, norm: str = "batch") -> tuple[list[str], dict]:
    """Both PPO arms at every KL coefficient run (the groups shipped-NORM and shipped-NORM-klX): the KL they
    ended at and their held-out toxicity, so that the arms can be compared at equal KL rather than at equal
    coefficient. Returns the table's lines and {arm: [(kl_coef, [(kl, scorer tox, judge tox) per seed])]}."""
    base = f"shipped-{norm}"
    names = [g for g in groups if g == base or g.startswith(base + "-kl")]
    points: dict[str, list] = {}
    for g in names:
        for arm in ARMS:
            runs = [r for r in groups[g].get(arm, {}).values() if r.get("kl_coef") is not None and "kl" in r]
            if runs:
                points.setdefault(arm, []).append((runs[0]["kl_coef"], [(r["kl"], r["avg_max_toxicity"], r["judge_avg_max_toxicity"]) for r in runs]))
    if sum(len(v) for v in points.values()) < 3:  # a sweep needs more than the main table's one coefficient per arm
        return [], {}
    lines = [f"## The KL sweep (PPO, `reward_norm: {norm}`)", "",
             "Held-out toxicity against the KL each run ended at (last 10 steps): compare the arms at equal KL, "
             "not at equal coefficient (kl-sweep.png).", "",
             "| arm | ppo.kl_coef | seeds | KL | avg_max_toxicity | judge_avg_max_toxicity |", "|---|---:|---:|---:|---:|---:|"]
    for arm in ARMS:
        for coef, runs in sorted(points.get(arm, [])):
            cells = [_mean_std([r[i] for r in runs]) for i in range(3)]
            lines.append(f"| {arm} | {coef:g} | {len(runs)} | " + " | ".join(cells) + " |")
    return lines + [""], points


def plot_kl_sweep(points: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from finegrain.io import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharex=True)
    for ax, i, title in ((axes[0], 1, "training scorer"), (axes[1], 2, "independent judge")):
        for arm, colour in zip(ARMS, ("tab:blue", "tab:orange")):
            xs = [r[0] for _, runs in points.get(arm, []) for r in runs]
            ys = [r[i] for _, runs in points.get(arm, []) for r in runs]
            ax.scatter(xs, ys, color=colour, label=arm, s=18)
            means = sorted((statistics.mean(r[0] for r in runs), statistics.mean(r[i] for r in runs)) for _, runs in points.get(arm, []))
            ax.plot([m[0] for m in means], [m[1] for m in means], color=colour, alpha=0.6)
        ax.set_title(title)
        ax.set_xlabel("KL to the initial policy (last 10 steps)")
    axes[0].set_ylabel("held-out avg max toxicity")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def plot_curves(groups: dict, path: Path, rows: dict[str, str] = ALGO_GROUPS) -> None:
    """Training toxicity (10-step trailing mean, averaged over seeds) against steps, for every row
    ({label: group}, by default the algorithms) x arm."""
    curves = []
    for algo, group in rows.items():
        for arm in ARMS:
            runs = [r["curve"] for r in groups.get(group, {}).get(arm, {}).values() if "curve" in r]
            if runs:
                n = min(len(c[0]) for c in runs)
                smooth = [moving_average(c[1][:n], 10) for c in runs]
                curves.append((algo, arm, len(runs), runs[0][0][:n], [statistics.mean(v) for v in zip(*smooth)]))
    if not curves:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from finegrain.io import save_figure

    fig, ax = plt.subplots(figsize=(7, 4))
    colours = dict(zip(rows, ("tab:blue", "tab:orange", "tab:red", "tab:green")))
    for algo, arm, n, steps, values in curves:
        ax.plot(steps, values, label=f"{algo} {arm} (n={n})", color=colours[algo], linestyle="-" if arm == "finegrained" else "--")
    ax.set_xlabel("step")
    ax.set_ylabel("training toxicity (10-step mean)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def with_shared_holistic(groups: dict) -> tuple[dict, set[str]]:
    """`groups` where every `PROMPTS-segment` group without a holistic arm takes `PROMPTS-batch`'s (with one
    reward per response, `segment` normalises exactly as `batch` does, so `plan` never trains it twice),
    so that its fine-grained runs are compared with their holistic counterpart; and the groups that did."""
    shared = {}
    for group, arms in groups.items():
        prompts, _, norm = group.partition("-")
        batch = groups.get(f"{prompts}-batch", {}).get("holistic")
        if norm == "segment" and "holistic" not in arms and batch:
            shared[group] = {**arms, "holistic": batch}
    return {**groups, **shared}, set(shared)


def write_summary(out: Path) -> str:
    groups = collect(out)
    per_group, shared = with_shared_holistic(groups)
    lines = ["# Fair detoxification study", "",
             "Mean ± std over seeds (n = seeds finished). `judge_*`: the independent judge; the others: the training "
             "scorer (profanity-check). kl: mean summed KL to the initial policy per response, last 10 steps.", ""]
    head = "| group | arm | " + " | ".join(FIGURES) + " |"
    for group in sorted(groups):
        lines += [f"## {group}", "", head, "|---|---|" + "---:|" * len(FIGURES)]
        initial = groups.get(group.split("-")[0] + "-initial", {}).get("initial", {})
        for arm in ("initial", *ARMS):
            seeds = per_group[group].get(arm) or (initial if arm == "initial" else {})
            if not seeds:
                continue
            cells = [_mean_std([s.get(k, float("nan")) for s in seeds.values()]) for k in FIGURES]
            label = f"{arm} (the batch runs: the same under `segment`)" if group in shared and arm == "holistic" else arm
            lines.append(f"| {group} | {label} | " + " | ".join(cells) + " |")
        per_seed = {arm: per_group[group].get(arm, {}) for arm in ARMS}
        common = sorted(set(per_seed["holistic"]) & set(per_seed["finegrained"]))
        if common:
            diffs = [per_seed["finegrained"][s]["avg_max_toxicity"] - per_seed["holistic"][s]["avg_max_toxicity"] for s in common]
            jd = [per_seed["finegrained"][s]["judge_avg_max_toxicity"] - per_seed["holistic"][s]["judge_avg_max_toxicity"] for s in common]
            wins = sum(d < 0 for d in diffs)
            lines += ["", f"Fine-grained minus holistic, held-out avg max toxicity, paired by seed {common}: "
                          f"scorer {_mean_std(diffs)} (fine-grained lower in {wins}/{len(common)}); judge {_mean_std(jd)}.",
                      f"Paired t intervals (a difference is within the noise when its interval holds 0): scorer "
                      f"{paired_interval(diffs)}; judge {paired_interval(jd)}.", power_note(diffs, jd)]
            for arm in ARMS:
                runs = per_seed[arm]
                reach = []
                for s in common:
                    r = runs[s]
                    if "curve" not in r:
                        continue
                    start = statistics.mean(per_seed[a][s]["train_toxicity_first5"] for a in ARMS)
                    reach.append(f"seed {s}: 75% at {steps_to(*r['curve'], 0.75 * start) or '-'}, 50% at {steps_to(*r['curve'], 0.5 * start) or '-'}")
                lines.append(f"- {arm}, steps to 75% / 50% of the initial training toxicity (10-step mean): " + "; ".join(reach))
            lines += equal_kl(per_seed)
        lines.append("")
    lines += side_by_side(groups, "Reward normalisations (PPO)", "ppo.reward_norm",
                          {n: f"shipped-{n}" for n in ("batch", "none", "running", "segment")})
    lines += side_by_side(groups, "PPO, GRPO and RLOO", "algorithm", ALGO_GROUPS)
    sweep, points = kl_sweep(groups)
    lines += sweep
    if points:
        plot_kl_sweep(points, out / "kl-sweep.png")
    plot_curves(groups, out / "curves.png")
    plot_frontier(groups, out / "kl-frontier.png")
    for group in groups:  # the long curves (--curve-seeds): one plot per length
        if group.endswith("steps") and "-kl" not in group:
            plot_curves(groups, out / f"curves-{group.rsplit('-', 1)[1]}.png", {f"PPO, {group.rsplit('-', 1)[1][:-5]} steps": group})
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text, encoding="utf-8")
    slim = {g: {a: {s: {k: v for k, v in r.items() if k not in ("curve", "kl_curve")} for s, r in arms.items()} for a, arms in d.items()} for g, d in groups.items()}
    (out / "summary.json").write_text(json.dumps(slim, indent=2) + "\n", encoding="utf-8")
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("plan", "run", "summarize"))
    parser.add_argument("--out", type=Path, default=Path("runs/detox-study"))
    parser.add_argument("--norm", default="batch", help="the normalisation of the main table")
    parser.add_argument("--other-norms", nargs="*", default=["none", "running", "segment"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--rtp-seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--norm-seeds", type=int, nargs="*", default=[0, 1])
    parser.add_argument("--kl-coefs", type=float, nargs="*", default=[],
                        help="the KL sweep: both PPO arms at these ppo.kl_coef values (the configs' is 0.05), to compare "
                             "the arms at equal KL to the initial policy (summary: the KL sweep table and kl-sweep.png)")
    parser.add_argument("--kl-seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--curve-seeds", type=int, nargs="*", default=[],
                        help="the long curves: both PPO arms on the shipped prompts for --curve-steps steps at these seeds "
                             "(group shipped-NORM-<N>steps; steps to 75%% / 50%% of the initial toxicity and curves-<N>steps.png)")
    parser.add_argument("--curve-steps", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-jobs", type=int, default=None, help="run only the first N jobs of the plan")
    parser.add_argument("--train-only", action="store_true", help="train every job; evaluate later with another `run`")
    parser.add_argument("--eval-only", action="store_true", help="evaluate the jobs already trained (and the initial policy)")
    parser.add_argument("--algos", nargs="+", default=["ppo"], choices=("ppo", *CRITIC_FREE, *VARIANTS),
                        help="add GRPO and/or RLOO arms (PPO's settings, the main table's first three seeds)")
    parser.add_argument("--seed-major", action="store_true",
                        help="every job of a seed before the next seed (a study cut short has whole seeds of every arm)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="copy each finished job's config, training log and held-out figures here (e.g. a folder "
                             "under bench/results/ to commit); `summarize --out KEEP` reads them")
    parser.add_argument("--groups", nargs="*", default=None,
                        help="run only the jobs of these groups (e.g. shipped-grpo shipped-rloo), or of one arm of a group "
                             "(shipped-batch/holistic), and their initial policies")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="training and evaluation precision (finegrain/precision.py); a study begun on a CPU without native "
                             "bf16 ran fp32: pass fp32 to add seeds to it on one with bf16")
    args = parser.parse_args()
    jobs = plan(args.norm, args.other_norms, args.seeds, args.rtp_seeds, args.norm_seeds, args.algos, args.kl_coefs, args.kl_seeds,
                args.curve_seeds, args.curve_steps)
    if args.groups is not None:
        wanted = [j for j in jobs if j.group in args.groups or f"{j.group}/{j.arm}" in args.groups]
        initial = {(j.prompts, j.seed) for j in wanted}
        jobs = [j for j in jobs if j in wanted or (j.arm == "initial" and (j.prompts, j.seed) in initial)]
    if args.seed_major:
        jobs.sort(key=lambda j: j.seed)  # stable: within a seed, the plan's order
    jobs = jobs[: args.max_jobs]
    if args.action == "plan":
        for i, job in enumerate(jobs):
            print(f"{i + 1:3d}. {job.name}  ->  {job.folder(args.out)}")
        return 0
    if args.action == "run":
        with ThreadPoolExecutor(args.workers) as pool:
            for message in pool.map(lambda j: run_job(j, args.out, not args.train_only, not args.eval_only, args.keep, args.precision), jobs):
                print(message, flush=True)
    print(write_summary(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
