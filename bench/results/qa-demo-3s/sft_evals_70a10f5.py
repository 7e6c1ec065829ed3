"""SFT evaluated at sampling seeds 1 and 2 in the 3-seed QA study (70a10f5's code, as its other evals)."""
import sys
sys.path.insert(0, "/work/run")
from dataclasses import asdict
from pathlib import Path
import torch
torch.set_num_threads(1)
from finegrain.data.load import load_examples
from finegrain.experiments.qa.metrics import AnswerSettings, evaluate_policy, format_metrics, load_judges, write_eval
from finegrain.models import load_policy

out = Path("runs/demo-qa-3s")
heldout, rm_dir, policy_dir = out / "data" / "heldout.jsonl", out / "rm", out / "sft" / "final"
examples = load_examples(heldout)
judges = load_judges(rm_dir, heldout)
policy, tokenizer = load_policy(str(policy_dir))
for seed in (1, 2):
    folder = out / f"seed-{seed}" / "sft" / "eval"
    if (folder / "metrics.json").is_file():
        continue
    settings = AnswerSettings(max_new_tokens=48, max_prompt_tokens=128, seed=seed)
    result = evaluate_policy(policy, tokenizer, examples, judges, settings, None, None)
    write_eval(result, folder, {**asdict(settings), "heldout": str(heldout), "rms": str(rm_dir), "policy": str(policy_dir)})
    print(seed, format_metrics(result.metrics), flush=True)
