"""Steps per second and peak memory of finegrain's SFT, DPO and SimPO next to TRL's DPOTrainer, on the
same preference data and settings, side by side in one run (each arm in a fresh process, one after
the other).

    nice -n 15 .venv/bin/python bench/bench_recipes.py --precision bf16   # the embedded SmolLM2-135M, bf16
    nice -n 15 .venv/bin/python bench/bench_recipes.py --precision fp32 --steps 8 --batch 4

Settings: the embedded SmolLM2-135M-Instruct, bf16 autocast with float32 master weights (TRL:
`bf16=True`, the same autocast) or fp32 (`--precision`; a CPU without native bf16, e.g. AVX2 only,
emulates bf16 many times slower than fp32: finegrain/precision.py), AdamW, one optimiser step per batch of `--batch` pairs (SFT:
`--batch` targets, the chosen responses), prompts rendered by finegrain's renderer within
`--prompt-tokens`, responses cut to `--response-tokens` (EOS included). Data: the first 2 x steps x batch of QA-Feedback's human
pairs from ../shared/data/qa_feedback/feedback.json when present, else a small generated set.
DPO in both: the sigmoid loss, beta 0.1, a frozen reference model computing its log-probs at every
step (TRL's default; finegrain `dpo.reference=model`); finegrain's `precompute` is timed too.
Time per step: the median over steps after the first (a warm-up); peak RSS: the process's
high-water mark (ru_maxrss), model loading included.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from benchkit import REPO, median_after_warmup, run_arm

QA = REPO.parent / "shared" / "data" / "qa_feedback" / "feedback.json"

OURS = """
import sys, importlib
from benchkit import emit
from finegrain.config import load_config
from finegrain.kernel.run import read_metrics
from finegrain.recipes import RECIPES
recipe, path = sys.argv[1], sys.argv[2]
module_name, config_name, _ = RECIPES[recipe]
module = importlib.import_module(module_name)
out = module.train(load_config(getattr(module, config_name), path))
times = [r["time/step"] for r in read_metrics(out / "metrics.jsonl") if "time/step" in r]
emit({"times": times})
"""

TRL = """
import json, sys, time
import torch
from benchkit import emit
from datasets import Dataset
from transformers import AutoModelForCausalLM, TrainerCallback
from trl import DPOConfig, DPOTrainer
from finegrain.models import load_tokenizer, resolve_model
rows, steps, batch, threads, out, bf16 = json.load(open(sys.argv[1])), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6] == "bf16"
torch.set_num_threads(threads)
path = resolve_model("smollm2-135m")
tok = load_tokenizer("smollm2-135m", padding_side="right")
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
stamps = []
class Stamp(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        stamps.append(time.perf_counter())
args = DPOConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=batch, gradient_accumulation_steps=1,
                 learning_rate=5e-7, beta=0.1, loss_type=["sigmoid"], bf16=bf16, use_cpu=True, report_to=[], save_strategy="no",
                 logging_steps=1, max_length=None, dataloader_num_workers=0, seed=0, lr_scheduler_type="constant")
trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[Stamp()])
start = time.perf_counter()
trainer.train()
times = [b - a for a, b in zip([start] + stamps[:-1], stamps)]
emit({"times": times})
"""


def bench_data(folder: Path, prompt_tokens: int, response_tokens: int, limit: int) -> tuple[Path, Path]:
    """The pairs both sides train on: a finegrain pairs file (ours) and the same texts as TRL rows
    (rendered prompt, chosen and rejected cut to the response budget minus the EOS TRL appends);
    the first `limit` pairs only, so that a precomputed reference costs what the run uses."""
    from finegrain.data.pairs import human_pairs, write_pairs
    from finegrain.kernel.prompts import PromptRenderer
    from finegrain.models import load_tokenizer

    if QA.is_file():
        from finegrain.data.load import load_examples

        pairs = human_pairs(load_examples(QA))
    else:
        sys.path.insert(0, str(REPO / "tests"))
        from recipe_helpers import write_feedback

        from finegrain.data.load import load_examples

        pairs = human_pairs(load_examples(write_feedback(folder / "feedback.jsonl", n=64)))
    tok = load_tokenizer("smollm2-135m")
    renderer = PromptRenderer(tok, "question: {question} context: {passages}", prompt_tokens, chat_template=True)

    def cut(text: str) -> str:
        return tok.decode(tok(text, add_special_tokens=False)["input_ids"][: response_tokens - 1])

    from dataclasses import replace

    pairs = [replace(p, chosen=cut(p.chosen), rejected=cut(p.rejected)) for p in pairs[:limit]]
    write_pairs(folder / "pairs.jsonl", pairs, force=True)
    rows = [{"prompt": renderer.render(p.example).text, "chosen": p.chosen, "rejected": p.rejected} for p in pairs]
    (folder / "trl.json").write_text(json.dumps(rows), encoding="utf-8")
    return folder / "pairs.jsonl", folder / "trl.json"


def our_config(recipe: str, pairs: Path, out: Path, steps: int, batch: int, prompt_tokens: int, response_tokens: int, threads: int, reference: str, precision: str) -> dict:
    data = {"pairs_file": str(pairs)} if recipe != "sft" else {"feedback": str(QA) if QA.is_file() else str(pairs.parent / "feedback.jsonl"), "targets": ["preferred"]}
    cfg = {
        "model": {"policy": "smollm2-135m", "precision": precision},
        "data": data,
        "prompt": {"max_prompt_tokens": prompt_tokens, "max_response_tokens": response_tokens, "chat_template": True},
        "optim": {"lr": 5e-7, "batch_size": batch},
        "run": {"out": str(out), "steps": steps, "save_every": 0, "keep_checkpoints": 1, "progress": False, "threads": threads},
    }
    if recipe == "dpo":
        cfg["dpo"] = {"beta": 0.1, "reference": reference}
    return cfg


def main() -> None:
    import yaml

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4, help="pairs (SFT: targets) per optimiser step")
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--response-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--out", type=Path, default=None, help="write the table as JSON here too")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pairs, trl_rows = bench_data(tmp, args.prompt_tokens, args.response_tokens, limit=2 * args.steps * args.batch)
        arms = [("finegrain sft", "sft", "model"), ("finegrain dpo (reference model)", "dpo", "model"),
                ("finegrain dpo (precomputed reference)", "dpo", "precompute"), ("finegrain simpo", "simpo", "model")]
        for label, recipe, reference in arms:
            cfg = our_config(recipe, pairs, tmp / label.replace(" ", "_"), args.steps, args.batch, args.prompt_tokens, args.response_tokens, args.threads, reference, args.precision)
            path = tmp / f"{recipe}-{reference}.yaml"
            path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
            results[label] = run_arm(OURS, [recipe, path], label=label)
            print(f"{label}: done", file=sys.stderr)
        results["TRL 1.16 DPOTrainer"] = run_arm(TRL, [trl_rows, args.steps, args.batch, args.threads, tmp / "trl", args.precision], label="TRL DPOTrainer")
    print(f"SmolLM2-135M, {args.precision}, batch {args.batch}, prompt <= {args.prompt_tokens} + response <= {args.response_tokens} tokens, "
          f"{args.steps} steps (median of steps 2..{args.steps}), {args.threads} threads")
    print(f"| arm | s/step | steps/s | peak RSS (GiB) |\n|---|---|---|---|")
    for label, r in results.items():
        t = median_after_warmup(r["times"])
        print(f"| {label} | {t:.2f} | {1 / t:.3f} | {r['peak_rss_gib']:.2f} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
