"""Sampling time of finegrain's generator against transformers' own `generate`, on the embedded
policy at the detox rollout's size (8 prompts x 4 samples x 32 new tokens, temperature 1, top-p 0.9),
one process, the arms interleaved round by round (the order rotates) on the same model and prompts,
each round from the same seed.

    .venv/bin/python bench/bench_sampling.py [--rounds 5] [--threads 1] [--prompts 8] [--samples 4] [--new-tokens 32]

Arms:
  transformers          `model.generate(do_sample=True, top_p=...)`: its top-p sorts the vocabulary,
                        its sampler is `torch.multinomial`, each prompt's forward runs G times
  finegrain             `HFGenerator.sample`: `nucleus_filter` (the 1,024 most likely tokens first),
                        `InverseCDFSampler`, one prompt forward per prompt shared by its G samples
  finegrain-no-sharing  the same, each prompt's forward run G times (`shared_prompt_cache` off)
  finegrain-logprobs    the same as finegrain, recording the sampled tokens' log-probs (what GRPO/RLOO
                        use as pi_old: `critic_free.old_logprobs=sampling`)

Prints the median seconds per rollout of each arm (after one warm-up round; CPU time of this
process, and wall time) and their ratios to transformers. The arms sample from the same distribution
(tests/test_kernel.py), not the same tokens: finegrain draws with its own sampler.
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

ARMS = ("transformers", "finegrain", "finegrain-no-sharing", "finegrain-logprobs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--arms", nargs="*", default=list(ARMS), choices=ARMS)
    args = parser.parse_args()

    import dataclasses

    import torch

    import finegrain.kernel.generation as generation
    from finegrain.kernel.prompts import PromptRenderer
    from finegrain.models import load_policy

    torch.set_num_threads(args.threads)
    model, tok = load_policy("smollm2-135m")
    prompts = [json.loads(line)["prompt"] for line in (ROOT / "finegrain/assets/detox_prompts.jsonl").read_text().splitlines()[: args.prompts]]
    ids, mask = PromptRenderer(tok).encode(prompts)
    settings = generation.GenerationSettings(samples_per_prompt=args.samples, max_new_tokens=args.new_tokens, top_p=args.top_p)
    generator = generation.HFGenerator(model, tok)
    shared = generation.shared_prompt_cache

    def ours(share: bool = True, logprobs: bool = False):
        generation.shared_prompt_cache = shared if share else (lambda *a, **k: {})
        try:
            return generator.sample(ids, mask, dataclasses.replace(settings, logprobs=logprobs)).response_ids
        finally:
            generation.shared_prompt_cache = shared

    @torch.no_grad()
    def theirs() -> torch.Tensor:
        g = args.samples
        out = model.generate(input_ids=ids.repeat_interleave(g, 0), attention_mask=mask.repeat_interleave(g, 0).long(), do_sample=True,
                             temperature=1.0, top_k=0, top_p=args.top_p, max_new_tokens=args.new_tokens,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        return out[:, ids.shape[1]:]

    fns = {"transformers": theirs, "finegrain": ours, "finegrain-no-sharing": lambda: ours(share=False),
           "finegrain-logprobs": lambda: ours(logprobs=True)}
    arms = list(args.arms)
    cpu: dict[str, list[float]] = {a: [] for a in arms}
    wall: dict[str, list[float]] = {a: [] for a in arms}
    for r in range(args.rounds + 1):  # round 0: warm-up
        for name in arms[r % len(arms):] + arms[: r % len(arms)]:
            torch.manual_seed(1000 + r)
            c0, t0 = time.process_time(), time.perf_counter()
            fns[name]()
            if r:
                cpu[name].append(time.process_time() - c0)
                wall[name].append(time.perf_counter() - t0)
    med = {a: statistics.median(v) for a, v in cpu.items()}
    base = med.get("transformers")
    print(json.dumps({"cpu_seconds_per_rollout": med, "cpu_ranges": {a: [min(v), max(v)] for a, v in cpu.items()},
                      "wall_seconds_per_rollout": {a: statistics.median(v) for a, v in wall.items()},
                      "ratio_to_transformers": {a: m / base for a, m in med.items()} if base else None,
                      "settings": vars(args)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
