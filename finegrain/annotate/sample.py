"""`finegrain sample`: K responses per prompt from a policy, written as finegrain JSONL to annotate.

Prompts come from a finegrain .jsonl, a QA-Feedback .json (passages kept; the prompt is built from
the question and the passages, as the paper's policy saw it), RealToxicityPrompts .jsonl, or a plain
text file with one prompt per line.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", required=True, help="prompts: .txt (one per line), finegrain/RTP .jsonl or QA-Feedback .json")
    parser.add_argument("--k", type=int, default=4, help="responses per prompt (default 4, as in QA-Feedback)")
    parser.add_argument("--out", required=True, help="output finegrain .jsonl")
    parser.add_argument("--policy", default="smollm2-135m", help="embedded name, local path or HF id (default: smollm2-135m)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generate() call")
    parser.add_argument("--limit", type=int, help="use only the first N prompts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-chat-template", action="store_true", help="feed the raw prompt, not the tokenizer's chat template")
    parser.set_defaults(func=_sample)


def _sample(args: argparse.Namespace) -> int:
    from finegrain.annotate.sampling import SampleConfig, read_prompts, sample_file

    cfg = SampleConfig(
        k=args.k,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        batch_size=args.batch_size,
        seed=args.seed,
        chat_template=not args.no_chat_template,
    )
    prompts = read_prompts(args.prompts, limit=args.limit)
    n = sample_file(prompts, args.out, args.policy, cfg)
    print(f"wrote {n} prompts x {args.k} responses to {args.out}")
    return 0
