"""Sampling time with finegrain's nucleus filter against transformers' own top-p, on the embedded
policy at the detox rollout's size (8 prompts x 4 samples x 32 new tokens, temperature 1, top-p 0.9),
one process, the two arms interleaved round by round on the same model and prompts, each round from
the same seed; also how often the two gave the same responses.

    .venv/bin/python bench/bench_top_p.py [--rounds 5] [--threads 1] [--prompts 8] [--samples 4] [--new-tokens 32]

Prints the median seconds per rollout of each arm (after one warm-up round) and their ratio.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--top-p", type=float, default=0.9)
    args = parser.parse_args()

    import torch

    from finegrain.kernel.generation import GenerationSettings, HFGenerator
    from finegrain.kernel.prompts import PromptRenderer
    from finegrain.models import load_policy

    torch.set_num_threads(args.threads)
    model, tok = load_policy("smollm2-135m")
    prompts = [json.loads(line)["prompt"] for line in (ROOT / "finegrain/assets/detox_prompts.jsonl").read_text().splitlines()[: args.prompts]]
    ids, mask = PromptRenderer(tok).encode(prompts)
    settings = GenerationSettings(samples_per_prompt=args.samples, max_new_tokens=args.new_tokens, top_p=args.top_p)
    generator = HFGenerator(model, tok)

    def ours() -> torch.Tensor:
        return generator.sample(ids, mask, settings).response_ids

    @torch.no_grad()
    def theirs() -> torch.Tensor:
        g = args.samples
        out = model.generate(input_ids=ids.repeat_interleave(g, 0), attention_mask=mask.repeat_interleave(g, 0).long(), do_sample=True,
                             temperature=1.0, top_k=0, top_p=args.top_p, max_new_tokens=args.new_tokens,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        return out[:, ids.shape[1]:]

    times: dict[str, list[float]] = {"nucleus_filter": [], "transformers": []}
    same = []
    for r in range(args.rounds + 1):  # round 0: warm-up
        outs = {}
        for name, fn in (("nucleus_filter", ours), ("transformers", theirs)) if r % 2 == 0 else (("transformers", theirs), ("nucleus_filter", ours)):
            torch.manual_seed(1000 + r)
            t0 = time.perf_counter()
            outs[name] = fn()
            if r:
                times[name].append(time.perf_counter() - t0)
        a, b = outs["nucleus_filter"], outs["transformers"]
        n = min(a.shape[1], b.shape[1])
        same.append(float((a[:, :n] == b[:, :n]).all(dim=1).float().mean()))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"seconds_per_rollout": med, "ranges": {k: [min(v), max(v)] for k, v in times.items()},
                      "ratio_nucleus_over_transformers": med["nucleus_filter"] / med["transformers"],
                      "share_of_identical_responses": statistics.mean(same), "settings": vars(args)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
