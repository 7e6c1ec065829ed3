"""`finegrain demo detox`: the holistic-vs-fine-grained detoxification demo on the embedded models."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # one positional for the task and the settings that follow it: argparse cannot take more
    # positionals after options, so `demo detox --steps 5 ppo.lr=1e-5` needs `--set ppo.lr=1e-5`
    parser.add_argument("task", nargs="+", metavar="detox|qa [key.sub=value ...]",
                        help="the demo to run (detox: holistic vs fine-grained PPO detoxification; qa: the long-form QA experiment, "
                             "every stage of configs/qa/, docs/qa.md), then training settings, e.g. ppo.lr=3e-5 "
                             "(qa: GROUP.key=value with GROUP sft, rm, ppo or pref, e.g. ppo.run.steps=4 rm.epochs=1)")
    parser.add_argument("--out", default=None, help="output folder (default: runs/demo; qa: runs/demo-qa)")
    parser.add_argument("--data", default=None, help="qa: QA file (default: ../shared/data/qa_feedback/feedback.json)")
    parser.add_argument("--stage", action="append", default=[], help="qa: run only this stage (repeatable), e.g. --stage split")
    parser.add_argument("--strict", action="store_true", help="qa: refuse a record without passages or gold answer (default: leave it out, listed)")
    parser.add_argument("--steps", type=int, default=None, help="PPO steps of each run (default: 30)")
    parser.add_argument("--answer-tokens", type=int, default=None,
                        help="qa: answer length in tokens at every stage: the SFT, DPO and SimPO targets, the PPO samples and the "
                             "evaluation (default: the configs', 64 for targets and 48 for samples); gold answers run to a median of 93")
    parser.add_argument("--seed", "--seeds", dest="seeds", type=int, nargs="+", default=[0],
                        help="seed(s) of both runs and of the evaluation (default: 0); with several, each seed trains both "
                             "runs in OUT/seed-S and the table shows mean ± std over seeds")
    parser.add_argument("--prompts", default=None,
                        help="prompt file, e.g. RealToxicityPrompts .jsonl (default: the prompt set finegrain ships)")
    parser.add_argument("--heldout", type=int, default=None, help="with --prompts: prompts held out for evaluation (default: 100; qa: held-out questions, 60)")
    parser.add_argument("--eval-prompts", type=int, default=None, help="evaluate on only the first N held-out prompts")
    parser.add_argument("--eval-samples", type=int, default=4, help="samples per held-out prompt (default: 4)")
    parser.add_argument("--policy", default="smollm2-135m", help="initial policy: embedded name, HF folder or hub id")
    parser.add_argument("--only", choices=["holistic", "finegrained"], default=None, help="train only this run (two processes, one --only each, can fill one --out side by side)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.SUB=VALUE", dest="settings",
                        help="a training setting for both runs (repeatable), e.g. --set ppo.lr=3e-5")
    parser.add_argument("--judge", default="judge", help="independent toxicity judge for the table: judge (shipped), a folder from `finegrain rm judge`, or none")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's; 1 is faster on a crowded machine)")
    parser.add_argument("--workers", type=int, default=None,
                        help="stages run at once, each in its own process once its inputs exist (detox: the initial evaluation and both "
                             "runs; qa: e.g. the four RMs, both PPO arms); --threads is then per worker (default: the cores shared among them). "
                             "Default: detox 1 (one process); qa 2 where the machine has 2 cores and 16 GiB, else 1")
    parser.add_argument("--fresh", action="store_true", help="delete the output folder first (default: finish an interrupted demo)")
    parser.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from finegrain.config import ConfigError
    from finegrain.experiments.detox.demo import DemoConfig, run_demo

    task, *overrides = args.task
    overrides += args.settings
    if task == "qa":
        from finegrain.experiments.qa.demo import demo_command

        return demo_command(args, overrides)
    if task != "detox":
        raise ConfigError(f"demo: {task!r} is not a demo; choose detox or qa")
    if args.data or args.stage or args.strict or args.answer_tokens is not None:
        raise ConfigError("demo detox: --data, --stage, --strict and --answer-tokens are options of `finegrain demo qa`")
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"demo detox: {bad[0]!r} is not a key.sub=value setting")
    kwargs = dict(out=args.out or "runs/demo", seeds=args.seeds, prompts=args.prompts, heldout=100 if args.heldout is None else args.heldout, eval_prompts=args.eval_prompts,
                  eval_samples=args.eval_samples, policy=args.policy, judge=args.judge, threads=args.threads, overrides=overrides)
    if args.steps is not None:
        kwargs["steps"] = args.steps
    if args.only:
        kwargs["modes"] = [args.only]
    from finegrain.experiments.parallel import worker_settings

    kwargs.update(worker_settings(args.workers, args.threads))
    cfg = DemoConfig(**kwargs)
    path = run_demo(cfg, fresh=args.fresh, argv=sys.argv[3:] if sys.argv[1:3] == ["demo", "detox"] else None)
    print(path)
    return 0
