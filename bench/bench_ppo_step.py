"""Time of one PPO step of `finegrain train`, split into phases, and the peak memory of the run.

    .venv/bin/python bench/bench_ppo_step.py                       # holistic and fine-grained, shared value head
    .venv/bin/python bench/bench_ppo_step.py --value-model separate --modes dense
    .venv/bin/python bench/bench_ppo_step.py --code /tmp/ppo-before . --repeat 3   # an older commit's worktree vs this one
    .venv/bin/python bench/bench_ppo_step.py --qa runs/demo-qa --modes holistic --epochs 1 --precision fp32 --threads 1 \
        --steps 4 --code /tmp/ppo-before . --parallel                        # the QA demo's PPO step, both checkouts at once

`--qa DIR`: the QA demo's PPO configs instead (configs/qa/ppo_holistic.yaml for `holistic`,
ppo_finegrained.yaml for `dense`: 4 questions x 4 answers of 48 tokens, prompts of 128 tokens, one epoch
of two minibatches), on the SFT policy, split and RMs of a `finegrain demo qa` folder DIR; `--epochs`
is then ignored. `--parallel` runs the checkouts of each configuration at the same time, one process
each (with `--threads 1` on a 2-core machine: side by side, under the same load).

The setting of DESIGN.md's "What a step costs here": the embedded SmolLM2-135M, 32 responses x 20
new tokens per step (8 RealToxicityPrompts prompts x 4 samples, EOS forbidden before 20 tokens so
every step has the same size), bf16 autocast, the toxicity reward (dense or holistic), 1 or 4 PPO
epochs with one optimiser step each (minibatch = the whole rollout of 32, so the first step reuses
the rollout's forward).
Each configuration runs `run_training` in a fresh process; phase times come from the trainer's own
metrics (time/generate, time/score, time/forward, time/update, time/step); the first step is a
warm-up and is left out of the medians. Peak RSS is the process's high-water mark (ru_maxrss),
model loading included.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RTP = Path(__file__).resolve().parents[2] / "shared" / "data" / "realtoxicityprompts" / "prompts.jsonl"  # ../shared beside the repository
FALLBACK_PROMPTS = [
    "The man walked into the bar and", "She told me that the reason", "I can't believe you would",
    "The best thing about the city is", "He started yelling at the", "When I was a kid, my father",
    "The report says that the company", "You should never trust a",
]
PHASES = ("time/generate", "time/score", "time/forward", "time/update", "time/step")

CHILD = """
import json, resource, sys
from finegrain.config import load_config
from finegrain.rl.config import TrainConfig
from finegrain.rl.trainer import run_training
cfg = load_config(TrainConfig, sys.argv[1])
out = run_training(cfg)
rows = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "time/step" in r]
peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print("RESULT " + json.dumps({"rows": rows, "peak_rss_gib": peak_gib}))
"""


def config(mode: str, value_model: str, steps: int, out: Path, threads: int, epochs: int, precision: str = "bf16") -> dict:
    data = {"prompts": str(RTP), "max_prompt_tokens": 64} if RTP.is_file() else {"prompt_list": FALLBACK_PROMPTS}
    return {
        "model": {"policy": "smollm2-135m", "value_model": value_model, "precision": precision},
        "data": data,
        "sampling": {"max_new_tokens": 20, "min_new_tokens": 20, "samples_per_prompt": 4},
        "ppo": {"prompts_per_step": 8, "epochs": epochs, "minibatch_size": 32, "grad_accum": 1, "forward_batch_size": 32},
        "rewards": [{"kind": "toxicity", "mode": mode}],
        "run": {"out": str(out), "steps": steps, "save_every": 0, "keep_checkpoints": 1, "progress": False, "threads": threads},
    }


def qa_config(mode: str, qa_dir: Path, steps: int, out: Path, threads: int, precision: str) -> dict:
    """configs/qa/ppo_{holistic,finegrained}.yaml on the folders of a `finegrain demo qa` run."""
    import yaml

    name = "ppo_holistic" if mode == "holistic" else "ppo_finegrained"
    text = (Path(__file__).resolve().parents[1] / "configs" / "qa" / f"{name}.yaml").read_text()
    cfg = yaml.safe_load(text.replace("runs/qa/", f"{qa_dir.resolve()}/"))
    cfg["model"]["precision"] = precision
    cfg["run"].update({"out": str(out), "steps": steps, "save_every": 0, "keep_checkpoints": 1, "progress": False, "threads": threads})
    return cfg


def start_one(mode: str, value_model: str, steps: int, threads: int, epochs: int, precision: str, code: Path | None,
              tmp: Path, qa: Path | None) -> subprocess.Popen:
    """One configuration in a fresh process; `code`: the checkout whose finegrain runs (default: this one)."""
    import os

    import yaml

    cfg_path = tmp / "c.yaml"
    cfg = qa_config(mode, qa, steps, tmp / "run", threads, precision) if qa else config(mode, value_model, steps, tmp / "run", threads, epochs, precision)
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(code or Path(__file__).resolve().parents[1])}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(cfg_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=code)


def finish_one(proc: subprocess.Popen, mode: str, value_model: str, threads: int, epochs: int) -> dict:
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{mode}/{value_model} failed:\n{stderr[-3000:]}")
    line = next(x for x in stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    measured = result["rows"][1:]  # the first step warms up (allocator, oneDNN kernels)
    summary = {p: statistics.median(r[p] for r in measured) for p in PHASES}
    return {"mode": mode, "value_model": value_model, "epochs": epochs, "threads": threads, "steps_measured": len(measured), "peak_rss_gib": result["peak_rss_gib"], **summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", nargs="+", default=["holistic", "dense"], choices=["holistic", "dense"])
    parser.add_argument("--value-model", nargs="+", default=["shared"], choices=["shared", "separate"])
    parser.add_argument("--steps", type=int, default=6, help="steps per run, the first one a warm-up")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, all cores)")
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 4], help="PPO epochs per rollout (one optimiser step each)")
    parser.add_argument("--precision", default="bf16", help="model.precision of every run (bf16, fp32; auto where the code knows it)")
    parser.add_argument("--code", type=Path, nargs="+", default=[None],
                        help="checkouts to compare side by side (e.g. a `git worktree` of an older commit, then this one); runs alternate between them")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each configuration per checkout, alternating")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--qa", type=Path, help="a `finegrain demo qa` folder: time the QA demo's PPO configs on its SFT policy and RMs")
    parser.add_argument("--parallel", action="store_true", help="run the checkouts of a configuration at the same time")
    args = parser.parse_args()
    if args.qa:
        args.epochs, args.value_model = [1], ["shared"]
    results = []
    settings = [(e, v, m) for e in args.epochs for v in args.value_model for m in args.modes]
    rounds = [[(e, v, m, code) for code in args.code] for e, v, m in settings for _ in range(args.repeat)]
    if not args.parallel:
        rounds = [[run] for group in rounds for run in group]
    for group in rounds:
        with tempfile.TemporaryDirectory(prefix="bench-ppo-") as tmp:
            procs = []
            for i, (epochs, value_model, mode, code) in enumerate(group):
                (Path(tmp) / str(i)).mkdir()
                procs.append(start_one(mode, value_model, args.steps, args.threads, epochs, args.precision, code, Path(tmp) / str(i), args.qa))
            for proc, (epochs, value_model, mode, code) in zip(procs, group):
                r = finish_one(proc, mode, value_model, args.threads, epochs)
                r["code"] = str(code or "this checkout")
                results.append(r)
                phases = "  ".join(f"{p.split('/')[1]} {r[p]:.2f}s" for p in PHASES)
                print(
                    f"{r['code']:<24} {mode:<9} epochs={epochs} value={value_model:<8} {phases}  "
                    f"peak RSS {r['peak_rss_gib']:.2f} GiB  (median of {r['steps_measured']})",
                    flush=True,
                )
    if len(args.code) > 1:  # the ratio of each checkout's median step time to the first's, per setting
        for e, v, m in settings:
            base = statistics.median(r["time/step"] for r in results if (r["epochs"], r["value_model"], r["mode"], r["code"]) == (e, v, m, str(args.code[0])))
            for code in args.code[1:]:
                t = statistics.median(r["time/step"] for r in results if (r["epochs"], r["value_model"], r["mode"], r["code"]) == (e, v, m, str(code)))
                print(f"{m} epochs={e} value={v}: {code} / {args.code[0]} step time = {t / base:.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
