"""The toxicity judge next to the embedded scorer, on the same held-out RealToxicityPrompts texts.

    .venv/bin/python bench/bench_judge.py --threads 1          # from the repository root

Both scorers score the texts the judge was never trained on (the prompts and continuations of the
held-out prompts of `finegrain.rewards.judge.split_rtp`, the PPO runs' hash rule), each with a cold
cache, and the script prints for each: ROC-AUC (Perspective > 0.5 as toxic) and Spearman against
Perspective, on all texts and on continuations alone, and texts per second. The judge runs in fp32
and under bf16 autocast (faster only on CPUs with native bf16: AMX or AVX512-BF16).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path("../shared/data/realtoxicityprompts/prompts.jsonl"))
    p.add_argument("--judge", default=None, help="judge folder (default: the shipped one)")
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = p.parse_args(argv)

    import torch

    from finegrain.rewards.judge import JudgeScorer, _by_part, read_card, shipped_judge, split_rtp
    from finegrain.rewards.toxicity import ProfanityCheckScorer

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = Path(args.judge) if args.judge else shipped_judge()
    card = read_card(folder)
    split = split_rtp(args.data, card["data"]["prompts"]["heldout"], card["data"]["prompts"]["validation"])
    held = split.heldout
    texts = [t.text for t in held]
    figures: dict = {"texts": len(texts), "torch_threads": torch.get_num_threads()}
    scores = {}
    scorers = {"profanity-check": ProfanityCheckScorer, "judge fp32": lambda: JudgeScorer(args.judge, bf16=False),
               "judge bf16": lambda: JudgeScorer(args.judge, bf16=True)}
    for name, make in scorers.items():
        scorer = make()  # loaded outside the timing; its cache is empty
        start = time.perf_counter()
        scores[name] = scorer(texts)
        seconds = time.perf_counter() - start
        figures[name] = {"texts_per_s": round(len(texts) / seconds, 1), **_by_part(held, scores[name])}
    figures["judge bf16 vs fp32 max abs diff"] = round(max(abs(a - b) for a, b in zip(scores["judge bf16"], scores["judge fp32"])), 4)
    for name in scorers:
        f = figures[name]
        print(f"{name:16s} {f['texts_per_s']:8.1f} texts/s   all: ROC-AUC {f['all']['roc_auc']:.3f} Spearman {f['all']['spearman']:.3f}"
              f"   continuations: ROC-AUC {f['continuation']['roc_auc']:.3f} Spearman {f['continuation']['spearman']:.3f}")
    print(f"{len(texts)} held-out texts ({figures['profanity-check']['all']['toxic']} toxic); judge bf16 vs fp32: "
          f"max abs diff {figures['judge bf16 vs fp32 max abs diff']}; torch threads {figures['torch_threads']}")
    if args.out:
        from finegrain.io import atomic_write_json

        atomic_write_json(args.out, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
