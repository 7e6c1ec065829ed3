"""Step time and peak memory of finegrain's fine-grained GRPO next to TRL 1.16's GRPOTrainer and
finegrain's own PPO step, on the detoxification task, side by side in one run.

    nice -n 15 .venv/bin/python bench/bench_grpo_vs_trl.py                          # 4 steps per arm, 2 rounds, 1 thread
    nice -n 15 .venv/bin/python bench/bench_grpo_vs_trl.py --steps 6 --rounds 3 --json grpo-vs-trl.json
    nice -n 15 .venv/bin/python bench/bench_grpo_vs_trl.py --arms grpo-holistic grpo-finegrained trl-grpo
    .venv/bin/python bench/bench_grpo_vs_trl.py --table grpo-vs-trl.json   # the table of a (partial) --json file
    .venv/bin/python bench/bench_grpo_vs_trl.py ... --rounds 1 --json grpo-vs-trl.json --more   # one more round into that file

Arms (each run in a fresh process; the arms alternate, A B C A B C ..., `--rounds` times, so a noisy
shared machine slows them alike):
  grpo-finegrained  `finegrain train grpo` with configs/detox_critic_free_finegrained.yaml (the drop
                    in toxicity of each sentence on its last token, DeepSeekMath's process supervision)
  grpo-holistic     the same with configs/detox_critic_free_holistic.yaml (one reward per response)
  grpo-finegrained-ckpt   the same with model.gradient_checkpointing=true (layers recomputed in the backward)
  grpo-finegrained-micro  the same with optim.grad_accum=2 (each optimiser step's responses in two micro-batches)
  trl-grpo          TRL's GRPOTrainer, reward 1 - toxicity of the whole completion from the same scorer, at
                    GRPOConfig's defaults otherwise: gradient checkpointing on
  trl-grpo-no-ckpt  the same with gradient_checkpointing=False
  ppo-finegrained   `finegrain train` (PPO, shared value head) with configs/detox_finegrained.yaml

Held equal, from the GRPO config (PPO's config holds the same values; a test pins them): the
embedded SmolLM2-135M in fp32 (`precision: auto` on a CPU without native bf16; `--precision`), the
prompts of finegrain/assets/detox_prompts.jsonl (plain text, no chat template), the scorer
profanity-check, `--prompts` prompts x `--samples` samples (G) per step, at most `--new-tokens`
new tokens (EOS allowed from the first), temperature 1.0, top_p 0.9, top_k off, the KL to a frozen
reference as a k3 loss term of weight 0.05 (TRL `beta`; PPO: in the reward), clip 0.2, one pass over
the samples (TRL `num_iterations=1`) in optimiser steps of `--batch` responses (TRL
`per_device_train_batch_size`, with `steps_per_generation` = samples / batch so that one generation
feeds the same optimiser steps as one finegrain step), the per-sequence token mean (TRL
`loss_type="grpo"`), the group std scaling (`scale_rewards="group"`), fused AdamW at lr 3e-5 with a
constant schedule, gradient clipping at 1.0, seed 0, `--threads` torch threads per arm.
Gradient checkpointing (memory against recomputation) is what the arm's name says: TRL's GRPOConfig
turns it on by default, finegrain's configs leave it off; compare arms with the same setting, and
read the others as what each library does at its defaults.
Not equal, by design or because TRL has no such setting: TRL scores a completion once (a
number per response: it has no per-token or per-segment reward); finegrain's fine-grained arm
scores each sentence's prefix. The prompts each step draws (TRL's shuffled sampler, finegrain's
`batch_indices`; same file, same seed, different order). finegrain's prompt budget (64 tokens,
which no detox prompt reaches; TRL 1.16 has no prompt limit). No-grad log-prob passes in chunks of
32 responses (finegrain) or of `per_device_train_batch_size` (TRL). TRL trains in `train()` mode
(SmolLM2 has no dropout, so the numbers agree).

A step is one generation of prompts x samples responses, its scoring, the old and reference
log-probs and its optimiser steps (TRL: `steps_per_generation` of its optimiser steps). Time per
step: the wall time between the ends of consecutive steps (finegrain: when the step's metrics row
is logged; TRL: `on_step_end` of the generation's last optimiser step), the median over the steps
after the first (a warm-up) of every run of the arm. Phases: finegrain's metrics (time/generate,
time/score, time/forward, time/update); TRL's own profiling timers (transformers.generate,
_calculate_rewards, _prepare_inputs = generate + score + old/ref log-probs). Peak RSS: the
process's high-water mark (ru_maxrss), model loading included.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchkit import REPO, run_arm

CONFIGS = {  # arm: recipe, config, settings on top of the bench's
    "grpo-finegrained": ("grpo", "configs/detox_critic_free_finegrained.yaml", []),
    "grpo-finegrained-ckpt": ("grpo", "configs/detox_critic_free_finegrained.yaml", ["model.gradient_checkpointing=true"]),
    "grpo-finegrained-micro": ("grpo", "configs/detox_critic_free_finegrained.yaml", ["optim.grad_accum=2"]),
    "grpo-holistic": ("grpo", "configs/detox_critic_free_holistic.yaml", []),
    "ppo-finegrained": ("ppo", "configs/detox_finegrained.yaml", []),
}
TRL_ARMS = {"trl-grpo": True, "trl-grpo-no-ckpt": False}  # arm: TRL's gradient_checkpointing (True is GRPOConfig's default)
ARMS = ("grpo-finegrained", "grpo-finegrained-ckpt", "grpo-finegrained-micro", "grpo-holistic", "trl-grpo", "trl-grpo-no-ckpt", "ppo-finegrained")
PHASES = ("time/generate", "time/score", "time/forward", "time/update")

OURS = """
import importlib, sys, time
from benchkit import emit
import finegrain.kernel.run as R
from finegrain.config import load_config
from finegrain.recipes import RECIPES
recipe, path, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
stamps = []
log_row = R.log_row
def stamped_log_row(*args, **kwargs):  # both recipes log a step's row once it is done
    log_row(*args, **kwargs)
    stamps.append((time.perf_counter(), time.process_time()))
R.log_row = stamped_log_row
module_name, config_name, _ = RECIPES[recipe]
module = importlib.import_module(module_name)
out = module.train(load_config(getattr(module, config_name), path, overrides))
rows = [r for r in R.read_metrics(out / "metrics.jsonl") if "time/step" in r]
emit({"times": [b[0] - a[0] for a, b in zip(stamps, stamps[1:])], "cpu": [b[1] - a[1] for a, b in zip(stamps, stamps[1:])], "phases": {p: [r[p] for r in rows[1:]] for p in rows[0] if p.startswith("time/")}})
"""

TRL = """
import json, sys, time
from collections import defaultdict
import torch
from benchkit import emit
from datasets import Dataset
from transformers import AutoModelForCausalLM, TrainerCallback
import trl.extras.profiling as profiling
from trl import GRPOConfig, GRPOTrainer
from finegrain.models import load_tokenizer, resolve_model
from finegrain.rewards.toxicity import load_scorer
s = json.loads(sys.argv[1])
torch.set_num_threads(s["threads"])
stamps, timers = [], defaultdict(list)
def record(self, duration):  # TRL's own profiling timers, per step of ours
    timers[self.name.split(".", 1)[1]].append((len(stamps) // s["steps_per_generation"], duration))
profiling.ProfilingContext._log_metrics = record
class Stamp(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        stamps.append((time.perf_counter(), time.process_time()))
scorer = load_scorer(s["scorer"])
def one_minus_toxicity(completions, **kwargs):
    return [1.0 - t for t in scorer(list(completions))]
path = resolve_model(s["model"])
tok = load_tokenizer(s["model"], padding_side="left")
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
args = GRPOConfig(
    output_dir=s["out"], max_steps=s["steps"] * s["steps_per_generation"], seed=s["seed"], use_cpu=True, bf16=s["bf16"],
    report_to=[], save_strategy="no", logging_steps=1, dataloader_num_workers=0, disable_tqdm=True,
    learning_rate=s["lr"], lr_scheduler_type="constant", max_grad_norm=s["max_grad_norm"], optim="adamw_torch_fused",
    per_device_train_batch_size=s["batch"], gradient_accumulation_steps=1, steps_per_generation=s["steps_per_generation"],
    num_generations=s["samples"], max_completion_length=s["new_tokens"],
    temperature=s["temperature"], top_p=s["top_p"], top_k=s["top_k"],
    beta=s["kl_coef"], epsilon=s["clip"], num_iterations=s["epochs"], loss_type="grpo", scale_rewards="group",
    gradient_checkpointing=s["gradient_checkpointing"],
)
trainer = GRPOTrainer(model=model, reward_funcs=one_minus_toxicity, args=args, train_dataset=Dataset.from_list(s["rows"]), processing_class=tok, callbacks=[Stamp()])
trainer.train()
ends = stamps[s["steps_per_generation"] - 1 :: s["steps_per_generation"]]  # the end of each generation's optimiser steps
def per_step(name):
    sums = defaultdict(float)
    for step, d in timers.get(name, []):
        sums[step] += d
    return [sums[i] for i in range(1, len(ends))]
phases = {"transformers.generate": per_step("transformers.generate"), "_calculate_rewards": per_step("_calculate_rewards"), "_prepare_inputs": per_step("_prepare_inputs")}
emit({"times": [b[0] - a[0] for a, b in zip(ends, ends[1:])], "cpu": [b[1] - a[1] for a, b in zip(ends, ends[1:])], "phases": phases})
"""


def settings_from_config(path: Path) -> dict:
    """The settings every arm shares, read from the fine-grained GRPO config."""
    import yaml

    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    s, c, o = cfg["sampling"], cfg["critic_free"], cfg["optim"]
    return {
        "model": cfg["model"]["policy"], "prompts_file": cfg["data"]["prompts"], "max_prompt_tokens": cfg["data"]["max_prompt_tokens"],
        "scorer": cfg["rewards"][0]["scorer"], "seed": cfg["run"]["seed"], "prompts": c["prompts_per_step"], "samples": s["samples_per_prompt"],
        "new_tokens": s["max_new_tokens"], "temperature": s["temperature"], "top_p": s["top_p"], "top_k": s["top_k"],
        "kl_coef": c["kl_coef"], "clip": c["clip"], "epochs": c["epochs"], "lr": o["lr"], "batch": o["batch_size"], "max_grad_norm": o.get("max_grad_norm", 1.0),
    }


def trl_rows(settings: dict) -> list[dict]:
    """The detox prompts as TRL rows, rendered by finegrain's renderer (plain `{prompt}`, no chat template)."""
    from finegrain.kernel.prompts import PromptRenderer
    from finegrain.models import load_tokenizer
    from finegrain.rl.config import DataConfig
    from finegrain.rl.prompts import load_prompts

    prompts = load_prompts(DataConfig(prompts=str(REPO / settings["prompts_file"]), max_prompt_tokens=settings["max_prompt_tokens"], eval_prompts=0), settings["seed"])
    renderer = PromptRenderer(load_tokenizer(settings["model"]), "{prompt}", settings["max_prompt_tokens"])
    return [{"prompt": renderer.render(e).text} for e in prompts.train]


def our_overrides(recipe: str, settings: dict, out: Path, steps: int, threads: int, precision: str) -> list[str]:
    section, batch = ("ppo", "ppo.minibatch_size") if recipe == "ppo" else ("critic_free", "optim.batch_size")
    return [
        f"run.out={out}", f"run.steps={steps}", f"run.threads={threads}", "run.progress=false", "run.save_every=0", "run.eval_every=0",
        f"model.precision={precision}", f"sampling.samples_per_prompt={settings['samples']}", f"sampling.max_new_tokens={settings['new_tokens']}",
        f"{section}.prompts_per_step={settings['prompts']}", f"{batch}={settings['batch']}",
    ]


def run_one(arm: str, settings: dict, steps: int, threads: int, precision: str, tmp: Path, rows: list[dict]) -> dict:
    out = tmp / f"{arm}-{time.monotonic_ns()}"
    if arm in TRL_ARMS:
        rollout = settings["prompts"] * settings["samples"]
        if rollout % settings["batch"]:
            raise SystemExit(f"--batch {settings['batch']} must divide prompts x samples ({rollout}) for TRL's steps_per_generation")
        child = {**settings, "rows": rows, "steps": steps, "threads": threads, "out": str(out), "bf16": precision == "bf16", "steps_per_generation": rollout // settings["batch"],
                 "gradient_checkpointing": TRL_ARMS[arm]}
        return run_arm(TRL, [json.dumps(child)], threads, label=arm)
    recipe, config, extra = CONFIGS[arm]
    return run_arm(OURS, [recipe, REPO / config, *our_overrides(recipe, settings, out, steps, threads, precision), *extra], threads, label=arm)


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}" if values else "-"


def table(runs: dict[str, list[dict]], header: str) -> str:
    """The markdown table and the phases: medians over every measured step of every run of an arm,
    their range, and the ratios to TRL's."""
    summary = {}
    for arm, results in runs.items():
        if not results:
            continue
        times, cpu = [t for r in results for t in r["times"]], [t for r in results for t in r["cpu"]]  # already without the warm-up
        peaks = [r["peak_rss_gib"] for r in results]
        names = [p for p in results[0]["phases"] if any(r["phases"].get(p) for r in results)]
        summary[arm] = {"wall": statistics.median(times), "times": times, "cpu": statistics.median(cpu), "cpus": cpu, "peak": max(peaks), "peaks": peaks,
                        "phases": {p: statistics.median(v for r in results for v in r["phases"].get(p, [])) for p in names}, "runs": len(results)}
    base = summary.get("trl-grpo")

    def ratio(m: dict, key: str) -> str:
        return f"{m[key] / base[key]:.2f}" if base else "-"

    lines = [header, "| arm | runs x steps | wall s/step (median, range) | x TRL | CPU s/step (median, range) | x TRL | peak RSS GiB (max, range) | x TRL |",
             "|---|---|---|---|---|---|---|---|"]
    for arm, m in summary.items():
        lines.append(f"| {arm} | {m['runs']} x {len(m['times']) // m['runs']} | {m['wall']:.2f} ({spread(m['times'])}) | {ratio(m, 'wall')} | "
                     f"{m['cpu']:.2f} ({spread(m['cpus'])}) | {ratio(m, 'cpu')} | {m['peak']:.2f} ({spread(m['peaks'])}) | {ratio(m, 'peak')} |")
    lines.append("\nphases (median wall s per step):")
    lines += [f"  {arm}: " + ", ".join(f"{p} {v:.2f}" for p, v in m["phases"].items()) for arm, m in summary.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = settings_from_config(REPO / CONFIGS["grpo-finegrained"][1])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=["grpo-finegrained", "trl-grpo", "ppo-finegrained"])
    parser.add_argument("--steps", type=int, default=4, help="steps per run, the first a warm-up")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each arm, alternating between the arms")
    parser.add_argument("--threads", type=int, default=1, help="torch (and OMP) threads per arm")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="fp32 on a CPU without native bf16 (what precision: auto picks there)")
    parser.add_argument("--prompts", type=int, default=defaults["prompts"], help="prompts per step")
    parser.add_argument("--samples", type=int, default=defaults["samples"], help="G: samples per prompt")
    parser.add_argument("--new-tokens", type=int, default=defaults["new_tokens"], help="maximum completion length")
    parser.add_argument("--batch", type=int, default=defaults["batch"], help="responses per optimiser step")
    parser.add_argument("--json", type=Path, help="also write every run's result here (rewritten after each run)")
    parser.add_argument("--table", type=Path, help="only print the table of a --json file written earlier (complete or not)")
    parser.add_argument("--more", action="store_true", help="with --json: add this run's rounds to the runs already in that file (same settings)")
    args = parser.parse_args()
    if args.table:
        saved = json.loads(args.table.read_text(encoding="utf-8"))
        print(table(saved["runs"], f"{saved['started']}: {json.dumps(saved['settings'])}; {json.dumps(saved['args'])}"))
        return
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step is a warm-up")
    settings = {**defaults, "prompts": args.prompts, "samples": args.samples, "new_tokens": args.new_tokens, "batch": args.batch}
    runs: dict[str, list[dict]] = {arm: [] for arm in args.arms}
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if args.more:
        if not (args.json and args.json.is_file()):
            parser.error("--more adds to the runs of an existing --json file")
        saved = json.loads(args.json.read_text(encoding="utf-8"))
        if saved["settings"] != settings:
            parser.error(f"--more: {args.json} was measured with other settings: {saved['settings']}")
        runs = {arm: saved["runs"].get(arm, []) for arm in {**saved["runs"], **runs}}
        started = f"{saved['started']}, more from {started}"
    header = (f"{started}: SmolLM2-135M, {args.precision}, {args.threads} thread(s) per arm; {settings['prompts']} prompts x {settings['samples']} samples "
              f"per step, <= {settings['new_tokens']} new tokens, optimiser steps of {settings['batch']} responses; {args.steps} steps per run "
              f"(the first a warm-up), {args.rounds} round(s) of the arms in turn")
    with tempfile.TemporaryDirectory(prefix="bench-grpo-") as tmp:
        rows = trl_rows(settings)
        for r in range(args.rounds):
            for arm in args.arms:
                t0 = time.perf_counter()
                result = run_one(arm, settings, args.steps, args.threads, args.precision, Path(tmp), rows)
                runs[arm].append(result)
                print(f"round {r + 1} {arm}: wall s/step {', '.join(f'{t:.2f}' for t in result['times'])}; CPU s/step {', '.join(f'{t:.2f}' for t in result['cpu'])}; "
                      f"peak RSS {result['peak_rss_gib']:.2f} GiB; run {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
                if args.json:
                    args.json.write_text(json.dumps({"started": started, "settings": settings, "args": {k: str(v) for k, v in vars(args).items()}, "runs": runs}, indent=1) + "\n", encoding="utf-8")
    print("\n" + table(runs, header))


if __name__ == "__main__":
    main()
