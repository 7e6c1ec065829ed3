"""The no-grad passes of a PPO rollout (the reference's log-probs, the policy's log-probs and its
shared value head's values: `finegrain.rl.rollout.forward`) with and without one prompt forward per
prompt for its G samples (`share_prompts`), on the embedded policy, one process, the arms alternating
round by round on the same rollout.

    .venv/bin/python bench/bench_shared_prompt_forward.py [--shape qa|detox] [--rounds 5] [--threads 1] [--update]

`--update` times the PPO update's pass instead: forward and backward of the policy and its value head
over the rollout in minibatches of 8 rows drawn by a random permutation (the QA configs' one epoch of
two minibatches; the same permutation for both arms in a round), where a minibatch shares only the
prompts that repeat inside it.

Shapes: `qa` is the QA demo's rollout (configs/qa/ppo_*.yaml: 4 questions x 4 answers, prompts of
questions and passages rendered with the chat template within 128 tokens, 48 response tokens); its
questions come from ../shared/data/qa_feedback/qa.json. `detox` is the detox demo's (8 shipped
openings x 4 continuations of 32 tokens). The responses are random tokens of full length: the time
of a pass depends on the shapes, not on the words. Prints the median CPU seconds of this process per
rollout for each arm (after a warm-up round), their ratio, and the largest difference between the
arms' log-probs and values (float rounding).
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
SHARED = ROOT.parent / "shared"


def prompts_of(shape: str, tok) -> tuple["object", "object", int, int]:
    """(ids, mask, samples per prompt, response tokens) of the shape's prompts."""
    from finegrain.kernel.prompts import PromptRenderer

    if shape == "qa":
        from finegrain.experiments.qa.task import read_qa

        examples = read_qa(SHARED / "data" / "qa_feedback" / "qa.json")[:4]
        renderer = PromptRenderer(tok, "question: {question} context: {passages}", max_tokens=128, chat_template=True)
        return (*renderer.encode([renderer.render(e).text for e in examples]), 4, 48)
    lines = (ROOT / "finegrain/assets/detox_prompts.jsonl").read_text().splitlines()[:8]
    return (*PromptRenderer(tok).encode([json.loads(line)["prompt"] for line in lines]), 4, 32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=("qa", "detox"), default="qa")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--update", action="store_true", help="time the update's pass (autograd, minibatches of 8)")
    args = parser.parse_args()

    import torch

    from finegrain.kernel.sequences import Sequences
    from finegrain.models import load_policy
    from finegrain.rl.policy import ActorCritic
    from finegrain.rl.rollout import forward

    torch.set_num_threads(args.threads)
    policy, tok = load_policy("smollm2-135m")
    ref, _ = load_policy("smollm2-135m")
    actor = ActorCritic(policy, None).eval()
    torch.nn.init.normal_(actor.value_head.weight, std=0.02)  # values that differ by row, as after training
    ids, mask, g, T = prompts_of(args.shape, tok)
    torch.manual_seed(0)
    samples = Sequences(ids.repeat_interleave(g, 0), mask.repeat_interleave(g, 0).bool(),
                        torch.randint(0, len(tok), (ids.shape[0] * g, T)), torch.ones(ids.shape[0] * g, T, dtype=torch.bool))
    arms = {"one pass": False, "shared prompts": True}
    cpu: dict[str, list[float]] = {a: [] for a in arms}
    outs = {}
    def update(share: bool, perm: torch.Tensor) -> list[torch.Tensor]:
        """Forward and backward over minibatches of 8 rows; returns the gradients (of the last minibatch)."""
        from finegrain.kernel.logprobs import token_logprobs

        for idx in perm.split(8):
            actor.zero_grad()
            batch = samples.select(idx)
            out = actor(batch.input_ids, batch.attention_mask, T, share_prompts=share)
            (token_logprobs(out.logits, batch.response_ids).sum() + out.values.pow(2).sum()).backward()
        return [p.grad.clone() for p in actor.parameters() if p.grad is not None]

    for r in range(args.rounds + 1):  # round 0: warm-up
        perm = torch.randperm(len(samples))
        for name in (list(arms) if r % 2 else list(arms)[::-1]):
            c0 = time.process_time()
            if args.update:
                outs[name] = update(arms[name], perm)
            else:
                with torch.no_grad():
                    outs[name] = forward(actor, ref, samples, batch_size=32, share_prompts=arms[name])
            if r:
                cpu[name].append(time.process_time() - c0)
    med = {a: statistics.median(v) for a, v in cpu.items()}
    a, b = outs["one pass"], outs["shared prompts"]
    if args.update:
        difference = {"gradients, relative to each one's largest entry": max(float((x - y).abs().max() / x.abs().max().clamp(min=1e-12)) for x, y in zip(a, b))}
    else:
        difference = {"logprobs": float((a.logprobs - b.logprobs).abs().max()), "ref_logprobs": float((a.ref_logprobs - b.ref_logprobs).abs().max()),
                      "values": float((a.values - b.values).abs().max())}
    print(json.dumps({
        "shape": {"prompts": ids.shape[0], "samples_per_prompt": g, "prompt_tokens": ids.shape[1], "response_tokens": T},
        "cpu_seconds_per_rollout": med, "cpu_ranges": {k: [min(v), max(v)] for k, v in cpu.items()},
        "ratio_shared_to_one_pass": med["shared prompts"] / med["one pass"],
        "max_abs_difference": difference, "settings": vars(args)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
