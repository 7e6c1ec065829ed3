"""How much of a QA PPO step the reward models take: fine-grained PPO with the three QA RMs as
sources (relevance, factuality, completeness) beside holistic PPO with the preference RM, at the
QA demo's scale (configs/qa/, prompts of 128 tokens, answers of 48, 4 questions x 4 answers a step).

    .venv/bin/python bench/bench_qa_rm_share.py [--out runs/bench-qa-rm-share] [--steps 4] [--threads 1]

It runs `finegrain demo qa` for the split, a 2-step SFT, the four RMs trained for a few batches
(`rm.epochs=0.05`: what an RM costs to score depends on its backbone and input length, not on how well
it was trained) and `--steps` PPO steps of each arm, then prints the median seconds per phase
(time/generate, time/score, time/forward, time/update, time/step from each run's metrics.jsonl; the
first step is a warm-up) and the RMs' share of a step. Both arms run in one process, one after the
other, on the same machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHASES = ("time/generate", "time/score", "time/forward", "time/update", "time/step")
ARMS = {"ppo-finegrained": "fine-grained (relevance + factuality + completeness RMs)", "ppo-holistic": "holistic (preference RM)"}


def phase_medians(metrics: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "time/step" in r]
    if not steps:
        raise SystemExit(f"{metrics}: no step with time/step")
    kept = steps[1:] if len(steps) > 1 else steps
    return {k: statistics.median(r[k] for r in kept) for k in PHASES}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/bench-qa-rm-share")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    stages = ["split", "sft", "rm-relevance", "rm-factuality", "rm-completeness", "rm-preference", *ARMS]
    cmd = [sys.executable, "-m", "finegrain.cli", "demo", "qa", "--out", args.out, "--threads", str(args.threads)]
    for s in stages:
        cmd += ["--stage", s]
    cmd += ["--set", "sft.run.steps=2", "--set", "rm.epochs=0.05", "--set", f"ppo.run.steps={args.steps}", "--set", "ppo.run.save_every=0"]
    subprocess.run(cmd, cwd=REPO, check=True)
    print(f"\nmedian seconds per PPO step after the first ({args.steps} steps, {args.threads} thread(s)):")
    print("| arm | generate | score (RMs) | forward | update | step | RMs' share |")
    print("|---|---|---|---|---|---|---|")
    result = {}
    for arm, label in ARMS.items():
        m = phase_medians(REPO / args.out / arm / "metrics.jsonl")
        result[arm] = m
        cells = " | ".join(f"{m[k]:.1f}" for k in PHASES)
        print(f"| {label} | {cells} | {m['time/score'] / m['time/step']:.0%} |")
    ratio = result["ppo-finegrained"]["time/step"] / result["ppo-holistic"]["time/step"]
    print(f"\nfine-grained / holistic step time: {ratio:.2f}x")


if __name__ == "__main__":
    main()
