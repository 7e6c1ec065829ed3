"""Scoring throughput of trained reward models, fp32 against bf16 autocast, and how far bf16 moves
their scores: the reward-model issue's "scoring throughput under bf16" (README, Reward models).

    .venv/bin/python bench/bench_rm_scoring.py RM_FOLDER [RM_FOLDER ...] --file FEEDBACK [--responses 64] [--repeats 3]

Each RM scores the same responses (the first responses of FEEDBACK's examples, with their prompts and
passages) once per precision per repeat, fp32 and bf16 alternating so that both see the same load; a
warm-up pass of each comes first. Prints, per RM, the median responses per second under each precision,
their ratio, and the largest difference between the two precisions' scores (P(error) per segment for a
span RM, the raw score for a pairwise one). What an RM costs to score depends on its backbone and input
length, not on how well it was trained: RMs trained for a few batches (`epochs=0.05`) serve.
bf16 pays only on a CPU or GPU that runs it natively (finegrain/precision.py); elsewhere it is emulated.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def flat_scores(rm, examples, responses) -> list[float]:
    scores = rm.score(examples, responses)
    return scores.scores[scores.mask].float().tolist()


def main() -> int:
    import torch

    from finegrain.data.load import load_examples
    from finegrain.precision import bf16_is_fast
    from finegrain.rewards.card import RMCard, load_reward_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rms", nargs="+", help="trained RM folders (each has finegrain_rm.json)")
    ap.add_argument("--file", required=True, help="QA-Feedback .json or finegrain .jsonl: the responses to score")
    ap.add_argument("--responses", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    examples = [ex for ex in load_examples(args.file) if ex.responses][: args.responses]
    responses = [ex.responses[0].text for ex in examples]
    print(f"{len(responses)} responses from {args.file}; {args.threads} thread(s); this CPU runs bf16 natively: {bf16_is_fast('cpu')}")
    print("| RM | backbone | fp32 responses/s | bf16 responses/s | bf16 / fp32 | max abs score difference |")
    print("|---|---|---:|---:|---:|---:|")
    results = {}
    for folder in args.rms:
        card = RMCard.load(folder)
        rms = {name: load_reward_model(folder, bf16=flag) for name, flag in (("fp32", False), ("bf16", True))}
        for rm in rms.values():  # warm-up
            flat_scores(rm, examples[:4], responses[:4])
        rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
        scores: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            for name, rm in rms.items():
                start = time.perf_counter()
                scores[name] = flat_scores(rm, examples, responses)
                rates[name].append(len(responses) / (time.perf_counter() - start))
        diff = max((abs(a - b) for a, b in zip(scores["fp32"], scores["bf16"])), default=float("nan"))
        med = {k: statistics.median(v) for k, v in rates.items()}
        results[folder] = {"category": card.name, "backbone": card.backbone, "responses_per_s": med,
                           "ratio": med["bf16"] / med["fp32"], "max_abs_diff": diff}
        print(f"| {card.name} ({card.kind}) | {card.backbone} | {med['fp32']:.2f} | {med['bf16']:.2f} | "
              f"{med['bf16'] / med['fp32']:.2f}x | {diff:.4f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
