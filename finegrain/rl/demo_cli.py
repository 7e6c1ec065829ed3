"""`finegrain demo detox`: the holistic-vs-fine-grained detoxification demo on the embedded models."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", choices=["detox"], help="the demo to run (detox: holistic vs fine-grained PPO detoxification)")
    parser.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    parser.add_argument("--steps", type=int, default=None, help="PPO steps of each run (default: 60)")
    parser.add_argument("--seed", type=int, default=0, help="seed of both runs and of the evaluation (default: 0)")
    parser.add_argument("--prompts", default=None,
                        help="prompt file, e.g. RealToxicityPrompts .jsonl (default: the prompt set finegrain ships)")
    parser.add_argument("--heldout", type=int, default=100, help="with --prompts: prompts held out for evaluation (default: 100)")
    parser.add_argument("--eval-prompts", type=int, default=None, help="evaluate on only the first N held-out prompts")
    parser.add_argument("--eval-samples", type=int, default=4, help="samples per held-out prompt (default: 4)")
    parser.add_argument("--policy", default="smollm2-135m", help="initial policy: embedded name, HF folder or hub id")
    parser.add_argument("--only", choices=["holistic", "finegrained"], default=None, help="train only this run")
    parser.add_argument("--fresh", action="store_true", help="delete the output folder first (default: finish an interrupted demo)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="training settings for both runs, e.g. ppo.lr=3e-5 sampling.max_new_tokens=48")
    parser.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from finegrain.rl.demo import DemoConfig, run_demo

    kwargs = dict(out=args.out, seed=args.seed, prompts=args.prompts, heldout=args.heldout, eval_prompts=args.eval_prompts,
                  eval_samples=args.eval_samples, policy=args.policy, overrides=list(args.overrides))
    if args.steps is not None:
        kwargs["steps"] = args.steps
    if args.only:
        kwargs["modes"] = [args.only]
    cfg = DemoConfig(**kwargs)
    path = run_demo(cfg, fresh=args.fresh, argv=sys.argv[3:] if sys.argv[1:3] == ["demo", "detox"] else None)
    print(path)
    return 0
