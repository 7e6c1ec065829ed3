"""Holistic vs fine-grained detoxification over several seeds: does fine-grained reach a given
toxicity in fewer steps, at similar perplexity? (The paper's headline, on GPT-2 large with the
Perspective API: toxicity 0.192 -> holistic 0.130 at perplexity 11.75, fine-grained 0.081 at 9.77.)

    .venv/bin/python bench/detox_seeds.py --seeds 0 1 2                 # the demo's settings, per seed
    .venv/bin/python bench/detox_seeds.py --seeds 0 1 2 --steps 100 --out runs/detox-seeds-100
    .venv/bin/python bench/detox_seeds.py --summarize-only --out runs/detox-seeds

Each seed is one `finegrain demo detox --seed S --out OUT/seed-S` (initial policy, holistic run,
fine-grained run, each evaluated on the same held-out prompts with the same sampling seed); an
interrupted study goes on where it stopped. Then, per seed and run:

- steps to target: the first step at which the training samples' toxicity, as a 10-step trailing
  mean, falls to `--target-fraction` (default 0.5) of the initial toxicity (the mean of both runs'
  first 5 steps); "-" when never reached;
- the held-out table's figures (avg max toxicity, toxic probability, perplexity, dist-2/3).

The summary goes to OUT/summary.md and OUT/summary.json, with mean and standard deviation over
the seeds that finished, and which seeds those are.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from finegrain.experiments.detox.report import moving_average, summarize_run  # noqa: E402

RUNS = ("holistic", "finegrained")
FIGURES = ("avg_max_toxicity", "toxic_probability", "perplexity", "dist_2", "dist_3")


def run_seed(seed: int, out: Path, steps: int | None, extra: list[str]) -> bool:
    cmd = [str(ROOT / ".venv" / "bin" / "finegrain"), "demo", "detox", "--out", str(out / f"seed-{seed}"), "--seed", str(seed)]
    if steps is not None:
        cmd += ["--steps", str(steps)]
    for setting in extra:
        cmd += ["--set", setting]
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    ok = subprocess.run(cmd).returncode == 0
    print(f"seed {seed}: {'done' if ok else 'FAILED'} in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    return ok


def steps_to_target(steps: list[int], toxicity: list[float], target: float, window: int = 10) -> int | None:
    for step, value in zip(steps, moving_average(toxicity, window)):
        if value <= target:
            return step
    return None


def summarize(out: Path, seeds: list[int], fraction: float) -> dict:
    per_seed = {}
    for seed in seeds:
        folder = out / f"seed-{seed}"
        runs = {name: summarize_run(folder / name) for name in ("initial", *RUNS) if (folder / name).is_dir()}
        if not all(name in runs and runs[name].metrics is not None for name in ("initial", *RUNS)):
            continue  # unfinished seed
        start = statistics.mean(t for name in RUNS for t in runs[name].toxicity[:5])
        target = fraction * start
        row = {"initial_training_toxicity": start, "target": target}
        for name, run in runs.items():
            m = run.metrics.to_json()
            row[name] = {k: m[k] for k in FIGURES}
            if name in RUNS:
                row[name]["steps_to_target"] = steps_to_target(run.steps, run.toxicity, target)
                row[name]["steps"] = run.steps[-1]
        per_seed[seed] = row
    return {"seeds_finished": sorted(per_seed), "target_fraction": fraction, "per_seed": per_seed}


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def write_summary(summary: dict, out: Path) -> str:
    per_seed = summary["per_seed"]
    seeds = summary["seeds_finished"]
    lines = [
        "# Holistic vs fine-grained detoxification over seeds", "",
        f"Seeds finished: {', '.join(map(str, seeds)) or 'none'}. "
        f"Target: {summary['target_fraction']:.0%} of the initial training toxicity (10-step trailing mean).", "",
        "| Policy | " + " | ".join(FIGURES) + " | steps to target (per seed) |",
        "|---|" + "---:|" * (len(FIGURES) + 1),
    ]
    for name in ("initial", *RUNS):
        cells = [_mean_std([per_seed[s][name][k] for s in seeds]) for k in FIGURES]
        reach = ", ".join(str(per_seed[s][name].get("steps_to_target") or "-") for s in seeds) if name in RUNS else ""
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {reach} |")
    lines += ["", "Per seed (held-out avg max toxicity / perplexity):", ""]
    for s in seeds:
        row = per_seed[s]
        lines.append(f"- seed {s}: " + "; ".join(
            f"{name} {row[name]['avg_max_toxicity']:.3f} / {row[name]['perplexity']:.2f}" for name in ("initial", *RUNS)))
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text, encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/detox-seeds"))
    parser.add_argument("--steps", type=int, default=None, help="PPO steps per run (default: the demo's)")
    parser.add_argument("--set", action="append", default=[], dest="settings", help="training setting for every run")
    parser.add_argument("--target-fraction", type=float, default=0.5)
    parser.add_argument("--summarize-only", action="store_true")
    args = parser.parse_args()
    if not args.summarize_only:
        for seed in args.seeds:
            run_seed(seed, args.out, args.steps, args.settings)
            print(write_summary(summarize(args.out, args.seeds, args.target_fraction), args.out), flush=True)
    print(write_summary(summarize(args.out, args.seeds, args.target_fraction), args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
