"""The SFT policy of the 3-seed QA study evaluated at sampling seeds 1 and 2, with the code of commit 70a10f5
(that of the study's other evaluations; `finegrain demo qa` at later commits does this itself, `eval-sft` per seed).

    git worktree add /tmp/fg-70a10f5 70a10f5
    cd /tmp/fg-70a10f5 && python .../sft_evals_70a10f5.py runs/demo-qa-3s     # the study's folder, relative to that checkout

The script runs with the checkout it is started from first on sys.path (the working directory).
"""
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))

import torch  # noqa: E402

from finegrain.data.load import load_examples  # noqa: E402
from finegrain.experiments.qa.metrics import AnswerSettings, evaluate_policy, format_metrics, load_judges, write_eval  # noqa: E402
from finegrain.models import load_policy  # noqa: E402

torch.set_num_threads(1)
out = Path(sys.argv[1])
heldout, rm_dir, policy_dir = out / "data" / "heldout.jsonl", out / "rm", out / "sft" / "final"
examples = load_examples(heldout)
judges = load_judges(rm_dir, heldout)
policy, tokenizer = load_policy(str(policy_dir))
for seed in (1, 2):
    folder = out / f"seed-{seed}" / "sft" / "eval"
    if (folder / "metrics.json").is_file():
        continue
    settings = AnswerSettings(max_new_tokens=48, max_prompt_tokens=128, seed=seed)  # the demo's evaluation at 70a10f5
    result = evaluate_policy(policy, tokenizer, examples, judges, settings, None, None)
    write_eval(result, folder, {**asdict(settings), "heldout": str(heldout), "rms": str(rm_dir), "policy": str(policy_dir)})
    print(seed, format_metrics(result.metrics), flush=True)
